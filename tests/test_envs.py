"""The pinned environments are what envs/relock.py computes, agree with each other, keep the jobs'
environment lean, and CI can never pull CUDA packages."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ENVS = Path(__file__).resolve().parents[1] / "envs"
FILES = ["requirements-cpu.txt", "requirements-gpu.txt", "requirements-extras.txt", "jobs-cpu.yaml", "jobs-gpu.yaml"]


def _pins(path: Path) -> dict[str, str]:
    if path.suffix == ".yaml":
        env = yaml.safe_load(path.read_text())
        lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.lower().split("==", 1) for line in lines if line and not line.startswith(("#", "-")))


def test_cpu_lock_pins_cpu_torch_and_no_cuda_packages():
    pins = _pins(ENVS / "requirements-cpu.txt")
    assert pins["torch"].endswith("+cpu")
    assert not [name for name in pins if name.startswith(("nvidia-", "triton"))]


def test_gpu_lock_differs_from_cpu_lock_only_in_torch():
    cpu, gpu = _pins(ENVS / "requirements-cpu.txt"), _pins(ENVS / "requirements-gpu.txt")
    assert gpu.pop("torch") == cpu.pop("torch").removesuffix("+cpu")
    assert gpu == cpu


def test_extras_add_to_the_run_lock_without_overlap():
    run, extras = _pins(ENVS / "requirements-cpu.txt"), _pins(ENVS / "requirements-extras.txt")
    assert not set(run) & set(extras)
    assert {"dvc", "pytest", "snakefmt", "tensorboard", "wandb"} <= set(extras)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_job_environments_are_lean_and_pinned_like_the_locks(kind):
    job = _pins(ENVS / f"jobs-{kind}.yaml")
    locked = {**_pins(ENVS / f"requirements-{kind}.txt"), **_pins(ENVS / "requirements-extras.txt")}
    assert {name: locked[name] for name in job} == job
    assert {"torch", "numpy", "gymnasium", "minari", "tensorboard", "wandb"} <= set(job)
    assert not {"snakemake", "dvc", "pytest", "celery", "snakefmt"} & set(job)
    assert job["torch"].endswith("+cpu") == (kind == "cpu")
    assert len(job) < len(locked) / 2


@pytest.mark.skipif(not torch.__version__.endswith("+cpu"), reason="relock reads a venv with the CPU build of torch")
def test_locks_are_what_relock_computes_from_this_venv(tmp_path):
    subprocess.run([sys.executable, str(ENVS / "relock.py"), str(tmp_path)], check=True, capture_output=True)
    for name in FILES:
        assert (tmp_path / name).read_text() == (ENVS / name).read_text(), f"envs/{name} is stale: run envs/relock.py"
