"""Benchmark: AntMaze policy evaluation (`seemrl.training.antmaze.play_episodes`), env steps/s with 1 process
vs `workers` worker processes, side by side in one run.

S seeds x E episodes of one AntMaze dataset's evaluation env (default antmaze-umaze-v2: 10 x 10,
700 steps each), actions from a random numpy policy (uniform in [-1, 1], the same stream in every
row), so the time is the physics plus the parent <-> worker traffic. Each row builds its envs
(workers = 1) or starts its pool of workers, which build theirs, and plays every episode to its end,
as one evaluation of a training run does (spawning the workers included). It prints for each number of
workers in --workers (capped at os.cpu_count()): env steps, seconds, env steps/s, the speed-up
over workers = 1, the minutes one Table-1 evaluation (10 seeds x 100 episodes x 1000 steps) would
take at that rate (the policy's own time not included), and whether the returns, successes and
lengths equal those of workers = 1.

    python benchmarks/antmaze_eval_speed.py                 # 10 seeds x 10 episodes, workers 1..16
    python benchmarks/antmaze_eval_speed.py --tiny          # 2 seeds x 2 episodes of 20 steps (CI)
    python benchmarks/antmaze_eval_speed.py --workers 1 4 --max-steps 200
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from seemrl.training.antmaze import antmaze_env_fn, play_episodes
from seemrl.training.evaluation import episode_seed

TABLE1_STEPS = 10 * 100 * 1000  # seeds x episodes x steps of one evaluation for Table 1


def random_policy(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=obs.shape[:2] + (8,))


def play(makers, n_seeds: int, reset_seeds: list[int], workers: int) -> tuple[dict, float]:
    """play_episodes' results and its seconds, env building or pool start included."""
    start = time.perf_counter()
    envs = makers if workers > 1 else [make() for make in makers]
    out = play_episodes(random_policy(), envs, n_seeds, reset_seeds, workers=workers)
    seconds = time.perf_counter() - start
    if workers == 1:
        for env in envs:
            env.close()
    return out, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="2 seeds x 2 episodes of 20 steps, workers 1 and 2")
    p.add_argument("--dataset", default="antmaze-umaze-v2")
    p.add_argument("--seeds", type=int, default=None, help="default 10 (2 with --tiny)")
    p.add_argument("--episodes", type=int, default=None, help="per seed; default 10 (2 with --tiny)")
    p.add_argument("--max-steps", type=int, default=None, help="episode time limit (default the dataset's; 20 with --tiny)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="default 1 2 4 8 16 (1 2 with --tiny)")
    args = p.parse_args()
    seeds = args.seeds or (2 if args.tiny else 10)
    episodes = args.episodes or (2 if args.tiny else 10)
    max_steps = args.max_steps or (20 if args.tiny else None)
    cpus = os.cpu_count() or 1
    workers = sorted({min(w, cpus) for w in args.workers or ([1, 2] if args.tiny else [1, 2, 4, 8, 16])} | {1})

    maker = antmaze_env_fn(args.dataset)
    if max_steps:
        maker = dataclasses.replace(maker, task=dataclasses.replace(maker.task, max_episode_steps=max_steps))
    makers = [maker] * (seeds * episodes)
    reset_seeds = [episode_seed(0, s, k) for s in range(seeds) for k in range(episodes)]

    print(f"{args.dataset}: {seeds} seeds x {episodes} episodes (time limit {maker.task.max_episode_steps}), "
          f"random policy; {cpus} CPUs")
    print("| workers | env steps | seconds | env steps/s | speed-up | min per Table-1 evaluation | same results |")
    print("|---|---|---|---|---|---|---|")
    base, differ = None, []
    for w in workers:
        out, seconds = play(makers, seeds, reset_seeds, w)
        rate = out["lengths"].sum() / seconds
        base = base or (out, rate)
        same = all(np.array_equal(out[k], base[0][k]) for k in ("returns", "success", "lengths", "nonfinite"))
        differ += [] if same else [w]
        print(f"| {w} | {out['lengths'].sum()} | {seconds:.1f} | {rate:,.0f} | {rate / base[1]:.2f}x | "
              f"{TABLE1_STEPS / rate / 60:.1f} | {'yes' if same else 'NO'} |", flush=True)
    if differ:
        raise SystemExit(f"results with workers {differ} differ from those of workers = 1")


if __name__ == "__main__":
    main()
