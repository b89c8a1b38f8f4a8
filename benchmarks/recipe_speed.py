"""D4RL's recipe needs 1M steps of online SAC per environment; how fast can each loop run it?

Times, side by side in one run on one device, the recipe's behaviour SAC today
(`seemrl.generate.behaviour_sac.train_sac_run`: one seed, eager PyTorch) and the stacked online SAC
engine (`seemrl.algos.online_sac.train`: S seeds, each in its own environment, the update
replayed as a CUDA graph on a GPU) over the same environment steps, warm-up and final evaluation
included, and prints env steps/s per seed, the ratio, and the projected minutes for 1M steps.
Issue 16's target: 1M steps with 1M updates in <= 10 min per environment on one H100.

    python benchmarks/recipe_speed.py --env Hopper-v5 --steps 20000 --learning-starts 2000 --seeds 1 3
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=20_000, help="environment steps per seed (warm-up included)")
    p.add_argument("--learning-starts", type=int, default=2_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 3], help="seeds per engine process (S)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--device", default="cuda")
    p.add_argument("--skip-plain", action="store_true", help="time the engine only")
    a = p.parse_args()

    import torch

    from seemrl.algos.online_sac import OnlineSACConfig, train
    from seemrl.generate.behaviour_sac import SACConfig, train_sac_run

    torch.set_num_threads(1)
    quiet = lambda *_: None  # noqa: E731
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"{a.env}, {a.steps:,} env steps per seed ({a.learning_starts:,} warm-up), hidden {a.hidden}, "
          f"{name}, torch {torch.__version__}\n")
    rows = []
    if not a.skip_plain:
        cfg = SACConfig(total_steps=a.steps, learning_starts=a.learning_starts, hidden=tuple(a.hidden),
                        eval_episodes=1, log_every=10**9)
        t0 = time.perf_counter()
        train_sac_run(a.env, cfg, seed=0, log=quiet, device=a.device)
        rows.append(("recipe's behaviour SAC (plain loop)", 1, time.perf_counter() - t0))
    for s in a.seeds:
        cfg = OnlineSACConfig(steps=a.steps, learning_starts=a.learning_starts, hidden=tuple(a.hidden),
                              checkpoint_every=a.steps, log_every=max(1, a.steps // 10), eval_every=a.steps,
                              eval_episodes=1)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train(cfg, list(range(s)), a.env, Path(tmp) / "checkpoints", device=a.device, log=quiet)
            rows.append((f"stacked online SAC engine ({result.update_mode or 'eager'})", s,
                         time.perf_counter() - t0))
    base = rows[0][2] if not a.skip_plain else None
    print("| loop | seeds | wall s | env steps/s per seed | env steps/s, all seeds | minutes per 1M steps per seed "
          "| vs plain (per seed-step) |")
    print("|---|---|---|---|---|---|---|")
    for label, s, wall in rows:
        rate = a.steps / wall
        ratio = f"{base / wall * s:.2f}x" if base else "-"
        print(f"| {label} | {s} | {wall:.1f} | {rate:,.0f} | {rate * s:,.0f} | {1e6 / rate / 60:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
