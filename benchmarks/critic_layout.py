"""Would storing the twin critics as one stack, or padding the critic's input width, pay? (issue 17)

Before the twin critics of every algorithm move into one stack of 2S members (one batched matmul
per layer instead of two, forward and backward: a change to checkpoints, SEEM, optimiser states
and every algorithm), this times the critic half of a TD3-style update both ways, side by side
in one run, with seemrl's own `StackedMLP` and fused Adam, each step captured as a CUDA graph as
training runs it:

- `two stacks`: Q1 and Q2 as two stacks of S members (today);
- `one stack`: one stack of 2S members, the input repeated for the second half;

each with the critic's input as HalfCheetah's 17 + 6 = 23 columns (input width 23, input row 23);
as those 23 columns in rows of 24 floats (a strided view, the weights unchanged: 23, 24); and
padded with a zero column, with a zero weight row (24, 24). The profile of the compiled TD3+BC step found 9 matmuls a step on the CUDA cores in full
FP32 although TF32 was on; an input width that is not a multiple of 4 is the suspected cause.

The step: targets r + 0.99 * min(Q1, Q2)(x') without gradient, the critic loss of both on x,
backward, Adam. Printed: microseconds per step, each variant's speed against `two stacks, 23`, and
how far its weights are from that variant's after the same steps (0 on the CPU: the same
computation; TF32 rounding on CUDA).

    python benchmarks/critic_layout.py                  # on CUDA: S = 1, 10, 40, LN off and on
    python benchmarks/critic_layout.py --tiny           # the CPU plumbing run (no graph)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seemrl.training.nets import StackedMLP, enable_fused_pointwise, seed_generators  # noqa: E402
from seemrl.training.trainer import make_optimizer  # noqa: E402

# (layout, the first layer's input width, the row length of the input's buffer)
VARIANTS = tuple((layout, width, row) for layout in ("two stacks", "one stack") for width, row in ((23, 23), (23, 24), (24, 24)))


def make_step(layout: str, width: int, row: int, seeds: int, batch: int, hidden, norm: str, device):
    """A closure running one critic update of `layout` on fixed random inputs (TD3's critic half)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    s, a = torch.randn(seeds, batch, 17, generator=g), torch.rand(seeds, batch, 6, generator=g) * 2 - 1
    s2, a2 = torch.randn(seeds, batch, 17, generator=g), torch.rand(seeds, batch, 6, generator=g) * 2 - 1
    r = torch.randn(seeds, batch, 1, generator=g)
    s, a, s2, a2, r = (t.to(device) for t in (s, a, s2, a2, r))
    pad = torch.zeros(seeds, batch, row - 23, device=device)
    kw = dict(hidden=hidden, norm=norm)
    gens = [seed_generators(range(seeds), k + 1) for k in range(2)]  # Q1's and Q2's: the same nets both ways
    nets = ([StackedMLP(gens[0] + gens[1], 23, 1, **kw)] if layout == "one stack"
            else [StackedMLP(gens[k], 23, 1, **kw) for k in range(2)])
    if width > 23:  # the same weights, with zero rows for the padded input: the same function
        for n in nets:
            w = n.weights[0].detach()
            n.weights[0] = torch.nn.Parameter(torch.cat([w, w.new_zeros(w.shape[0], width - 23, w.shape[2])], 1))
            n.dims[0] = width
    nets = [n.to(device) for n in nets]
    enable_fused_pointwise(nets, device)  # LayerNorm as training runs it on CUDA
    opt = make_optimizer("adam", [p for n in nets for p in n.parameters()], 3e-4, device)

    def inputs(obs, act):
        x = torch.cat([obs, act, pad], -1)
        if layout == "one stack":
            x = x.repeat(2, 1, 1)
        return x[..., :width]  # rows of `row` floats, `width` of them used

    def step():
        with torch.no_grad():
            x2 = inputs(s2, a2)
            if layout == "one stack":
                q = nets[0](x2)
                q_next = torch.minimum(q[:seeds], q[seeds:])
            else:
                q_next = torch.minimum(nets[0](x2), nets[1](x2))
            target = r + 0.99 * q_next
        x = inputs(s, a)
        if layout == "one stack":
            loss = ((nets[0](x) - target.repeat(2, 1, 1)) ** 2).mean((1, 2))
            loss = loss[:seeds] + loss[seeds:]
        else:
            loss = ((nets[0](x) - target) ** 2).mean((1, 2)) + ((nets[1](x) - target) ** 2).mean((1, 2))
        opt.zero_grad(set_to_none=False)
        loss.sum().backward()
        opt.step()

    def weights() -> list[torch.Tensor]:
        """Q1's then Q2's first-layer weights (without pad rows) and output weights, [S, ...] each."""
        if layout == "one stack":
            w = [nets[0].weights[0][:, :23], nets[0].weights[-1]]
            return [t[k * seeds:(k + 1) * seeds] for k in range(2) for t in w]
        return [t for n in nets for t in (n.weights[0][:, :23], n.weights[-1])]
    step.weights = weights
    return step


def time_step(step, device, iters: int) -> float:
    """Microseconds per step: on CUDA the step captured as a graph and replayed."""
    if device.type != "cuda":
        step()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - t0) / iters * 1e6
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 10, 40])
    p.add_argument("--norms", nargs="+", default=["none", "layernorm"], choices=["none", "layernorm"])
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--tiny", action="store_true", help="CPU, S = 2, hidden 16-16, batch 8, 3 iterations")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    seeds, hidden, batch, iters = (([2], (16, 16), 8, 3) if args.tiny
                                   else (args.seeds, (256, 256), 256, args.iters))

    rows = []
    print(f"critic update, {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, hidden {hidden}, batch {batch}, {iters} steps each")
    print("| critic | seeds | layout | input width | input row | us per step | speed vs two stacks, 23 | max weight difference from it |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for norm in args.norms:
        for n_seeds in seeds:
            base = ref = None
            for layout, width, row in VARIANTS:
                step = make_step(layout, width, row, n_seeds, batch, hidden, norm, device)
                us = time_step(step, device, iters)
                w = step.weights()
                base, ref = base or us, ref or w
                diff = max(float((a - b).abs().max().detach()) for a, b in zip(w, ref))
                rows.append({"norm": norm, "seeds": n_seeds, "layout": layout, "width": width, "row": row, "us": us,
                             "speedup": base / us, "max_weight_diff": diff})
                print(f"| {norm} | {n_seeds} | {layout} | {width} | {row} | {us:.1f} | {base / us:.2f}x | {diff:.1e} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
