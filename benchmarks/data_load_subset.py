"""Benchmark: load a 1M-transition Parquet table and cut X% subsets (target: <= 2 s on 2 cores).

Writes a synthetic Hopper-sized table (obs 11, act 3) once under .cache/bench/, then times, in
the same run and on the same file:
  seemrl   read_transitions (fixed-size lists flattened straight into numpy) + subset_indices +
           take + write_transitions, as the `subset` rule does
  naive    pandas.read_parquet + np.stack of the per-row list cells (the usual way to read list
           columns) + the same subset
and prints each time and the ratio. Usage: python benchmarks/data_load_subset.py [--rows N]
"""
import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from seemrl.data.subsets import subset_indices
from seemrl.data.transitions import Transitions, read_transitions, write_transitions

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, obs_dim=11, act_dim=3) -> Transitions:
    rng = np.random.default_rng(0)
    steps = np.arange(n) % 1000
    return Transitions(
        obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        reward=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
        terminal=np.zeros(n, bool),
        timeout=steps == 999,
        episode_id=(np.arange(n) // 1000).astype(np.int64),
        step=steps.astype(np.int32),
        meta={"name": "bench", "env_id": "Hopper-v5", "source": "synthetic"},
    )


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    bench = ROOT / ".cache" / "bench"
    table = bench / f"transitions-{args.rows}.parquet"
    if not table.exists():
        write_transitions(table, synthetic(args.rows))
    out = bench / "subset.parquet"

    def seemrl_load():
        return read_transitions(table)

    def seemrl_load_and_subsets():
        t = read_transitions(table)
        for pct in (1, 10, 50):
            write_transitions(out, t.take(subset_indices(len(t), pct, seed=0)))

    def naive_load():
        df = pd.read_parquet(table)
        return {c: np.stack(df[c].to_numpy()) for c in ("obs", "action", "next_obs")}

    rows = [
        ("load", best_of(seemrl_load), best_of(naive_load)),
        ("load + 1/10/50% subsets written", best_of(seemrl_load_and_subsets), None),
    ]
    print(f"{args.rows} transitions, obs 11, act 3, file {table.stat().st_size / 2**20:.0f} MiB")
    print(f"| step | seemrl (s) | naive pandas (s) | naive / seemrl |\n|---|---|---|---|")
    for name, ours, naive in rows:
        ratio = f"{naive / ours:.1f}x" if naive else "-"
        print(f"| {name} | {ours:.2f} | {naive:.2f} | {ratio} |" if naive else f"| {name} | {ours:.2f} | - | - |")
    worst = max(r[1] for r in rows)
    print(f"target <= 2 s: {'met' if worst <= 2 else 'NOT met'} (slowest {worst:.2f} s)")


if __name__ == "__main__":
    main()
