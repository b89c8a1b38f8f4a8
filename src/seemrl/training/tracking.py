"""What a running job tells the outside world while it trains: a progress file, and optionally
TensorBoard and Weights & Biases.

- The progress file (JSON, rewritten atomically at every progress report) holds the job's labels,
  host and pid, step / total, steps/s, ETA and the latest Q and score per seed; `python -m seemrl
  status` reads them all to show a running workflow.
- TensorBoard (`tracking.tensorboard`): event files under results/tensorboard/<run>/seed_<s>, one
  directory per seed so that TensorBoard overlays the seeds of a cell; every logged training
  metric as train/<name>, every evaluation as eval/<name>.
- Weights & Biases (`tracking.wandb`): one W&B run per seed, grouped by cell, with the run's
  config; `wandb_mode: offline` writes under results/wandb for a later `wandb sync`.

The workflow passes the `tracking:` section to jobs in $SEEMRL_TRACKING (how a job runs, never
what it computes: switching it reruns nothing). Nothing here feeds back into training.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from seemrl.io import write_json_atomic

TRACKING_ENV = "SEEMRL_TRACKING"
TENSORBOARD_ROOT = "results/tensorboard"
WANDB_ROOT = "results/wandb"


def settings_from_env() -> dict:
    """The workflow's `tracking:` section, as exported to the job ({} when unset)."""
    text = os.environ.get(TRACKING_ENV, "").strip()
    if not text:
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${TRACKING_ENV} is not JSON ({exc}): {text[:200]!r}")
    if not isinstance(settings, dict):
        raise ValueError(f"${TRACKING_ENV} must be a JSON object, got {text[:200]!r}")
    return settings


class Monitor:
    """Receives a training loop's logged rows, evaluations and progress (see `seemrl.training.loop.train_loop`).

    name: the run's path-like name (e.g. hopper-demo/10pct/td3_seem/ln), for TensorBoard and W&B.
    labels / config: what W&B records with each seed's run and the progress file shows.
    progress: the progress file (None: none).
    """

    def __init__(self, name: str, seeds: Sequence[int], total: int, *, job: str = "train",
                 labels: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 progress: str | os.PathLike | None = None, settings: Mapping[str, Any] | None = None):
        self.name, self.seeds, self.total, self.job = name, list(seeds), int(total), job
        self.labels, self.config = dict(labels or {}), dict(config or {})
        self.progress_path = None if progress is None else Path(progress)
        self.settings = dict(settings_from_env() if settings is None else settings)
        self.started = time.time()
        self.latest: dict[str, list] = {}  # metric -> latest value per seed
        self.state: dict[str, Any] = {"step": 0, "steps_per_second": None, "eta_s": None}
        self._tb = self._wandb = None
        if self.settings.get("tensorboard"):
            self._tb = self._tensorboard_writers()
        if self.settings.get("wandb"):
            self._wandb = self._wandb_runs()
        self._write_progress("running")

    # ------------------------------------------------------------------ backends
    def _tensorboard_writers(self) -> dict:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the tensorboard package
            raise SystemExit(f"tracking.tensorboard is on but TensorBoard is not installed ({exc}): "
                             "pip install 'seemrl[tracking]'")
        root = Path(self.settings.get("tensorboard_dir") or TENSORBOARD_ROOT) / self.name
        return {s: SummaryWriter(log_dir=str(root / f"seed_{s}")) for s in self.seeds}

    def _wandb_runs(self) -> dict:
        try:
            import wandb
        except ImportError as exc:
            raise SystemExit(f"tracking.wandb is on but wandb is not installed ({exc}): pip install 'seemrl[tracking]'")
        root = Path(self.settings.get("wandb_dir") or WANDB_ROOT)
        root.mkdir(parents=True, exist_ok=True)
        runs = {}
        for s in self.seeds:
            runs[s] = wandb.init(project=self.settings.get("wandb_project") or "seemrl",
                                 entity=self.settings.get("wandb_entity"), group=self.name, job_type=self.job,
                                 name=f"{self.name}/seed_{s}", dir=str(root),
                                 mode=self.settings.get("wandb_mode") or "online", reinit="create_new",
                                 config={**self.config, **self.labels, "seed": s}, settings=wandb.Settings(
                                     console="off", x_disable_stats=True, x_disable_meta=True, silent=True))
            # evaluations may arrive after later training steps were logged (played in the
            # background: `seemrl.training.loop`), and W&B drops a log to an earlier step: they
            # carry their own step axis
            runs[s].define_metric("eval/step")
            runs[s].define_metric("eval/*", step_metric="eval/step")
        return runs

    # ------------------------------------------------------------------ what the loop reports
    def metrics(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """One logged step: a row per seed ({"step", "seed", metric: value, ...})."""
        for row in rows:
            values = {k: float(v) for k, v in row.items() if k not in ("step", "seed") and _is_number(v)}
            for k, v in values.items():
                self.latest.setdefault(k, [math.nan] * len(self.seeds))[self.seeds.index(row["seed"])] = v
            self._log(row["seed"], step, "train", values)

    def evaluations(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """One evaluation: a row per seed (return_mean, normalized_score, ...)."""
        for row in rows:
            values = {k: float(v) for k, v in row.items() if k not in ("step", "seed") and _is_number(v)}
            for k in ("return_mean", "normalized_score"):
                if k in values:
                    self.latest.setdefault(f"eval_{k}", [math.nan] * len(self.seeds))[
                        self.seeds.index(row["seed"])] = values[k]
            self._log(row["seed"], step, "eval", values)
        self._write_progress("running")

    def progress(self, step: int, steps_per_second: float | None) -> None:
        """A progress report (the loop's own log line): step, rate, ETA."""
        eta = None if not steps_per_second else (self.total - step) / steps_per_second
        self.state.update(step=int(step), steps_per_second=steps_per_second, eta_s=eta)
        self._write_progress("running")

    def close(self, state: str = "done") -> None:
        """At the end of the job ("done") or on its way out after an error ("failed")."""
        if state == "done":
            self.state.update(step=self.total, eta_s=0.0)
        self._write_progress(state)
        for writer in (self._tb or {}).values():
            writer.close()
        for run in (self._wandb or {}).values():
            run.finish(exit_code=0 if state == "done" else 1)
        self._tb = self._wandb = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("done" if exc_type is None else "failed")

    # ------------------------------------------------------------------ helpers
    def _log(self, seed: int, step: int, section: str, values: Mapping[str, float]) -> None:
        if self._tb is not None:
            for k, v in values.items():
                self._tb[seed].add_scalar(f"{section}/{k}", v, step)
        if self._wandb is not None:
            logged = {f"{section}/{k}": v for k, v in values.items()}
            if section == "eval":
                self._wandb[seed].log({**logged, "eval/step": int(step)})  # at W&B's current step
            else:
                self._wandb[seed].log(logged, step=int(step))

    def _write_progress(self, state: str) -> None:
        if self.progress_path is None:
            return
        now = time.time()
        write_json_atomic(self.progress_path, {
            "format": "seemrl.progress.v1", "job": self.job, "name": self.name, "labels": self.labels,
            "state": state, "host": socket.gethostname(), "pid": os.getpid(), "seeds": self.seeds,
            "step": self.state["step"], "total": self.total, "steps_per_second": self.state["steps_per_second"],
            "eta_s": self.state["eta_s"], "started": self.started, "updated": now,
            "latest": {k: [None if math.isnan(v) else v for v in vs] for k, vs in self.latest.items()},
        })


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
