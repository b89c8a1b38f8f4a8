"""What each paper config costs before it runs: training jobs, estimated GPU-hours and disk.

GPU-hours come from the stacked trainers' measured rates (seed-steps/s on one H200, TF32, the
update as a CUDA graph; benchmarks/README.md, "Final figures of this session" and "Table 1 wall
time, re-estimated"), SEEM from its measured 0.049 s per checkpoint at N=2560 (one H100). Rates were
measured with 10 seeds per job: a job of 5 seeds runs fewer seed-steps per second, so its
estimate is a lower bound. Policy evaluation in the environment is estimated for AntMaze only, worst
case (every episode runs to its cap), from the rates measured on the H200 host with 4 worker
processes per job (benchmarks/README.md, "AntMaze evaluation in worker processes"), and counts the
evaluations the config schedules (`eval_every`, `eval_from`, the last step); it is CPU time beside
the training, partly overlapped with it. Disk is measured, not estimated: one checkpoint of
each cell's networks (its seeds, its dataset's dimensions) is written and its size multiplied by
the checkpoints the run keeps. A job that trains cells together (`train_together`) runs their
members in one stack, at the rate of its stack size (`rate`).

    python benchmarks/estimate_cost.py            # every config under config/paper/, a Markdown table
    python benchmarks/estimate_cost.py xpercent.yaml --together percents   # and with X% cells together
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
# ... and with 40 seeds per job (the same tables; CQL's from the S=40 / S=10 ratio of its earlier
# measurement, 1.49x without LN and 1.29x with it; Diffusion-QL's measured at S=40 in the same session
# as its S=10 rates: benchmarks/README.md, "Diffusion-QL with the compiled backup sampler")
RATES_40 = {("td3", False): 42_069, ("td3", True): 37_535, ("iql", False): 27_154, ("iql", True): 27_154,
            ("cql", False): 4_929, ("cql", True): 4_267, ("diffql", False): 3_532, ("diffql", True): 3_379}
SEEM_SECONDS = 0.049  # per checkpoint and seed, N=2560, 256-256 critic, Krylov-Schur eigen-solve (one H100; benchmarks/README.md)
# AntMaze evaluation (benchmarks/README.md, lent H200 host): 7,822 env steps/s with 4 worker processes;
# Diffusion-QL's policy 5.4 ms per call of 250 states (50 sampled actions each); an MLP policy's calls are
# negligible beside the physics
ANTMAZE_ENV_STEPS_PER_S = 7_822
POLICY_S_PER_CALL = {"diffql": 5.4e-3}
POLICY_STATES_PER_CALL = 250


def evaluation_steps(steps: int, every: int, start: int = 0) -> list[int]:
    """The steps a run evaluates at: every `every` from `start` on, and the last step."""
    if not every:
        return []
    return sorted({s for s in range(every, steps + 1, every) if s >= start} | {steps})


def antmaze_eval_seconds(trainer: str, cfg, seeds: int, max_episode_steps: int) -> float:
    """Worst-case seconds of a run's AntMaze evaluations: each episode to its cap."""
    episodes = seeds * cfg.eval_episodes
    per_eval = episodes * max_episode_steps / ANTMAZE_ENV_STEPS_PER_S + POLICY_S_PER_CALL.get(trainer, 0.0) * \
        max_episode_steps * -(-episodes // POLICY_STATES_PER_CALL)
    return len(evaluation_steps(cfg.steps, cfg.eval_every, getattr(cfg, "eval_from", 0))) * per_eval


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


def rate(trainer: str, ln: bool, members: int) -> float:
    """Seed-steps/s of a job of `members` stacked members: the S=10 rate up to 10 members (a lower
    bound below), the S=40 rate from 40 on, and between them the line through both in log-log."""
    r10, r40 = RATES[trainer, ln], RATES_40[trainer, ln]
    if members <= 10:
        return r10
    if members >= 40:
        return r40
    return r10 * (members / 10) ** (np.log(r40 / r10) / np.log(4))


def estimate(name: str, cache: dict, together: list[str] | None = None) -> dict:
    """One config's row; `together`: as if each grid had `train_together: together` (where its
    algorithms can train cells together)."""
    from seemrl.train import TOGETHER_TRAINERS
    from seemrl.workflow import Plan

    config = merged(name)
    if together:  # each grid split into the algorithms that can share a stack and those that cannot
        grids = config["experiment"] if isinstance(config["experiment"], list) else [config["experiment"]]
        config["experiment"] = []
        for grid in grids:
            can = [a for a in grid["algorithms"] if config["algorithms"][a]["trainer"] in TOGETHER_TRAINERS]
            cannot = [a for a in grid["algorithms"] if a not in can]
            config["experiment"] += [{**grid, "algorithms": can, "train_together": together}] if can else []
            config["experiment"] += [{**grid, "algorithms": cannot}] if cannot else []
    plan = Plan(config, ROOT)
    job_of = {tuple(c.values()): g for g, cells in plan.train_groups().items() for c in cells}
    members = {}
    for c in plan.cells():
        key = tuple(c.values())
        members[job_of.get(key, key)] = members.get(job_of.get(key, key), 0) + \
            len(plan.cell_seeds[c["dataset"], c["percent"], c["algo"], c["norm"]])
    train_s = seem_s = eval_s = disk = 0.0
    for c in plan.cells():
        cfg = plan.resolved[c["algo"], c["norm"]]
        trainer = plan.config["algorithms"][c["algo"]]["trainer"]
        seeds = len(plan.cell_seeds[c["dataset"], c["percent"], c["algo"], c["norm"]])
        ln = (cfg.critic.get("norm") if isinstance(cfg.critic, dict) else getattr(cfg.critic, "norm", None)) == \
            "layernorm"
        key = tuple(c.values())
        train_s += seeds * cfg.steps / rate(trainer, bool(ln), members[job_of.get(key, key)])
        checkpoints = cfg.steps // cfg.checkpoint_every + 1
        seem_s += checkpoints * seeds * SEEM_SECONDS
        entry = plan.registry_entry(c["dataset"])
        env = entry["env_id"]
        dims = plan.dataset_dims(c["dataset"])
        if env.startswith("AntMaze"):
            from seemrl.training.antmaze import antmaze_task

            eval_s += antmaze_eval_seconds(trainer, cfg, seeds, antmaze_task(c["dataset"], entry).max_episode_steps)
        disk += checkpoints * checkpoint_bytes(trainer, cfg, seeds, dims, cache)
    online = plan.config.get("online") or {}
    return {"config": name + (f" (together: {', '.join(together)})" if together else ""), "training jobs": len(members),
            "online jobs": len(online.get("envs") or []) * len(online.get("variants") or {}),
            "training GPU-h": train_s / 3600, "SEEM GPU-h": seem_s / 3600,
            "AntMaze evaluation h (worst case, summed over jobs)": eval_s / 3600, "checkpoints GB": disk / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="names under config/paper/ (default: all of them)")
    parser.add_argument("--together", nargs="+", choices=["percents", "datasets", "algorithms"],
                        help="also each config as if its grids trained these axes' cells together "
                             "(`train_together`), a row beside each")
    args = parser.parse_args()
    os.chdir(ROOT)  # the registry path in the config is relative to the project
    import torch

    torch.set_num_threads(1)
    known = sorted(p.name for p in (ROOT / "config/paper").glob("*.yaml") if p.name != "paper_results.yaml")
    names = [n if n.endswith(".yaml") else f"{n}.yaml" for n in args.configs] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"no such paper config under config/paper/: {', '.join(unknown)} (known: {', '.join(known)})")
    cache: dict = {}
    rows = []
    for n in names:
        rows.append(estimate(n, cache))
        if args.together:
            rows.append(estimate(n, cache, args.together))
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
