"""Wall time of a training job with its evaluations blocking training and with them played in a
background thread (`seemrl train --eval-overlap 0 / 1`), side by side in one run.

The job: `seemrl train` of TD3+BC at the paper's network sizes on a synthetic Hopper-shaped table
(as the tests') evaluated in Hopper-v5, or on a given table (--data) evaluated in its environment,
every --eval-every steps. The two runs must give the
same evaluations; the script checks it and prints the wall times and their ratio.

    python benchmarks/eval_overlap.py --steps 3000 --eval-every 500 --episodes 10 --device cpu
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the synthetic table")
    parser.add_argument("--data", help="a transition table to train on instead (evaluated in its eval_env_id)")
    args = parser.parse_args()
    from helpers import train_dataset  # the tests' synthetic Hopper-shaped table

    params = {"steps": args.steps, "bc_weight": 1.0, "tau": 0.005, "checkpoint_every": args.steps,
              "log_every": 250, "eval_every": args.eval_every, "eval_episodes": args.episodes}
    walls, tables = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data).resolve() if args.data else train_dataset(Path(tmp) / "data.parquet", n=args.rows)
        for overlap in (0, 1):
            out = Path(tmp) / f"overlap{overlap}"
            cmd = [sys.executable, "-m", "seemrl", "train", "--data", str(data), "--params", json.dumps(params),
                   "--seeds", args.seeds, "--device", args.device, "--eval-overlap", str(overlap),
                   "--checkpoints", str(out / "checkpoints"), "--metrics", str(out / "metrics.parquet"),
                   "--evaluations", str(out / "evaluations.parquet"), "--run", str(out / "run.json")]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            walls[overlap] = time.perf_counter() - t0
            tables[overlap] = pd.read_parquet(out / "evaluations.parquet")
    same = tables[0].equals(tables[1])
    print(f"TD3+BC, {args.steps} steps, seeds {args.seeds}, {args.device}, on {args.data or 'a synthetic table'}; "
          f"{args.episodes} evaluation episodes per seed every {args.eval_every} steps")
    print("| evaluations | wall s | vs blocking |\n|---|---:|---:|")
    print(f"| blocking | {walls[0]:.1f} | 1.00x |")
    print(f"| overlapped | {walls[1]:.1f} | {walls[0] / walls[1]:.2f}x |")
    print(f"same evaluations: {same}")
    if not same:
        raise SystemExit("the overlapped evaluations differ from the blocking ones")


if __name__ == "__main__":
    main()
