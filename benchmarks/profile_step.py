"""Where one update step's time goes (issue 17: profile first, then decide what to fuse).

For seemrl's stacked TD3+BC and IQL at the sizes of `jax_peer.py` (1M transitions, hidden
256-256, batch 256), and Diffusion-QL at those of `diffql_throughput.py` (AntMaze's sizes, 3x256
nets, 15-step DPM-Solver, max-Q backup over 10 samples): kernels per step, their summed GPU time
per step and the kernels that take it, by kind (matmul, Triton from torch.compile, elementwise,
reduction, optimiser, other), for the eager step and the step through torch.compile
(`compile_update`). The profiler records the
steps without a CUDA graph (a graph replays the kernels its capture recorded); each
configuration's rate with the graph, as training runs it, is timed beside, so the two columns
say whether the graphed step is bound by its kernels' GPU time or by something else.

On a CPU (`--tiny`, the test's plumbing run) there are no kernels: it counts the step's outermost
ATen ops, backward included (roughly what the eager step launches on a GPU), and their CPU time;
a compiled step's own C++ kernels are not ATen ops and are not counted there.

Modes: `eager`, `compiled`; `+critics-apart` keeps the twin critics as two stacks, as before
`join_critics` held them as one stack of 2S members (so the two are set side by side in one run);
`compiled+foreach-adam` lets Inductor write the Adam step (a trial, not a seemrl setting).

    python benchmarks/profile_step.py                       # TD3+BC and IQL, S = 1, 10, 40, LN off/on
    python benchmarks/profile_step.py --algos td3bc --seeds 10 --norms none --top 25
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DIMS = {"td3bc": (17, 6), "iql": (17, 6), "diffql": (29, 8)}  # (state, action): HalfCheetah's; AntMaze's
KINDS = ("matmul", "triton", "elementwise", "reduction", "optimiser", "other")
MODES = ("eager", "compiled", "compiled+foreach-adam", "eager+critics-apart", "compiled+critics-apart")


def foreach_adam(trainer) -> None:
    """Switch the trainer's Adam optimisers from the fused kernel to the foreach path (before its
    first step, so before any capture), keeping them capturable: under torch.compile Inductor then
    generates the Adam step's kernels instead of calling the fused one."""
    for o in trainer.optimizers.values():
        for group in o.param_groups:
            if "fused" in group and group["fused"]:
                group["fused"], group["foreach"] = False, True


@contextlib.contextmanager
def critics_apart():
    """Trainers built inside keep their twin critics as two stacks (as before `join_critics`), so a
    profile can set the joined critics' kernels beside the separate ones'."""
    from seemrl.algos.base import CriticTrainer

    join = CriticTrainer.join_critics
    CriticTrainer.join_critics = lambda self: None
    try:
        yield
    finally:
        CriticTrainer.join_critics = join


def make(algo, hidden, norm, seeds, device, data, mode: str, graph: bool):
    from common import peer_trainer

    with critics_apart() if mode.endswith("+critics-apart") else contextlib.nullcontext():
        trainer = peer_trainer(algo, hidden, norm, seeds, device, data[algo], *DIMS[algo],
                               compiled=mode.startswith("compiled"), graph=graph)
    if mode == "compiled+foreach-adam":
        foreach_adam(trainer)
    return trainer


def kernel_kind(name: str) -> str:
    """A kernel's kind from its name (cuBLAS/CUTLASS matmuls, Inductor's Triton kernels, ATen's
    elementwise and reduction templates, the optimisers' multi-tensor kernels)."""
    n = name.lower()
    if "triton" in n:
        return "triton"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "cublas", "matmul", "aten::mm", "aten::bmm",
                            "aten::addmm", "aten::baddbmm", "aten::linear")):
        return "matmul"
    if any(k in n for k in ("multi_tensor", "fused_adam", "foreach", "_fused_sgd", "adam")):
        return "optimiser"
    if any(k in n for k in ("reduce", "norm", "softmax", "sum", "mean", "max", "min", "logsumexp")):
        return "reduction"
    if any(k in n for k in ("elementwise", "vectorized", "unrolled", "aten::")):
        return "elementwise"
    return "other"


def device_kernels(events, device_type) -> list:
    """The kernels and copies among a profile's device events. A `record_function` range (such as
    `Optimizer.step#Adam.step`) is drawn on the device's timeline too, spanning the kernels it
    launched: the profiler marks it a user annotation, and it has a host event of the same name.
    A Triton kernel from torch.compile has a host event of its name too (Inductor's launcher
    records one), but it is a kernel: a name match alone must not drop it (the first Diffusion-QL
    profile, 2026-12-07, lost every Triton kernel that way)."""
    host_names = {e.name for e in events if e.device_type != device_type}

    def is_range(e) -> bool:
        if getattr(e, "is_user_annotation", False):
            return True
        return e.name in host_names and not e.name.startswith("triton")

    return [e for e in events if e.device_type == device_type and not is_range(e)]


def _inside_aten(event) -> bool:
    """Whether an ATen op ran inside another one (then its parent is the op counted)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def profile_steps(trainer, device, steps: int, warmup: int) -> dict:
    """Kernels (CUDA) or top-level ATen ops (CPU) of `steps` steps after `warmup`, per step."""
    import torch
    from common import sync
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        trainer.step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step()
        sync(device)
    if device.type == "cuda":
        events = device_kernels(prof.events(), torch.autograd.DeviceType.CUDA)
    else:
        events = [e for e in prof.events() if e.name.startswith("aten::") and not _inside_aten(e)]
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        entry = by_name[e.name]
        entry[0] += 1
        entry[1] += e.time_range.elapsed_us()
    kinds = {k: [0, 0.0] for k in KINDS}
    for name, (count, us) in by_name.items():
        kinds[kernel_kind(name)][0] += count
        kinds[kernel_kind(name)][1] += us
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    return {"per_step": len(events) / steps, "us_per_step": sum(v[1] for v in by_name.values()) / steps,
            "kinds": {k: {"per_step": c / steps, "us_per_step": us / steps} for k, (c, us) in kinds.items()},
            "top": [{"name": name, "kind": kernel_kind(name), "per_step": c / steps, "us_per_step": us / steps}
                    for name, (c, us) in top]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU, hidden 32-32, S = 1, 2, 10k transitions (plumbing)")
    p.add_argument("--algos", nargs="+", choices=tuple(DIMS), default=["td3bc", "iql"])
    p.add_argument("--seeds", nargs="+", type=int, help="seed counts S (default 1 10 40)")
    p.add_argument("--norms", nargs="+", choices=("none", "layernorm"), default=["none", "layernorm"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=["eager", "compiled"],
                   help="+critics-apart: the twin critics as two stacks, as before they were joined (one stack of 2S); "
                        "compiled+foreach-adam: the compiled step with Adam's foreach path in place of the fused "
                        "kernel, so that Inductor writes the Adam step too (a trial, not a seemrl setting)")
    p.add_argument("--steps", type=int, default=20, help="profiled steps per configuration")
    p.add_argument("--iters", type=int, default=1000, help="timed graphed steps per configuration (CUDA)")
    p.add_argument("--top", type=int, default=12, help="kernels listed per configuration")
    p.add_argument("--json", type=Path, help="also write every number here")
    args = p.parse_args()

    import torch
    from common import offline_data, steps_per_second

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    hidden = (32, 32) if args.tiny else (256, 256)
    seed_counts = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    n = 10_000 if args.tiny else 1_000_000
    data = {algo: offline_data(n, *DIMS[algo], device, action_bound=0.999 if algo == "diffql" else 1.0)
            for algo in args.algos}
    unit = "kernels" if device.type == "cuda" else "outermost ATen ops"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; hidden {hidden}, batch 256; TF32 matmuls on CUDA; "
          f"{args.steps} profiled steps per row ({unit}, no CUDA graph)" +
          (f"; graphed rate over {args.iters} steps" if device.type == "cuda" else ""))
    print()
    head = ["algorithm", "critic", "seeds", "step", f"{unit} per step", "their time per step (us)",
            *[f"{k} (n / us)" for k in KINDS], "graphed step (us, wall)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    results, tops = [], []
    for algo in args.algos:
        for norm in args.norms:
            for seeds in seed_counts:
                for mode in args.modes:
                    trainer = make(algo, hidden, norm, seeds, device, data, mode, graph=False)
                    prof = profile_steps(trainer, device, args.steps, warmup=5)
                    del trainer
                    wall = float("nan")
                    if device.type == "cuda":
                        graphed = make(algo, hidden, norm, seeds, device, data, mode, graph=True)
                        wall = 1e6 / steps_per_second(graphed.step, device, warmup=10, iters=args.iters)
                        del graphed
                    kinds = [f"{v['per_step']:.0f} / {v['us_per_step']:.0f}" for v in prof["kinds"].values()]
                    print(f"| {algo} | {norm} | {seeds} | {mode} | {prof['per_step']:.0f} | "
                          f"{prof['us_per_step']:.0f} | " + " | ".join(kinds) +
                          f" | {'-' if wall != wall else f'{wall:.0f}'} |", flush=True)
                    results.append({"algo": algo, "critic": norm, "seeds": seeds, "mode": mode,
                                    "graphed_us_per_step": wall, **prof})
                    tops.append((f"{algo}, {norm}, S = {seeds}, {mode}", prof["top"][:args.top]))
    for title, top in tops:
        print(f"\n{title}: the {len(top)} {unit} that take the most time\n")
        print("| name | kind | per step | us per step |\n|---|---|---:|---:|")
        for k in top:
            print(f"| `{k['name'][:90]}` | {k['kind']} | {k['per_step']:.1f} | {k['us_per_step']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
