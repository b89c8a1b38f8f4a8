"""Evaluations played in a background thread while training goes on (`resources.eval_overlap`,
`seemrl train --eval-overlap 1`): the same evaluations, metrics and checkpoints as evaluations
that block training, including across a kill and resume with an evaluation still playing."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from algo_checks import gpu, killed_then_resumed
from helpers import TRAIN_PARAMS, train_args, train_dataset

from seemrl.cli import main
from seemrl.training.loop import read_checkpoint
from seemrl.training.resume import ResumeDir

PARAMS = dict(TRAIN_PARAMS, steps=120, checkpoint_every=40, eval_every=40, log_every=20, eval_episodes=2)


def _run(tmp_path: Path, name: str, overlap: int, trainer: str = "td3", resume: Path | None = None,
         params: dict = PARAMS, device: str = "cpu") -> Path:
    out = tmp_path / name
    main(train_args(tmp_path / "data.parquet", out, resume, params=params, seeds="0,1")
         + ["--trainer", trainer, "--eval-overlap", str(overlap), "--device", device])
    return out


def _assert_same(a: Path, b: Path) -> None:
    for table in ("metrics", "evaluations"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{table}.parquet"), pd.read_parquet(b / f"{table}.parquet"),
                                      check_exact=True)
    names = sorted(p.name for p in (a / "checkpoints").glob("*.pt"))
    assert names == sorted(p.name for p in (b / "checkpoints").glob("*.pt")) and names
    for name in names:
        x, y = read_checkpoint(a / "checkpoints" / name), read_checkpoint(b / "checkpoints" / name)
        for key in ("actor", "q1", "q2"):
            assert all(torch.equal(x[key][k], y[key][k]) for k in x[key]), (name, key)
    assert pd.read_parquet(a / "evaluations.parquet").notna().all().all()
    ra, rb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    assert ra["evaluation"]["per_seed"] == rb["evaluation"]["per_seed"]


DIFFQL = dict(time_embed=4, diffusion_steps=10, sample_steps=2, backup_samples=2, eval_samples=3,
              actor_ema_start=10)


@pytest.mark.parametrize("trainer,hidden,extra", [("td3", [256, 256], {}), ("iql", [16, 16], {}),
                                                  ("diffql", [16, 16], DIFFQL)])
def test_overlapped_evaluations_are_the_blocking_ones(tmp_path, trainer, hidden, extra):
    """Diffusion-QL's sampler draws its evaluation noise from generators in its networks: the
    copy played in the background has its own, in the states of that evaluation's step."""
    train_dataset(tmp_path / "data.parquet")
    params = dict(PARAMS, hidden=hidden, **extra)
    blocking = _run(tmp_path, "blocking", 0, trainer, params=params)
    overlapped = _run(tmp_path, "overlapped", 1, trainer, params=params)
    _assert_same(blocking, overlapped)
    steps = pd.read_parquet(overlapped / "evaluations.parquet").step
    assert sorted(set(steps)) == [40, 80, 120] and len(steps) == 6


@pytest.mark.parametrize("trainer,params", [("td3", PARAMS), ("diffql", dict(PARAMS, hidden=[16, 16], **DIFFQL))])
def test_killed_with_an_evaluation_playing_then_resumed_gives_the_uninterrupted_outputs(tmp_path, monkeypatch,
                                                                                       trainer, params):
    train_dataset(tmp_path / "data.parquet")
    reference = _run(tmp_path, "reference", 1, trainer, params=params)
    resume_path = tmp_path / "resume"
    resume = ResumeDir(resume_path, {})
    states = []
    save = ResumeDir.save
    monkeypatch.setattr(ResumeDir, "save", lambda self, state: (states.append(state), save(self, state))[1])
    resumed = killed_then_resumed(monkeypatch, lambda r: _run(tmp_path, "resumed", 1, trainer, resume_path, params),
                                  resume, kill_step=80)
    # the state the run was killed after had the evaluation of step 80 still to collect
    killed = next(s for s in states if s["step"] == 80)
    assert killed["pending_evaluation"]["step"] == 80 and sorted({r["step"] for r in killed["evaluations"]}) == [40]
    _assert_same(reference, resumed)
    # a state saved with an evaluation playing also resumes in a job whose evaluations block
    overlaps = iter([1, 0])
    switched = killed_then_resumed(monkeypatch, lambda r: _run(tmp_path, "switched", next(overlaps), trainer,
                                                               tmp_path / "resume2", params),
                                   ResumeDir(tmp_path / "resume2", {}), kill_step=80)
    _assert_same(reference, switched)


@gpu
def test_diffusion_ql_evaluations_on_the_gpu_in_the_background_are_the_blocking_ones(tmp_path):
    """On CUDA Diffusion-QL's evaluation copy samples on the GPU in a background thread while the
    training step replays its CUDA graph: the same evaluations as blocking ones, bit for bit, since
    both hold the run's matmul precision (TF32) for the whole evaluation."""
    train_dataset(tmp_path / "data.parquet")
    params = dict(PARAMS, hidden=[64, 64, 64], **{**DIFFQL, "eval_samples": 10, "backup_samples": 10})
    blocking = _run(tmp_path, "blocking", 0, "diffql", params=params, device="cuda")
    overlapped = _run(tmp_path, "overlapped", 1, "diffql", params=params, device="cuda")
    pd.testing.assert_frame_equal(pd.read_parquet(blocking / "evaluations.parquet"),
                                  pd.read_parquet(overlapped / "evaluations.parquet"), check_exact=True)
    assert "name" in json.loads((overlapped / "run.json").read_text())["device"]  # the GPU it ran on
