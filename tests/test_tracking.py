"""Tracking and the live view: a training job writes TensorBoard event files and offline W&B runs
with every logged metric and evaluation when the workflow's `tracking:` says so (read back here),
keeps a progress file, and `seemrl status` shows running, stopped and finished jobs from them."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TRAIN_PARAMS, train_args, train_dataset

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
                **extra)


def _train(tmp_path: Path, params: dict, tracking: dict | None = None, **popen) -> subprocess.Popen:
    """`seemrl train` as the workflow runs it: in the project directory, tracking from the environment."""
    data = tmp_path / "data.parquet"
    if not data.exists():
        train_dataset(data)
    args = train_args(data, tmp_path / "results/run", None, params=params)
    args += ["--label", "dataset=tiny", "--label", "percent=100", "--label", "algo=td3", "--label", "critic_norm=none",
             "--progress", str(tmp_path / "results/run/progress.json")]
    env = _env(SEEMRL_TRACKING=json.dumps(tracking or {}))
    return subprocess.Popen([sys.executable, "-m", "seemrl", *args], cwd=tmp_path, env=env, **popen)


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows ({key: value, "_step": n}) of an offline W&B run file (LevelDB-style log of
    protobuf records: 7-byte header, then per fragment crc32, length, type, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buffer, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a fragment header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(buffer)
            buffer = b""
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                rows.append(row)
    return rows


def test_tensorboard_and_offline_wandb_get_every_metric_and_evaluation(tmp_path):
    tracking = {"tensorboard": True, "wandb": True, "wandb_mode": "offline", "wandb_project": "seemrl-test"}
    proc = _train(tmp_path, TRAIN_PARAMS, tracking, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    metrics = pd.read_parquet(tmp_path / "results/run/metrics.parquet")
    evaluations = pd.read_parquet(tmp_path / "results/run/evaluations.parquet")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for seed in (0, 1):
        events = EventAccumulator(str(tmp_path / f"results/tensorboard/tiny/100pct/td3/none/seed_{seed}")).Reload()
        mine = metrics[metrics.seed == seed]
        for key in ("critic_loss", "q_mean", "critic_param_norm"):
            scalars = events.Scalars(f"train/{key}")
            assert [s.step for s in scalars] == mine.step.tolist()
            assert [s.value for s in scalars] == pytest.approx(mine[key].tolist(), rel=1e-6)
        ev = evaluations[evaluations.seed == seed]
        scalars = events.Scalars("eval/return_mean")
        assert [s.step for s in scalars] == ev.step.tolist() == [100, 200, 300, 400]
        assert [s.value for s in scalars] == pytest.approx(ev.return_mean.tolist(), rel=1e-6)

    runs = sorted((tmp_path / "results/wandb/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2  # one W&B run per seed
    seen = set()
    for run_file in runs:
        rows = wandb_history(run_file)
        train = [r for r in rows if "train/q_mean" in r]
        seed = next(s for s in (0, 1) if metrics[metrics.seed == s].q_mean.tolist() == pytest.approx(
            [r["train/q_mean"] for r in train], rel=1e-6))
        seen.add(seed)
        assert [r["_step"] for r in train] == metrics[metrics.seed == seed].step.tolist()
        assert [r["eval/return_mean"] for r in rows if "eval/return_mean" in r] == pytest.approx(
            evaluations[evaluations.seed == seed].return_mean.tolist(), rel=1e-9)
        # evaluations (played in the background by default) carry their own step
        assert [r["eval/step"] for r in rows if "eval/return_mean" in r] == [100, 200, 300, 400]
    assert seen == {0, 1}

    progress = json.loads((tmp_path / "results/run/progress.json").read_text())
    assert progress["state"] == "done" and progress["step"] == progress["total"] == TRAIN_PARAMS["steps"]
    assert progress["name"] == "tiny/100pct/td3/none" and progress["seeds"] == [0, 1]


def test_tracking_off_writes_no_event_files(tmp_path):
    proc = _train(tmp_path, {**TRAIN_PARAMS, "steps": 20, "eval_every": 0}, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == 0
    assert not (tmp_path / "results/tensorboard").exists() and not (tmp_path / "results/wandb").exists()
    assert json.loads((tmp_path / "results/run/progress.json").read_text())["state"] == "done"


def _status(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "seemrl", "status", "--root", str(root), *args], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _line(text: str, run: str) -> list[str]:
    return next(line for line in text.splitlines() if run in line).split()


def test_status_shows_a_running_job_then_a_stopped_one_then_a_finished_one(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    # a long job: logs often, no evaluation; killed once it has reported progress
    long_job = {**TRAIN_PARAMS, "steps": 200_000, "log_every": 10, "eval_every": 0, "checkpoint_every": 100_000}
    job = _train(work, long_job,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        progress = work / "results/run/progress.json"
        deadline = time.monotonic() + 120
        while not progress.exists() or not json.loads(progress.read_text())["step"]:
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        text = _status(work)
        job_, run, state, step, percent, rate, eta, q, *_ = _line(text, "tiny/100pct/td3/none")
        assert (job_, state) == ("train", "running") and step.endswith("/200000")
        assert float(rate) > 0 and ":" in eta and q != "-"
        assert "1 running" in text
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert _line(_status(work), "tiny/100pct/td3/none")[2] == "stopped"

    done = _train(work, {**TRAIN_PARAMS, "steps": 20, "eval_every": 20}, stdout=subprocess.DEVNULL)
    assert done.wait(timeout=300) == 0
    assert "no training job is running" in _status(work)
    line = _line(_status(work, "--all"), "tiny/100pct/td3/none")
    assert line[2:4] == ["done", "20/20"] and line[8] != "-"  # the evaluation's score
