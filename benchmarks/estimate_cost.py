"""What each paper config costs before it runs: training jobs, estimated GPU-hours and disk.

GPU-hours come from the stacked trainers' measured rates (seed-steps/s on one H200, TF32, the
update as a CUDA graph; benchmarks/README.md, "Final figures of this session" and "Table 1 wall
time, re-estimated"), SEEM from its measured 0.049 s per checkpoint at N=2560 (one H100). Rates were
measured with 10 seeds per job: a job of 5 seeds runs fewer seed-steps per second, so its
estimate is a lower bound. Policy evaluation in the environment is not included (AntMaze's is
estimated separately in benchmarks/README.md). Disk is measured, not estimated: one checkpoint of
each cell's networks (its seeds, its dataset's dimensions) is written and its size multiplied by
the checkpoints the run keeps.

    python benchmarks/estimate_cost.py            # every config under config/paper/, a Markdown table
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# seed-steps/s per (trainer, LayerNorm critic) with 10 seeds per job on one H200 (benchmarks/README.md)
RATES = {("td3", False): 17_356, ("td3", True): 15_535, ("iql", False): 10_892, ("iql", True): 10_892,
         ("cql", False): 3_308, ("cql", True): 3_308, ("diffql", False): 2_631, ("diffql", True): 2_413}
SEEM_SECONDS = 0.049  # per checkpoint and seed, N=2560, 256-256 critic, Krylov-Schur eigen-solve (one H100; benchmarks/README.md)
DIMS = {"Hopper": (11, 3), "Walker2d": (17, 6), "HalfCheetah": (17, 6), "AntMaze": (29, 8)}


def merged(name: str) -> dict:
    """A paper config merged over config/config.yaml as Snakemake's --configfile does (recursively)."""
    def update(base, new):
        for k, v in new.items():
            base[k] = update(base.get(k) or {}, v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    return update(copy.deepcopy(config), yaml.safe_load((ROOT / "config/paper" / name).read_text()))


def checkpoint_bytes(trainer: str, cfg, seeds: int, dims: tuple[int, int], cache: dict) -> int:
    """Size of one checkpoint of `seeds` stacked seeds, measured by writing it."""
    from dataclasses import asdict

    from seemrl.algos import trainer_module

    key = (trainer, repr(asdict(cfg)), seeds, dims)
    if key not in cache:
        module = trainer_module(trainer)
        nets = module.build_nets(cfg, list(range(seeds)), *dims, np.zeros(dims[0], np.float32),
                                 np.ones(dims[0], np.float32))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "step.pt"
            module.save_checkpoint(path, nets, cfg, list(range(seeds)), 0, [None] * seeds)
            cache[key] = path.stat().st_size
    return cache[key]


def estimate(name: str, cache: dict) -> dict:
    from seemrl.workflow import Plan

    plan = Plan(merged(name), ROOT)
    train_s = seem_s = disk = 0.0
    for c in plan.cells():
        cfg = plan.resolved[c["algo"], c["norm"]]
        trainer = plan.config["algorithms"][c["algo"]]["trainer"]
        seeds = len(plan.cell_seeds[c["dataset"], c["percent"], c["algo"], c["norm"]])
        ln = (cfg.critic.get("norm") if isinstance(cfg.critic, dict) else getattr(cfg.critic, "norm", None)) == \
            "layernorm"
        train_s += seeds * cfg.steps / RATES[trainer, bool(ln)]
        checkpoints = cfg.steps // cfg.checkpoint_every + 1
        seem_s += checkpoints * seeds * SEEM_SECONDS
        env = plan.registry_entry(c["dataset"])["env_id"]
        dims = next(d for prefix, d in DIMS.items() if env.startswith(prefix))
        disk += checkpoints * checkpoint_bytes(trainer, cfg, seeds, dims, cache)
    online = plan.config.get("online") or {}
    return {"config": name, "training jobs": len(plan.cells()),
            "online jobs": len(online.get("envs") or []) * len(online.get("variants") or {}),
            "training GPU-h": train_s / 3600, "SEEM GPU-h": seem_s / 3600, "checkpoints GB": disk / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="names under config/paper/ (default: all of them)")
    args = parser.parse_args()
    os.chdir(ROOT)  # the registry path in the config is relative to the project
    import torch

    torch.set_num_threads(1)
    names = args.configs or sorted(p.name for p in (ROOT / "config/paper").glob("*.yaml")
                                   if p.name != "paper_results.yaml")
    cache: dict = {}
    rows = [estimate(n, cache) for n in names]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
