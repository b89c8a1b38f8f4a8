"""A training job killed with SIGKILL and started again ends with exactly the outputs of a job that
was never stopped; a saved state of a different run is never continued."""
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.algos import td3
from seemrl.cli import main
from seemrl.data.transitions import read_transitions
from seemrl.io import sha256_file
from seemrl.training.draws import OfflineData
from seemrl.training.resume import ResumeDir, checkpoint_paths
from helpers import TRAIN_PARAMS, train_args, train_dataset

ROOT = Path(__file__).resolve().parents[1]
# Hopper-sized (obs 11, act 3) so that the job can evaluate its policies in Hopper-v5.
def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "seemrl", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def _saved_step(resume: Path) -> int | None:
    try:
        return torch.load(resume / "state.pt", weights_only=True)["step"]
    except FileNotFoundError:  # not written yet (or already removed at the end)
        return None


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("metrics.parquet", "evaluations.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)
    names = [p.name for p in checkpoint_paths(a / "checkpoints")]
    assert names == [p.name for p in checkpoint_paths(b / "checkpoints")]
    for name in names:
        ca = torch.load(a / "checkpoints" / name, weights_only=True)
        cb = torch.load(b / "checkpoints" / name, weights_only=True)
        assert ca.keys() == cb.keys()
        for key in ca:
            if isinstance(ca[key], dict) and key != "config":  # a network's tensors
                assert ca[key].keys() == cb[key].keys()
                for k in ca[key]:
                    assert torch.equal(ca[key][k], cb[key][k]), f"{name} {key}.{k}"
            elif isinstance(ca[key], torch.Tensor):
                assert torch.equal(ca[key], cb[key]), f"{name} {key}"
            else:
                assert ca[key] == cb[key], f"{name} {key}"
    run_a, run_b = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert run_a["diverged_step"] == run_b["diverged_step"]
    assert run_a["evaluation"] == run_b["evaluation"]


def test_kill_9_then_restart_gives_the_uninterrupted_outputs(tmp_path):
    data = train_dataset(tmp_path / "data.parquet")
    out, resume = tmp_path / "run", tmp_path / "resume"
    # the same command, never stopped; alongside, to save time
    reference = _start(train_args(data, tmp_path / "reference", tmp_path / "resume-ref"), tmp_path / "reference.log")
    job = _start(train_args(data, out, resume), tmp_path / "killed.log")
    deadline = time.monotonic() + 60
    while (_saved_step(resume) or 0) < TRAIN_PARAMS["checkpoint_every"]:
        assert job.poll() is None, "the job finished before it could be killed; make it longer"
        assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    saved = _saved_step(resume)
    assert saved is not None and saved < TRAIN_PARAMS["steps"]
    assert not (out / "run.json").exists()

    restart = _start(train_args(data, out, resume), tmp_path / "restart.log")
    assert reference.wait(timeout=120) == 0, (tmp_path / "reference.log").read_text()
    assert restart.wait(timeout=120) == 0, (tmp_path / "restart.log").read_text()
    log = (tmp_path / "restart.log").read_text()
    assert f"resuming from step {saved}" in log
    print(f"killed with the state of step {saved} saved")
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == saved
    assert not resume.exists() and not (tmp_path / "resume-ref").exists()  # removed on success
    _assert_same_outputs(tmp_path / "reference", out)


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process: raised right after a state was saved."""


@pytest.mark.parametrize("extra", [
    # policy_delay 7: the step logged after resuming reports an actor loss from before the kill
    dict(policy_delay=7),
    dict(tau=0.005, bc_weight=1.0, optimizer="sgd"),  # EMA targets, SGD
])
def test_train_resumes_bitwise_from_every_saved_state(tmp_path, monkeypatch, extra):
    cfg = td3.TD3Config(steps=30, batch_size=16, hidden=(8, 8), checkpoint_every=10, log_every=5, **extra)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 4)).astype(np.float32)
    arrays = dict(obs=obs, action=rng.uniform(-1, 1, (200, 2)), reward=rng.normal(size=200),
                  next_obs=obs + 0.1, terminal=rng.random(200) < 0.05)

    def run(out: Path, resume: ResumeDir | None):
        data = OfflineData.from_arrays(**arrays, mean=np.zeros(4), std=np.ones(4), device="cpu")
        nets = td3.build_nets(cfg, [0, 1], 4, 2)
        return td3.train(cfg, [0, 1], data, nets, out, log=messages.append, resume=resume)

    messages: list[str] = []
    (tmp_path / "ref").mkdir()
    reference = run(tmp_path / "ref", None)
    save = ResumeDir.save
    for kill_after in (1, 2):  # killed right after the state of step 10, then of step 20
        resume = ResumeDir(tmp_path / f"resume{kill_after}", {"test": kill_after})
        saves = []

        def save_then_die(self, state):
            save(self, state)
            saves.append(state["step"])
            if len(saves) == kill_after:
                raise _Killed

        monkeypatch.setattr(ResumeDir, "save", save_then_die)
        with pytest.raises(_Killed):
            run(tmp_path / f"out{kill_after}", resume)
        monkeypatch.setattr(ResumeDir, "save", save)
        messages.clear()
        result = run(tmp_path / f"out{kill_after}", resume)
        assert f"resuming from step {10 * kill_after}" in " ".join(messages)
        assert result.resumed_from_step == 10 * kill_after
        pd.testing.assert_frame_equal(result.metrics, reference.metrics, check_exact=True)
        assert result.diverged_step == reference.diverged_step
        for p, q in zip(checkpoint_paths(tmp_path / "ref"), checkpoint_paths(tmp_path / f"out{kill_after}"),
                        strict=True):
            a, b = td3.load_checkpoint(p), td3.load_checkpoint(q)
            for name in ("actor", "q1", "q2"):
                for x, y in zip(getattr(a.nets, name).parameters(), getattr(b.nets, name).parameters()):
                    assert torch.equal(x, y), (p.name, name)
    assert reference.metrics.critic_grad_norm.gt(0).all()
    assert not reference.metrics[reference.metrics.step >= 15].actor_loss.isna().any()


@pytest.mark.parametrize("change", ["params", "seeds", "data"])
def test_state_of_a_different_run_is_not_resumed(tmp_path, caplog, change):
    """A finished-but-not-cleaned state of run A sits in the resume dir; run B starts fresh."""
    params = dict(TRAIN_PARAMS, steps=20, checkpoint_every=10, log_every=5, eval_every=0)
    data = train_dataset(tmp_path / "data.parquet")
    resume = tmp_path / "resume"
    cfg = td3.TD3Config(**params)
    t = read_transitions(data)
    arrays = OfflineData.from_arrays(t.obs, t.action, t.reward, t.next_obs, t.terminal,
                                         np.zeros(11), np.ones(11), "cpu")
    td3.train(cfg, [0, 1], arrays, td3.build_nets(cfg, [0, 1], 11, 3), tmp_path / "a", log=lambda m: None,
              resume=ResumeDir(resume, td3.run_identity(cfg, [0, 1], sha256_file(data))))
    assert (resume / "state.pt").exists()

    seeds, needle = "0,1", None
    if change == "params":
        params, needle = dict(params, critic_lr=1e-3), "config.critic_lr: 0.0003 -> 0.001"
    elif change == "seeds":
        seeds, needle = "0,2", "seeds"
    else:
        data, needle = train_dataset(tmp_path / "other.parquet", seed=1), "data_sha256"
    caplog.set_level(logging.INFO, logger="seemrl")
    main(train_args(data, tmp_path / "b", resume, params=params, seeds=seeds))
    assert "not resuming" in caplog.text and needle in caplog.text
    assert "resuming from step" not in caplog.text
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed_from_step"] is None
    assert not resume.exists()
    assert pd.read_parquet(tmp_path / "b" / "evaluations.parquet").empty  # eval_every 0
    assert math.isfinite(pd.read_parquet(tmp_path / "b" / "metrics.parquet").critic_grad_norm.iloc[-1])
