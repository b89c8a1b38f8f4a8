"""What the throughput benchmarks (`*_throughput.py`) share: their command line, the timing with
CUDA synchronisation, synthetic offline data, the markdown table and the loop that fills it.

Each script keeps its plain single-seed baseline and how it builds seemrl's stacked trainer, and
hands both to `compare`, which prints for every critic normalisation one row for the baseline
(one seed, in the first matmul precision) and one row per (eager / CUDA graph on a GPU) x matmul
precision x number of seeds for the stacked trainer: steps/s per seed, seed-steps/s summed over
the seeds, the speed-up over the baseline and the peak GPU memory.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from seemrl.training.devices import matmul_precision
from seemrl.training.draws import OfflineData

PRECISIONS = ("tf32", "ieee")
NORMS = ("none", "layernorm")


# ------------------------------------------------------------------ command line
def parser(doc: str, *, precisions: Sequence[str] | None = PRECISIONS) -> argparse.ArgumentParser:
    """The options every throughput script takes (without `--precision` when `precisions` is
    None: the script's rows have no matmul column); a script adds its own after them."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small sizes on CPU (smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--iters", type=int, default=None)
    if precisions is not None:
        p.add_argument("--precision", nargs="+", default=list(precisions), choices=list(PRECISIONS),
                       help="CUDA float32 matmul precisions of the seemrl rows (the plain baseline runs "
                            "in the first one)")
    p.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny)")
    return p


def setup(args: argparse.Namespace, *, iters: int, tiny_iters: int) -> tuple[torch.device, list[int], int]:
    """The device (a GPU if there is one, the CPU with --tiny: tiny ops, where intra-op threads
    only add synchronisation, so one thread), the numbers of seeds and the timed steps."""
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    seed_counts = args.seeds or ([1, 2] if args.tiny else [1, 10, 40])
    return device, seed_counts, args.iters or (tiny_iters if args.tiny else iters)


# ------------------------------------------------------------------ baselines and data
def mlp(i: int, o: int, hidden: Sequence[int], ln: bool = False,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The plain baselines' MLP: Linear (+ LayerNorm) + activation per hidden layer."""
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if ln else []) + [activation()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


def offline_data(n: int, obs_dim: int, act_dim: int, device, *, action_bound: float = 1.0,
                 reward: Callable | None = None) -> OfflineData:
    """n synthetic transitions (normal states, uniform actions in +-action_bound, normal rewards or
    reward(rng, n), 1% terminals), states not normalised."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    action = rng.uniform(-action_bound, action_bound, (n, act_dim))
    r = rng.normal(size=n) if reward is None else reward(rng, n)
    return OfflineData.from_arrays(obs, action, r, obs + 0.01, rng.random(n) < 0.01, np.zeros(obs_dim),
                                   np.ones(obs_dim), device)


@torch.no_grad()
def polyak(pairs, tau: float) -> None:
    """The plain baselines' target update: each (network, target) pair's target parameters lerp towards it."""
    for net, tgt in pairs:
        for p, tp in zip(net.parameters(), tgt.parameters()):
            tp.lerp_(p, tau)


def offline_stacked(trainer_cls: type, build_nets: Callable, data: OfflineData, device, obs_dim: int,
                    act_dim: int) -> Callable:
    """`compare`'s stacked(cfg, graph, precision, seeds) for an offline algorithm: its trainer on
    `data`, with the config's cuda_graph and matmul_precision set."""
    def stacked(cfg, graph: bool, precision: str, seeds: list[int]):
        run_cfg = type(cfg)(**{**cfg.__dict__, "cuda_graph": graph, "matmul_precision": precision})
        return trainer_cls(run_cfg, seeds, data, build_nets(run_cfg, seeds, obs_dim, act_dim), device)

    return stacked


def peer_trainer(algo: str, hidden, norm: str, seeds: int, device, data: OfflineData, obs_dim: int, act_dim: int, *,
                 compiled: bool = False, graph: bool = True, precision: str = "tf32"):
    """seemrl's stacked TD3+BC ("td3bc"), IQL ("iql") or Diffusion-QL ("diffql", as
    `diffql_throughput.py` runs it: the authors' AntMaze setting, gradient clip 7) trainer as the
    JAX peer and the step profile measure it: the algorithm's defaults, the critic's norm, S =
    `seeds` seeds."""
    from seemrl.algos import diffql, iql, td3

    if algo == "diffql":
        cfg = diffql.DiffQLConfig(hidden=tuple(hidden) + (hidden[-1],) * (3 - len(hidden)), grad_clip=7.0,
                                  critic={"norm": norm}, compile_update=compiled)
        make = offline_stacked(diffql.DiffQLTrainer, diffql.build_nets, data, device, obs_dim, act_dim)
    elif algo == "td3bc":
        cfg = td3.TD3Config(hidden=hidden, tau=0.005, bc_weight=1.0, critic={"norm": norm}, compile_update=compiled)
        make = offline_stacked(td3.TD3Trainer, td3.build_nets, data, device, obs_dim, act_dim)
    else:
        cfg = iql.IQLConfig(hidden=hidden, critic={"norm": norm}, compile_update=compiled)
        make = offline_stacked(iql.IQLTrainer, iql.build_nets, data, device, obs_dim, act_dim)
    return make(cfg, graph, precision, list(range(seeds)))


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(step: Callable, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return iters / (time.perf_counter() - start)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    """Peak GPU memory in MiB since the last reset ("-" on the CPU)."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"


# ------------------------------------------------------------------ the table
def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_title(device: torch.device, what: str, *, matmul: bool = True) -> None:
    """The device line (then `what`: the algorithm and sizes) and the table's header."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {what}")
    columns = ["critic", "implementation", *(["matmul"] if matmul else []), "seeds", "steps/s per seed",
               "seed-steps/s", "speed-up", "peak GPU MiB"]
    print(row(*columns))
    print("|" + "---|" * len(columns))


def compare(device: torch.device, norms: Sequence[str], precisions: Sequence[str] | None, seed_counts: Sequence[int],
            *, config: Callable, plain: Callable, stacked: Callable, iters: int, warmup: int, graph_factor: int = 4,
            fmt: str = ".0f", plain_label: str = "plain PyTorch", plain_memory: bool = False,
            check: Callable | None = None) -> list[dict]:
    """The table's rows. Per critic norm: config(norm) -> cfg; plain(cfg) -> the baseline's step,
    timed in the first precision (its peak memory too with `plain_memory`); then for every mode
    (eager, and on a GPU the CUDA graph, which times `graph_factor` times more steps), precision
    and number of seeds S, stacked(cfg, graph, precision, seeds) -> a trainer whose `step()` is
    timed; check(trainer) -> a note for its row (or raises). Precisions None: no matmul column
    (the rows run in the config's own precision). Returns the stacked rows' numbers."""
    matmul = precisions is not None
    if not matmul:
        precisions = [None]
    elif device.type != "cuda":
        precisions = ["ieee"]  # the CPU is always full fp32
    in_precision = lambda p: contextlib.nullcontext() if p is None else matmul_precision(p)  # noqa: E731
    column = lambda p: [p] if matmul else []  # noqa: E731
    modes = [("seemrl stacked", False)] + ([("seemrl stacked + CUDA graph", True)] if device.type == "cuda" else [])
    rows = []
    for norm in norms:
        cfg = config(norm)
        if plain_memory:
            reset_peak_memory(device)
        step = plain(cfg)
        with in_precision(precisions[0]):
            base = steps_per_second(step, device, warmup=warmup, iters=iters)
        mem = peak_memory(device) if plain_memory else "-"
        del step  # and with it the baseline: its memory is not part of the stacked rows
        print(row(norm, plain_label, *column(precisions[0]), 1, f"{base:{fmt}}", f"{base:{fmt}}", "1.0x", mem),
              flush=True)
        for (label, graph), precision, s in itertools.product(modes, precisions, seed_counts):
            reset_peak_memory(device)
            trainer = stacked(cfg, graph, precision, list(range(s)))
            # a graphed step captures its graphs in the first call (part of the warm-up); its timed
            # steps include drawing the windows of pre-drawn inputs
            rate = steps_per_second(trainer.step, device, warmup=warmup, iters=iters * (graph_factor if graph else 1))
            mem = peak_memory(device)
            note = check(trainer) if check is not None else ""
            print(row(norm, label, *column(precision), s, f"{rate:{fmt}}", f"{rate * s:{fmt}}",
                      f"{rate * s / base:.1f}x", mem) + note, flush=True)
            rows.append({"norm": norm, "graph": graph, "precision": precision, "seeds": s, "seed_steps": rate * s,
                         "plain": base})
            del trainer
    return rows
