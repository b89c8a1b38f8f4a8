"""The recipe's SAC training is expensive work that a failed job never throws away: its state is
saved outside Snakemake's outputs, a job sent to a device this machine lacks fails before it
touches that state, and the next attempt continues from it to bit for bit the outputs of a run
that was never stopped."""
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, snakemake

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {**TINY["recipes"]["demo"], "sac_steps": 1200, "snapshot_every": 100, "learning_starts": 100}
TARGET = "resources/generated/demo/Hopper-v5/training"
RESUME = "results/resume/recipe/demo/Hopper-v5"


def _config(device: str) -> dict:
    config = copy.deepcopy(TINY)
    config["recipes"]["demo"] = dict(RECIPE)
    config["resources"]["device"] = device
    return config


def _recipe_train(out: Path, resume: Path | None, log: Path, device: str = "cpu", recipe: dict = RECIPE,
                  cpu_threads: int = 2) -> subprocess.Popen:
    """`seemrl recipe-train` as the rule runs it (the training fields of the recipe), the state saved
    at every snapshot, on a machine offering `cpu_threads` threads (OMP_NUM_THREADS)."""
    from seemrl.generate.recipe import RecipeConfig

    training = {k: v for k, v in recipe.items() if k in RecipeConfig.TRAINING_FIELDS}
    args = ["recipe-train", "--env-id", "Hopper-v5", "--recipe", json.dumps(training, sort_keys=True),
            "--out", str(out), "--device", device, "--resume-every-s", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(cpu_threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "seemrl", *args, *(["--resume-dir", str(resume)] if resume else [])],
                                stdout=f, stderr=subprocess.STDOUT, env=env)


def _saved_step(resume: Path) -> int | None:
    try:
        return torch.load(resume / "state.pt", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):  # not there yet, or being replaced
        return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_killed_recipe_then_a_failed_device_job_then_a_resume_gives_the_uninterrupted_recipe(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    resume = work / RESUME
    # the same training, never stopped; alongside, to save time
    reference = _recipe_train(tmp_path / "reference", None, tmp_path / "reference.log")

    # 1. killed (SIGKILL) in the middle of SAC, as a node lost or a job out of wall time
    job = _recipe_train(work / TARGET, resume, tmp_path / "killed.log")
    deadline = time.monotonic() + 120
    while (_saved_step(resume) or 0) < 300:
        assert job.poll() is None, "the recipe finished before it could be killed; make it longer"
        assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    saved = _saved_step(resume)
    assert saved is not None and saved < RECIPE["sac_steps"]
    state = _digest(resume / "state.pt")

    # 2. the workflow, told to run on a GPU this machine lacks: the job fails and the state stays
    if not torch.cuda.is_available():
        proc = snakemake(work, _config("cuda"), TARGET, check=False)
        assert proc.returncode != 0
        log = (work / "results/logs/recipe_train/demo-Hopper-v5.log").read_text()
        assert "torch sees no GPU" in log and "resources.device" in log, log
        assert _digest(resume / "state.pt") == state

    # 3. the workflow on this machine's device: it continues from the saved state, and the device
    # change reruns nothing afterwards
    snakemake(work, _config("auto"), TARGET)
    log = (work / "results/logs/recipe_train/demo-Hopper-v5.log").read_text()
    assert f"resuming from step {saved}" in log, log
    assert not resume.exists()  # removed once the recipe is complete
    assert "Nothing to be done" in snakemake(work, _config("cpu"), TARGET, "-n").stdout

    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    ref, got = tmp_path / "reference", work / TARGET
    report_ref, report_got = (json.loads((d / "recipe.json").read_text()) for d in (ref, got))
    for key in ("expert", "medium", "medium_replay", "snapshots", "levels"):
        assert report_got[key] == report_ref[key], key
    for name in ("expert.pt", "medium.pt"):
        a, b = (torch.load(d / name, weights_only=True)["actor"] for d in (ref, got))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with np.load(ref / "medium_replay.npz") as a, np.load(got / "medium_replay.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_the_recipe_computes_the_same_numbers_whatever_threads_the_machine_offers(tmp_path):
    """torch computes on one thread in every job: a 1-core and a 2-core machine train the same SAC."""
    recipe = {**RECIPE, "sac_steps": 400, "snapshot_every": 200}
    jobs = [_recipe_train(tmp_path / str(n), None, tmp_path / f"{n}.log", recipe=recipe, cpu_threads=n) for n in (1, 2)]
    for n, job in zip((1, 2), jobs):
        assert job.wait(timeout=300) == 0, (tmp_path / f"{n}.log").read_text()
    a, b = (torch.load(tmp_path / str(n) / "expert.pt", weights_only=True)["actor"] for n in (1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with np.load(tmp_path / "1" / "medium_replay.npz") as x, np.load(tmp_path / "2" / "medium_replay.npz") as y:
        assert all(np.array_equal(x[k], y[k]) for k in x.files)
