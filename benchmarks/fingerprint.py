"""Fingerprints of what training computes: every algorithm trained through `seemrl train` (and
online SAC through `seemrl train-online`) on one synthetic Hopper-shaped dataset, on the CPU, and
a SHA-256 of each output's numbers: checkpoint tensors, logged metrics and evaluations.

A refactoring that must not change behaviour prints the same fingerprints before and after (on
the CPU; on a GPU too, where a job repeats bit for bit):

    python benchmarks/fingerprint.py --out before.json   # on the old commit
    python benchmarks/fingerprint.py --compare before.json

Only numbers are hashed (not configs, paths or timings), so renaming a setting keeps its run's
fingerprint. `OLD_NAMES` maps today's setting names to earlier ones, so the same script runs on
both sides of a rename. CPU numbers depend on the CPU's vector kernels: compare on one machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

STEPS = 60
SMALL = {"hidden": [32, 32], "checkpoint_every": 20, "log_every": 10}
# run name -> (command, trainer or env, params); settings are today's names
RUNS = {
    "td3_seem": ("train", "td3", {"steps": STEPS, **SMALL}),
    "td3bc_ln_eval": ("train", "td3", {"steps": STEPS, **SMALL, "bc_weight": 1.0, "tau": 0.005,
                                        "critic": {"norm": "layernorm"}, "eval_every": 30, "eval_episodes": 1}),
    "td3_sgd_wd": ("train", "td3", {"steps": STEPS, **SMALL, "optimizer": "sgd", "actor_lr": 1e-3,
                                     "critic_lr": 1e-3, "critic": {"weight_decay": 1e-4}}),
    "iql": ("train", "iql", {"steps": STEPS, **SMALL, "eval_every": 60, "eval_episodes": 1}),
    "iql_minus1": ("train", "iql", {"steps": STEPS, **SMALL, "reward_transform": "minus1",
                                     "critic": {"norm": "layernorm"}}),
    "cql": ("train", "cql", {"steps": 40, **SMALL, "actor_lr": 3e-4, "cql_n_actions": 4}),
    "diffql_oper": ("train", "diffql", {"steps": 20, "hidden": [32, 32], "checkpoint_every": 10, "log_every": 5,
                                         "diffusion_steps": 5, "sample_steps": 5, "sampler": "ddpm",
                                         "beta_schedule": "vp", "oper_r": True, "critic": {"norm": "layernorm"},
                                         "eval_every": 20, "eval_episodes": 1, "eval_samples": 4}),
    "online_sac": ("train-online", "Hopper-v5", {"steps": 300, "learning_starts": 100, "hidden": [32, 32],
                                                 "checkpoint_every": 100, "log_every": 50, "eval_every": 150,
                                                 "eval_episodes": 1, "buffer_size": 300}),
}
# today's name -> the name before issue 14, per trainer (a value of None: the setting did not exist)
OLD_NAMES = {
    "td3": {"actor_lr": "lr", "critic_lr": "lr"},
    "cql": {"actor_lr": "policy_lr"},
    "iql": {"reward_transform": "reward_mode"},
}
SEEDS = "0,3"


def dataset(path: Path) -> None:
    """60 episodes of 50 steps in Hopper-v5's shapes (obs 11, act 3), fixed by seed 0."""
    from seemrl.data.transitions import Transitions, write_transitions

    rng = np.random.default_rng(0)
    n, ep = 3000, 50
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    t = Transitions(obs=obs, action=rng.uniform(-1, 1, (n, 3)), reward=rng.normal(1, 0.5, n),
                    next_obs=obs + 0.1 * rng.normal(size=(n, 11)),
                    terminal=(np.arange(n) % ep == ep - 1) & (rng.random(n) < 0.5),
                    timeout=np.zeros(n, bool), episode_id=np.arange(n) // ep, step=np.arange(n) % ep,
                    meta={"name": "hopper-fingerprint", "env_id": "Hopper-v5", "source": "generate",
                          "eval_env_id": "Hopper-v5", "ref_min_score": -20.0, "ref_max_score": 3234.3})
    t.timeout[(np.arange(n) % ep == ep - 1) & ~t.terminal] = True
    write_transitions(path, t)


def _old_params(trainer: str, params: dict) -> dict:
    from seemrl.algos import trainer_module

    fields = set(trainer_module(trainer).Config.__dataclass_fields__)
    out = {}
    for key, value in params.items():
        out[key if key in fields else OLD_NAMES.get(trainer, {}).get(key, key)] = value
    return out


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(str(obj.dtype).encode() + str(tuple(obj.shape)).encode())
        h.update(obj.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if obj.numel() else b"")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if key in ("config", "format"):  # settings and their names, not numbers
                continue
            h.update(str(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _digest(item, h)
    elif isinstance(obj, (int, float, bool, str, type(None), np.integer, np.floating)):
        h.update(repr(obj).encode())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(bytes(obj))
    else:
        h.update(repr(type(obj)).encode())


def _frame_digest(path: Path) -> str:
    df = pd.read_parquet(path)
    df = df[sorted(c for c in df.columns if c not in ("wall_seconds", "time", "wall_time"))]
    h = hashlib.sha256(",".join(df.columns).encode())
    for col in df.columns:
        h.update(np.asarray(df[col].to_numpy()).astype(str).tobytes() if df[col].dtype == object
                 else df[col].to_numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(work: Path, device: str = "cpu") -> dict:
    data = work / "data.parquet"
    dataset(data)
    out = {}
    for name, (command, what, params) in RUNS.items():
        run = work / name
        args = [sys.executable, "-m", "seemrl", command, "--seeds", SEEDS, "--device", device,
                "--checkpoints", str(run / "ckpt"), "--metrics", str(run / "metrics.parquet"),
                "--run", str(run / "run.json"), "--evaluations", str(run / "evals.parquet")]
        if command == "train":
            args += ["--trainer", what, "--data", str(data), "--params", json.dumps(_old_params(what, params))]
        else:
            args += ["--env-id", what, "--params", json.dumps(params), "--episodes", str(run / "episodes.parquet")]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        entry = {}
        for ckpt in sorted((run / "ckpt").glob("*.pt")):
            h = hashlib.sha256()
            _digest(torch.load(ckpt, map_location="cpu", weights_only=False), h)
            entry[ckpt.name] = h.hexdigest()[:16]
        for frame in ("metrics", "evals", "episodes"):
            if (run / f"{frame}.parquet").exists():
                entry[frame] = _frame_digest(run / f"{frame}.parquet")
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the fingerprints here (JSON)")
    p.add_argument("--compare", help="fingerprints (JSON) these must equal; exit 1 on any difference")
    p.add_argument("--device", default="cpu", help="cpu (the reference) or cuda (a job repeats bit for bit there too)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        fp = fingerprint(Path(work), a.device)
    if a.out:
        Path(a.out).write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    if a.compare:
        want = json.loads(Path(a.compare).read_text())
        diff = [f"{run}/{key}" for run in sorted(set(want) | set(fp))
                for key in sorted(set(want.get(run, {})) | set(fp.get(run, {})))
                if want.get(run, {}).get(key) != fp.get(run, {}).get(key)]
        print("same fingerprints" if not diff else f"DIFFERENT: {diff}")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
