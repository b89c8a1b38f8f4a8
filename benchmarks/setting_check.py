"""Does a speed setting change what a run learns? The same algorithm, table and seeds, with and without it.

Issue 17 allows faster paths that change results beyond rounding (bfloat16 in Diffusion-QL's
backup, say) only as switches that stay off until their results match. This trains one offline
algorithm on one transition table twice through the workflow's training entry point
(`seemrl.train.train_offline`, seeds stacked): once with its settings as given, once with the
setting under test on top, on the same device, then prints per side the final normalised score
(mean ± std over seeds), the critics' mean Q on the first 10k rows of the table, the last critic
loss, seed-steps/s, and Welch's t-test p-value of the scores between the sides. A p-value says
only whether a difference was seen at this many seeds; the table says how large it was.

    python benchmarks/setting_check.py TABLE.parquet --algo diffql --setting backup_dtype=bfloat16 \\
        --base reward_transform=none normalize_states=true --steps 50000 --seeds 0 1 2 3 4
    python benchmarks/setting_check.py TABLE.parquet --algo td3 --setting compile_update=true --steps 20000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_settings(items: list[str]) -> dict:
    """KEY=VALUE pairs, each VALUE read as YAML (numbers, booleans, lists), else a string."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"setting {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def train_side(algo: str, params: dict, table: str, seeds: list[int], steps: int, eval_episodes: int,
               device: str, q_rows: dict) -> dict:
    """One side: the run's final scores, Q on the rows, last critic loss and speed."""
    import torch
    from peer_check import train_seemrl

    from seemrl.algos import trainer_module

    cfg = trainer_module(algo).Config(**{**params, "steps": steps, "checkpoint_every": steps,
                                         "log_every": max(1, steps // 20), "eval_every": steps,
                                         "eval_episodes": eval_episodes})
    run, metrics, nets, wall = train_seemrl(algo, cfg, params, seeds, table, device)
    with torch.no_grad():
        obs, act = (torch.tensor(q_rows[k], dtype=torch.float32) for k in ("obs", "action"))
        x = torch.cat([nets.normalize(obs.expand(len(seeds), *obs.shape)), act.expand(len(seeds), *act.shape)], -1)
        q = nets.q1(x).mean((1, 2))
    last = metrics[metrics["step"] == metrics["step"].max()].sort_values("seed")
    per_seed = run["evaluation"]["per_seed"]
    return {"scores": [per_seed[str(s)]["final_score"] for s in seeds], "q_mean": q.tolist(),
            "critic_loss": last["critic_loss"].tolist() if "critic_loss" in last else None,
            "diverged": [run["diverged_step"].get(str(s)) for s in seeds],
            "seed_steps_per_second": run["seed_steps_per_second"], "wall_seconds": wall}


def summary(v) -> str:
    if not v or any(x is None for x in v):
        return "-"
    return f"{v[0]:.3g} (1 seed)" if len(v) == 1 else f"{np.mean(v):.3g} ± {np.std(v):.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="a transition table (Parquet) the workflow wrote, with its environment in the metadata")
    p.add_argument("--algo", required=True, help="trainer: td3, iql, cql, diffql")
    p.add_argument("--setting", nargs="+", required=True, metavar="KEY=VALUE", help="the setting under test")
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings of both sides")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write every number here")
    a = p.parse_args()

    import torch

    from peer_check import welch_p
    from seemrl.data.transitions import read_transitions
    from seemrl.training.devices import resolve_device

    device = resolve_device(a.device)
    base, setting = parse_settings(a.base), parse_settings(a.setting)
    t = read_transitions(a.table)
    n = min(len(t), 10_000)
    q_rows = {"obs": np.asarray(t.obs)[:n], "action": np.asarray(t.action)[:n]}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"{a.algo} on {a.table} ({len(t):,} transitions), {a.steps:,} steps, seeds {a.seeds}, {name}, "
          f"torch {torch.__version__}; both sides: {json.dumps(base)}; under test: {json.dumps(setting)}\n", flush=True)
    sides = {"as given": base, "with " + ", ".join(f"{k}={v}" for k, v in setting.items()): {**base, **setting}}
    results = {}
    for label, params in sides.items():
        results[label] = train_side(a.algo, params, a.table, a.seeds, a.steps, a.eval_episodes, device, q_rows)
    (la, ra), (lb, rb) = results.items()
    p_value = welch_p(ra["scores"], rb["scores"])
    print("| side | final score | mean Q on the data | last critic loss | diverged (step per seed) | seed-steps/s |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        div = ", ".join("-" if d is None else str(d) for d in r["diverged"])
        print(f"| {label} | {summary(r['scores'])} | {summary(r['q_mean'])} | {summary(r['critic_loss'])} | {div} "
              f"| {r['seed_steps_per_second']:,.0f} |")
    diff = np.mean(rb["scores"]) - np.mean(ra["scores"])
    print(f"\nscore difference (with - as given): {diff:+.2f}; Welch's p = "
          f"{'-' if p_value is None else f'{p_value:.3g}'}; speed ratio "
          f"{rb['seed_steps_per_second'] / ra['seed_steps_per_second']:.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "algo": a.algo, "table": a.table,
                                      "steps": a.steps, "seeds": a.seeds, "base": base, "setting": setting,
                                      "results": results, "welch_p": p_value}, indent=1))


if __name__ == "__main__":
    main()
