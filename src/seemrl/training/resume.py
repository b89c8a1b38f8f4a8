"""A run's checkpoint files and its resumable state, kept outside Snakemake's declared outputs.

Shared by every trainer: checkpoints are `step_XXXXXXXX.pt` files in a run's checkpoint
directory; `ResumeDir` holds what a killed job continues from.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from seemrl.io import atomic_path

RESUME_FORMAT = "seemrl.resume.v1"


def checkpoint_paths(checkpoint_dir: str | Path) -> list[Path]:
    """Checkpoints of a run in step order."""
    return sorted(Path(checkpoint_dir).glob("step_*.pt"))


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


class ResumeDir:
    """A run's resumable state, kept outside its declared outputs.

    Snakemake deletes a job's outputs before the job starts, so what a restarted job continues
    from must live elsewhere. The directory holds
      state.pt      the trainer's state (weights, EMA targets, optimisers, every per-seed
                    generator, iteration counter), the step, diverged_step, the metric and
                    evaluation rows so far, and the fingerprint of the run it belongs to;
      checkpoints/  the checkpoints written so far, copied into the declared directory at the end.
    A state is only continued by the run it came from: same config, seeds and data file.
    """

    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.identity = identity
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.state_path = self.path / "state.pt"
        self.checkpoint_dir = self.path / "checkpoints"

    def load(self, log: Callable[[str], None]) -> dict | None:
        """The saved state if it belongs to this run; otherwise None, with the directory emptied."""
        if not self.state_path.exists():
            if self.path.exists():  # killed before its first state: checkpoints alone are no use
                log(f"{self.path} holds no resume state; starting from step 0")
            self.clear()
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # state.pt is written atomically, so this is a foreign file
            reason = f"unreadable: {exc}"
        else:
            if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
                reason = "not a seemrl resume state"
            elif state["fingerprint"] != self.fingerprint:
                reason = f"from a different run: {self._difference(state['identity'])}"
            else:
                return state
        log(f"not resuming from {self.state_path} ({reason}); starting from step 0")
        self.clear()
        return None

    def _difference(self, other: dict) -> str:
        old, new = _flatten(other), _flatten(self.identity)
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                   if old.get(k) != new.get(k)]
        return "; ".join(changed)

    def save(self, state: dict) -> None:
        with atomic_path(self.state_path) as tmp:
            torch.save({"format": RESUME_FORMAT, "fingerprint": self.fingerprint,
                        "identity": self.identity, **state}, tmp)

    def drop_checkpoints_after(self, step: int) -> None:
        # written after the state was saved (killed between the two writes); they are redone
        for path in checkpoint_paths(self.checkpoint_dir):
            if int(path.stem.split("_")[1]) > step:
                path.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
