"""The training loop: steps, logged per-seed metrics, evaluations, checkpoints and resume.

`train_loop` runs a `StackedTrainer` for its steps, logs metrics every `log_every` steps,
evaluates every `eval_every`, writes checkpoints every `checkpoint_every` (step 0 and the last
included) and, with a `ResumeDir`, saves the full state at each checkpoint step so a killed run
continues where it stopped and ends bit for bit where an uninterrupted one ends (on the CPU).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn

from seemrl.io import atomic_path
from seemrl.training.resume import ResumeDir, checkpoint_name, checkpoint_paths
from seemrl.training.trainer import StackedTrainer

if TYPE_CHECKING:
    from seemrl.training.tracking import Monitor

# ------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """A loaded checkpoint. `nets` has at least `q1` (a StackedMLP over [state, action]),
    `normalize(obs)` and `policy(obs_normalised) -> actions in [-1, 1]`: what the SEEM analysis
    and the evaluation use, whatever the algorithm."""

    step: int
    seeds: list[int]
    config: Any
    nets: Any
    diverged_step: list[int | None]


def write_checkpoint(path: Path, fmt: str, *, step: int, seeds: Sequence[int], config,
                     diverged_step: Sequence[int | None], modules: dict[str, nn.Module], **extra) -> None:
    """Atomically write a checkpoint: format tag, step, seeds, config (a dataclass), divergence
    record, the state dicts of `modules` under their names, and `extra` values (tensors on CPU)."""
    payload = {"format": fmt, "step": step, "seeds": list(seeds), "config": dataclasses.asdict(config),
               "diverged_step": list(diverged_step),
               **{name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in modules.items()},
               **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """The payload of a checkpoint, checked to carry format `fmt` (any seemrl format if None);
    an unreadable, truncated or foreign file raises ValueError naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which one
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    found = payload.get("format") if isinstance(payload, dict) else None
    if fmt is None and not (isinstance(found, str) and found.startswith("seemrl.")) or fmt is not None and found != fmt:
        raise ValueError(f"{path} is not a {fmt or 'seemrl'} checkpoint (format {found!r})")
    return payload


# ------------------------------------------------------------------ results
# Rows of the evaluations table: one per (evaluation step, seed).
EVALUATION_COLUMNS = {"step": "int64", "seed": "int64", "return_mean": "float64", "return_std": "float64",
                      "normalized_score": "float64", "nonfinite_actions": "bool"}


def evaluations_frame(rows: list[dict]) -> pd.DataFrame:
    """The evaluation rows as a table with fixed dtypes (a score of None becomes NaN)."""
    return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS)).astype(EVALUATION_COLUMNS)


@dataclass
class TrainResult:
    metrics: pd.DataFrame
    diverged_step: list[int | None]
    steps_per_second: float | None  # over the steps this process ran; None if it ran none
    wall_seconds: float
    evaluations: pd.DataFrame = field(default_factory=lambda: evaluations_frame([]))
    resumed_from_step: int | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ the training loop
@dataclass
class LoopSettings:
    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int = 0
    resume_every_s: float = 0.0  # a resume state after a checkpoint once this long since the last (0: every one)
    eval_from: int = 0  # no evaluation before this step, but the last step is always evaluated


def train_loop(trainer: StackedTrainer, loop: LoopSettings, checkpoint_dir: Path,
               save_checkpoint: Callable[[Path, int, list], None],
               metric_keys: Sequence[str], param_norms: Callable[[], dict[str, torch.Tensor]],
               log: Callable[[str], None] = print, evaluate: Callable | None = None,
               resume: ResumeDir | None = None, monitor: Monitor | None = None) -> TrainResult:
    """Train all seeds for `loop.steps` steps; the checkpoints end up in `checkpoint_dir`.

    Logged steps add one row per seed with `metric_keys` from the step's output (a key a step
    does not return, e.g. the actor loss between delayed actor updates, keeps its latest value)
    and `param_norms()`. save_checkpoint(path, step, diverged_step) writes one checkpoint.
    evaluate(trainer) -> one result per seed is called every `loop.eval_every` steps and after the
    last step. Without `resume`, checkpoints are written straight into `checkpoint_dir` (the
    caller makes that atomic). With it, they go to the resume directory, each followed by a
    resume state (or, with `loop.resume_every_s`, those after that many seconds since the last
    state, and the last); training continues from a matching state found there; and at the end
    `checkpoint_dir` is replaced, atomically, by a directory of every checkpoint. A `monitor`
    (`seemrl.training.tracking.Monitor`) gets every logged row, evaluation and progress report.

    An `evaluate` with `overlap` set and `snapshot`/`run`/`state`/`restore` (`seemrl.algos.base.NetsEvaluation`)
    plays in a background thread while training goes on: snapshot(trainer) copies the policy at the
    step (main thread), run(copy) plays it; its rows are collected before the next evaluation and
    at the end, so they are the rows a blocking evaluation gives. A resume state keeps the policy
    of an evaluation still playing (state(copy)), and a resumed run plays it again (restore).
    """
    if loop.eval_every and evaluate is None:
        raise ValueError("eval_every > 0 needs an evaluate function")
    overlap = evaluate is not None and getattr(evaluate, "overlap", False)
    pending = _PendingEvaluation(evaluate, log, monitor) if overlap else None
    try:
        return _train_loop(trainer, loop, checkpoint_dir, save_checkpoint, metric_keys, param_norms, log, evaluate,
                           resume, monitor, pending)
    finally:
        if pending is not None:
            pending.close()


class _PendingEvaluation:
    """At most one evaluation playing in a background thread (see `train_loop`)."""

    def __init__(self, evaluate, log: Callable[[str], None], monitor):
        from concurrent.futures import ThreadPoolExecutor

        self.evaluate, self.log, self.monitor = evaluate, log, monitor
        # torch's CPU thread count is per thread: the evaluation's policy computes on as many as
        # the job's (a sum split over other threads rounds differently, and the actions with it)
        threads = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="evaluation", initializer=torch.set_num_threads,
                                       initargs=(threads,))
        self.step: int | None = None
        self.copy = self.future = None

    def submit(self, step: int, copy) -> None:
        self.step, self.copy = step, copy
        self.future = self.pool.submit(self.evaluate.run, copy)

    def collect(self, eval_rows: list[dict]) -> None:
        """Wait for the evaluation playing, if any, and add its rows."""
        if self.future is None:
            return
        results = self.future.result()
        step, self.step, self.copy, self.future = self.step, None, None, None
        _add_evaluation(step, results, eval_rows, self.log, self.monitor)

    def state(self) -> dict | None:
        return None if self.future is None else {"step": self.step, "policy": self.evaluate.state(self.copy)}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _train_loop(trainer, loop, checkpoint_dir, save_checkpoint, metric_keys, param_norms, log, evaluate, resume,
                monitor, pending: _PendingEvaluation | None) -> TrainResult:
    seeds = trainer.seeds
    log(f"update step: {trainer.mode}")
    work_dir = checkpoint_dir if resume is None else resume.checkpoint_dir
    state = resume.load(log) if resume is not None else None
    if state is None:
        start_step = 0
        diverged: list[int | None] = [None] * len(seeds)
        rows: list[dict] = []
        eval_rows: list[dict] = []
        last = {k: torch.full((len(seeds),), math.nan) for k in metric_keys}  # latest value per key
        save_checkpoint(work_dir / checkpoint_name(0), 0, diverged)
    else:
        trainer.load_state_dict(state["trainer"])
        start_step, diverged = state["step"], state["diverged_step"]
        rows, eval_rows, last = state["metrics"], state["evaluations"], state["last_metrics"]
        resume.drop_checkpoints_after(start_step)
        log(f"resuming from step {start_step} ({resume.state_path})")
        playing = state.get("pending_evaluation")
        if playing is not None:  # an evaluation that was still playing: play it again
            if pending is None:
                _add_evaluation(playing["step"], evaluate.run(evaluate.restore(trainer, playing["policy"])), eval_rows,
                                log, monitor)
            else:
                pending.submit(playing["step"], evaluate.restore(trainer, playing["policy"]))

    start = last_report = last_saved = time.perf_counter()
    for step in range(start_step + 1, loop.steps + 1):
        logged = step % loop.log_every == 0 or step == loop.steps
        out = trainer.step(grad_norm=logged)
        for k in metric_keys:
            if k in out:
                last[k] = out[k]
        if logged:
            values = {k: v.detach().cpu() for k, v in {**last, **param_norms()}.items()}
            _record_divergence(trainer, diverged, log)
            for i, seed in enumerate(seeds):
                rows.append({"step": step, "seed": seed, **{k: float(v[i]) for k, v in values.items()}})
            if monitor is not None:
                monitor.metrics(step, rows[-len(seeds):])
            now = time.perf_counter()
            if now - last_report > 10 or step == loop.steps:
                rate = (step - start_step) / (now - start)
                q = f"  Q mean per seed {[round(float(v), 2) for v in values['q_mean']]}" if "q_mean" in values else ""
                log(f"step {step}/{loop.steps}  {rate:.0f} steps/s ({rate * len(seeds):.0f} seed-steps/s)"
                    f"  ETA {(loop.steps - step) / rate:.0f}s{q}")
                if monitor is not None:
                    monitor.progress(step, rate)
                last_report = now
        if loop.eval_every and ((step % loop.eval_every == 0 and step >= loop.eval_from) or step == loop.steps):
            if pending is not None:
                pending.collect(eval_rows)
                pending.submit(step, evaluate.snapshot(trainer))
            else:
                _add_evaluation(step, evaluate(trainer), eval_rows, log, monitor)
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            _record_divergence(trainer, diverged, log)
            save_checkpoint(work_dir / checkpoint_name(step), step, diverged)
            if resume is not None and (step == loop.steps or time.perf_counter() - last_saved >= loop.resume_every_s):
                # after the checkpoint: a state never refers to a missing one
                last_saved = time.perf_counter()
                resume.save({"step": step, "trainer": trainer.state_dict(), "diverged_step": diverged,
                             "metrics": rows, "evaluations": list(eval_rows),
                             "pending_evaluation": None if pending is None else pending.state(),
                             "last_metrics": {k: v.detach().cpu() for k, v in last.items()}})
    if pending is not None:
        pending.collect(eval_rows)
    wall = time.perf_counter() - start
    if resume is not None:
        with atomic_path(checkpoint_dir, is_dir=True) as tmp:
            for path in checkpoint_paths(resume.checkpoint_dir):
                shutil.copyfile(path, tmp / path.name)
    ran = loop.steps - start_step
    return TrainResult(pd.DataFrame(rows), diverged, ran / wall if ran else None, wall,
                       evaluations=evaluations_frame(eval_rows),
                       resumed_from_step=None if state is None else start_step)


def _record_divergence(trainer: StackedTrainer, diverged: list[int | None], log: Callable[[str], None]) -> None:
    """Copy the trainer's per-step divergence record into `diverged` (in place), logging news."""
    for i, (seed, first) in enumerate(zip(trainer.seeds, trainer.first_nonfinite_steps())):
        if first is not None and diverged[i] is None:
            diverged[i] = first
            log(f"seed {seed}: non-finite loss at step {first}; recorded, training goes on")


def _add_evaluation(step: int, results: list, eval_rows: list[dict], log: Callable[[str], None], monitor) -> None:
    """One evaluation's rows added to `eval_rows` (in place), logged and given to the monitor."""
    new_rows = _evaluation_rows(step, results, log)
    eval_rows += new_rows
    if monitor is not None:
        monitor.evaluations(step, new_rows)


def _evaluation_rows(step: int, results: list, log: Callable[[str], None]) -> list[dict]:
    rows = [{"step": step, "seed": r.seed, "return_mean": r.return_mean, "return_std": r.return_std,
             "normalized_score": r.normalized_score, "nonfinite_actions": r.nonfinite_actions}
            for r in results]
    flagged = [r.seed for r in results if r.nonfinite_actions]
    log(f"evaluation at step {step}: mean return per seed {[round(r.return_mean, 1) for r in results]}"
        + (f"; non-finite actions (replaced by 0) from seeds {flagged}" if flagged else ""))
    return rows
