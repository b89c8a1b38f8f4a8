"""Measurement: how far a seed trained among others is from the same seed trained alone.

seemrl trains the seeds of a cell stacked in one process. Nothing of one seed reaches another:
with PyTorch's scalar CPU kernels (ATEN_CPU_CAPABILITY=default) a seed among others is bit for bit
the seed alone (tests/test_seed_independence.py). With the vectorised CPU kernels and on CUDA,
the same arithmetic can round differently (a transcendental function takes the vector or scalar
path depending on where a seed sits in the stack; cuBLAS picks kernels by batch size), and
training amplifies rounding. This script measures by how much: for each algorithm it trains
seed 7 alone and seed 7 among seeds [3, 7, 9] for --steps steps at the paper's sizes (256-256
networks, batch 256, Hopper-sized synthetic data), and also seed 7 alone twice (run-to-run
repeatability), then prints the largest absolute and relative difference of the critic's
parameters and of Q on a fixed probe batch.

    python benchmarks/seed_independence.py --steps 10000            # GPU if present
    python benchmarks/seed_independence.py --device cpu --steps 1000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from seemrl.algos import cql, diffql, iql, td3

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by path
from common import offline_data, row  # noqa: E402


OBS, ACT = 11, 3  # Hopper sizes
ALGOS = {
    "td3bc": (td3.TD3Config, td3.TD3Trainer, td3.build_nets, dict(bc_weight=1.0, tau=0.005)),
    "iql": (iql.IQLConfig, iql.IQLTrainer, iql.build_nets, {}),
    "cql": (cql.CQLConfig, cql.CQLTrainer, cql.build_nets, {}),
    "diffql": (diffql.DiffQLConfig, diffql.DiffQLTrainer, diffql.build_nets, {}),
}


def train(algo: str, norm: str, seeds: list[int], steps: int, device) -> torch.nn.Module:
    """Seed 7's first critic after `steps` updates of a run of `seeds`, as a one-seed view."""
    config_cls, trainer_cls, build_nets, extra = ALGOS[algo]
    cfg = config_cls(steps=steps, batch_size=256, hidden=(256, 256), checkpoint_every=steps, log_every=steps,
                     critic={"norm": norm} if norm != "none" else {}, **extra)
    data = offline_data(100_000, OBS, ACT, device)
    trainer = trainer_cls(cfg, seeds, data, build_nets(cfg, seeds, OBS, ACT), device)
    for _ in range(steps):
        trainer.step()
    return trainer.nets.q1, seeds.index(7)


def difference(a, b, probe: torch.Tensor) -> tuple[float, float, float, float]:
    """(max |dparam|, max |dparam| / max |param|, max |dQ|, max |dQ| / max |Q|) of seed 7 in two runs."""
    (net_a, i), (net_b, j) = a, b
    pa = torch.cat([p[i].flatten() for p in net_a.parameters()]).double()
    pb = torch.cat([p[j].flatten() for p in net_b.parameters()]).double()
    with torch.no_grad():
        qa = net_a.eval()(probe.expand(net_a.n_seeds, -1, -1))[i].double()
        qb = net_b.eval()(probe.expand(net_b.n_seeds, -1, -1))[j].double()
    dp, dq = (pa - pb).abs().max().item(), (qa - qb).abs().max().item()
    return dp, dp / pa.abs().max().item(), dq, dq / qa.abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[10_000])
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    p.add_argument("--norms", nargs="+", default=["none", "layernorm"], choices=["none", "layernorm"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({torch.backends.cpu.get_cpu_capability()} kernels, {args.threads} thread(s))"
    print(f"device: {name}; torch {torch.__version__}; seed 7 alone vs among [3, 7, 9] and alone twice; "
          f"256-256 networks, batch 256, float32 matmuls {'tf32' if device.type == 'cuda' else 'ieee'}")
    print(row("algorithm", "critic", "steps", "comparison", "max |d param|", "relative", "max |d Q|", "relative",
              "seconds"))
    print("|" + "---|" * 9)
    probe = torch.randn(1, 512, OBS + ACT, generator=torch.Generator().manual_seed(0)).to(device)
    for algo in args.algos:
        for norm in args.norms:
            for steps in args.steps:
                t0 = time.perf_counter()
                alone = train(algo, norm, [7], steps, device)
                again = train(algo, norm, [7], steps, device)
                among = train(algo, norm, [3, 7, 9], steps, device)
                seconds = time.perf_counter() - t0
                for label, other in (("among [3, 7, 9]", among), ("alone again", again)):
                    cells = difference(alone, other, probe)
                    print(row(algo, norm, steps, label, *(f"{c:.2g}" for c in cells), f"{seconds:.0f}"), flush=True)


if __name__ == "__main__":
    main()
