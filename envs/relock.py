"""Regenerate the pinned environments from a working venv: `.venv/bin/python envs/relock.py`.

The venv must hold the CPU build of torch and every extra (`make test` installs them). Each lock
is the dependency closure, read from the installed packages' metadata, of a part of
pyproject.toml, pinned at the installed versions:

  requirements-cpu.txt     the jobs' needs + the workflow extra (Snakemake, its SLURM plugin):
                           what `make run` installs (torch+cpu, installed first by install.sh)
  requirements-gpu.txt     the same with PyPI's CUDA build of torch
  requirements-extras.txt  the tracking, dvc and test extras, less what the above already pin:
                           what `make test` adds
  jobs-cpu.yaml            conda env of the rules that compute on the CPU (`--sdm conda`): the
                           jobs' needs and the tracking extra only, no Snakemake, DVC or pytest
  jobs-gpu.yaml            the same for the rules that may use a GPU, with the CUDA build of torch
"""
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENVS = Path(__file__).resolve().parent
PROJECT = tomllib.loads((ENVS.parent / "pyproject.toml").read_text())["project"]


def closure(requirements: list[str]) -> dict[str, str]:
    """name -> pinned 'Name==version' of every installed distribution the requirements reach."""
    pins, seen, todo = {}, set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        dist = metadata.distribution(req.name)
        pins[name] = f"{dist.metadata['Name']}=={dist.version}"
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(dep)
    return pins


def extra(name: str) -> list[str]:
    return PROJECT["optional-dependencies"][name]


def lines(pins: dict[str, str]) -> str:
    return "\n".join(sorted(pins.values(), key=str.lower)) + "\n"


def main(out: Path = ENVS) -> None:
    jobs = closure(PROJECT["dependencies"])
    torch = jobs["torch"]
    if not torch.endswith("+cpu"):
        sys.exit(f"relock needs the CPU build of torch in the venv, found {torch}")
    gpu = lambda pins: {k: v.removesuffix("+cpu") for k, v in pins.items()}  # noqa: E731
    run = closure(PROJECT["dependencies"] + extra("workflow"))
    extras = {k: v for k, v in closure(extra("tracking") + extra("dvc") + extra("test")).items() if k not in run}
    job_env = closure(PROJECT["dependencies"] + extra("tracking"))

    (out / "requirements-cpu.txt").write_text(
        "# The jobs' needs and the workflow (envs/relock.py). Installed by envs/install.sh, which\n"
        "# installs torch+cpu first from a local wheel or PyTorch's CPU index.\n" + lines(run))
    (out / "requirements-gpu.txt").write_text(
        "# requirements-cpu.txt with the CUDA build of torch (PyPI's Linux wheel, which brings its own\n"
        "# pinned nvidia-* runtime packages) (envs/relock.py).\n" + lines(gpu(run)))
    (out / "requirements-extras.txt").write_text(
        "# The tracking, dvc and test extras beyond requirements-*.txt: what `make test` adds (envs/relock.py).\n"
        + lines(extras))
    for kind, pins, index in (("cpu", job_env, "      - --extra-index-url https://download.pytorch.org/whl/cpu\n"),
                              ("gpu", gpu(job_env), "")):
        (out / f"jobs-{kind}.yaml").write_text(
            f"# Conda env of the rules that {'compute on the CPU' if kind == 'cpu' else 'may use a GPU'} "
            "(`snakemake --sdm conda`): what the jobs run\n"
            "# and the tracking extra, nothing else (envs/relock.py; tests/test_envs.py checks it against the locks).\n"
            f"name: seemrl-jobs-{kind}\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
            + index + "".join(f"      - {p}\n" for p in sorted(pins.values(), key=str.lower)))
    print(f"pins: {len(run)} run (of which {len(jobs)} jobs), {len(extras)} extras, {len(job_env)} job env")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ENVS)
