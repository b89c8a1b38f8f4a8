"""The pinned environments agree with each other, and CI can never pull CUDA packages."""
from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parents[1] / "envs"


def _pins(path: Path) -> dict[str, str]:
    lines = [l.strip() for l in path.read_text().splitlines()]
    return dict(l.split("==", 1) for l in lines if l and not l.startswith(("#", "-")))


def test_cpu_lock_pins_cpu_torch_and_no_cuda_packages():
    pins = _pins(ENVS / "requirements-cpu.txt")
    assert pins["torch"].endswith("+cpu")
    assert not [name for name in pins if name.startswith(("nvidia-", "triton"))]


def test_gpu_lock_differs_from_cpu_lock_only_in_torch():
    cpu, gpu = _pins(ENVS / "requirements-cpu.txt"), _pins(ENVS / "requirements-gpu.txt")
    assert gpu.pop("torch") == cpu.pop("torch").removesuffix("+cpu")
    assert gpu == cpu


def test_conda_env_pins_the_cpu_lock():
    env = yaml.safe_load((ENVS / "seemrl.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = dict(p.split("==", 1) for p in pip if "==" in p)
    assert conda_pins == _pins(ENVS / "requirements-cpu.txt")
