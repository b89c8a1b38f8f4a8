"""Training algorithms. Every offline algorithm module (td3, iql, cql, diffql) offers the same
interface: `Config` (its hyperparameter dataclass), `build_nets(cfg, seeds, obs_dim, act_dim, mean,
std)`, `train(cfg, seeds, data, nets, checkpoint_dir, device, log, evaluate, resume)`,
`run_identity(cfg, seeds, data_sha256)`, `load_checkpoint(path)` and `CHECKPOINT_FORMAT`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

# trainer name in the config -> module; checkpoint format prefix -> the same module
TRAINERS = {"td3": "seemrl.algos.td3", "iql": "seemrl.algos.iql", "cql": "seemrl.algos.cql",
            "diffql": "seemrl.algos.diffql", "online_sac": "seemrl.algos.online_sac"}


def trainer_module(name: str) -> ModuleType:
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose from {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[name])


def load_checkpoint(path: str | Path):
    """Any algorithm's checkpoint, by its format tag (`seemrl.<trainer>.vN`)."""
    from seemrl.training.loop import read_checkpoint

    fmt = read_checkpoint(path)["format"]
    name = fmt.split(".")[1]
    if name not in TRAINERS:
        raise ValueError(f"{path}: checkpoint format {fmt!r} belongs to no known trainer")
    return trainer_module(name).load_checkpoint(path)
