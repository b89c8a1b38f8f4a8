"""DVC round trip of the real pipeline, with the commands of docs/dvc.md: `dvc repro` runs the
workflow (tiny size), `dvc push` stores the outputs in a remote; then the outputs are lost (same
checkout) or were never there (a teammate's fresh clone: no outputs, no DVC cache, no .snakemake
metadata), the restore command pulls them and marks them up to date, `snakemake -n` has nothing
to do and a second `dvc repro` retrains nothing. Every command runs in a temp copy of the project
(a git repo of its own), with HOME and DVC's site cache in temp dirs."""
import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_FILES, TINY, job_counts, project_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's python, snakemake and dvc
DVC = BIN / "dvc"

# What a user runs after `git clone` / `git checkout` (docs/dvc.md, word for word): fetch the
# outputs, check that code, config and outputs are those dvc.lock recorded, then let Snakemake
# record them as up to date (mtimes in DAG order, fresh metadata for every job).
RESTORE = (
    "dvc pull && "
    """test "$(dvc status --json workflow)" = '{"workflow": ["always changed"]}' && """
    "snakemake --cores 1 --touch --forceall"
)

# TINY of test_workflow, smaller still: one training cell (100%, LayerNorm), a small SAC recipe.
CONFIG = copy.deepcopy(TINY)
CONFIG["recipes"]["demo"].update(sac_steps=200, hidden=[32, 32])
CONFIG["algorithms"]["td3_seem"]["eval_episodes"] = 1
CONFIG["experiment"].update(percents=[100], critic_norms=["ln"])

# The tracked files the workflow and DVC need (results/, resources/, .snakemake/ are not among them).
def run(cwd: Path, *cmd: str, env: dict, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {cwd} ({proc.returncode}):\n{proc.output[-6000:]}")
    return proc


def digests(project: Path) -> dict[str, str]:
    """MD5 of every file under results/ and resources/, by path."""
    return {
        str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest()
        for d in ("results", "resources") for p in sorted((project / d).rglob("*")) if p.is_file()
    }


@pytest.fixture
def env(tmp_path):
    """Tools from this venv; HOME, git identity and DVC's site cache in temp dirs."""
    home = tmp_path / "home"
    home.mkdir()
    return dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        HOME=str(home),
        XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(tmp_path / "cache")),
        XDG_CONFIG_HOME=str(home / ".config"),
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
        DVC_NO_ANALYTICS="1",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="seemrl test", GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="seemrl test", GIT_COMMITTER_EMAIL="test@example.org",
    )


def test_restore_command_is_the_documented_one():
    assert RESTORE in (ROOT / "docs" / "dvc.md").read_text()
    assert RESTORE in (ROOT / "dvc.yaml").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not DVC.exists(), reason=f"no dvc beside {sys.executable}")
def test_dvc_round_trip_restored_outputs_are_up_to_date(tmp_path, env):
    remote = tmp_path / "remote"  # the team's remote: here a local folder
    origin = tmp_path / "origin"
    project_copy(origin, PROJECT_FILES, config=CONFIG)
    run(origin, "git", "init", "-q", "-b", "main", env=env)
    run(origin, "git", "add", "-A", env=env)
    run(origin, "git", "commit", "-q", "-m", "project", env=env)
    # where the remote is, per checkout and outside git (.dvc/config.local), as with credentials
    run(origin, "dvc", "remote", "modify", "--local", "local", "url", str(remote), env=env)

    # produce: dvc repro runs the whole workflow, dvc push stores its outputs
    first = run(origin, "dvc", "repro", env=env).output
    assert "localrule train:" in first and "localrule plot_curves:" in first and "localrule claims:" in first
    lock = (origin / "dvc.lock").read_text()
    assert {o["path"] for o in yaml.safe_load(lock)["stages"]["workflow"]["outs"]} == {"resources", "results"}
    run(origin, "git", "add", "dvc.lock", env=env)
    run(origin, "git", "commit", "-q", "-m", "dvc.lock", env=env)
    run(origin, "dvc", "push", env=env)
    produced = digests(origin)
    checkpoints = [p for p in produced if "/checkpoints/step_" in p]
    assert len(checkpoints) == 4  # steps 0, 10, 20, 30
    assert "results/report/summary.csv" in produced

    def restore_and_check(project: Path) -> None:
        run(project, "bash", "-c", RESTORE, env=env)
        assert digests(project) == produced
        dry = run(project, "snakemake", "-n", env=env).output
        assert "Nothing to be done" in dry, dry[-3000:]
        # a second dvc repro: Snakemake decides, and finds nothing to run
        again = run(project, "dvc", "repro", env=env).output
        assert "Nothing to be done" in again and "localrule" not in again, again[-3000:]
        assert digests(project) == produced
        assert (project / "dvc.lock").read_text() == lock
        assert run(project, "git", "status", "--porcelain", env=env).stdout == ""

    # 1. the same checkout loses its outputs and DVC cache (its .snakemake/ metadata stays)
    for name in ("results", "resources", ".dvc/cache"):
        shutil.rmtree(origin / name)
    restore_and_check(origin)

    # 2. a teammate's fresh clone elsewhere: no outputs, no DVC cache, no .snakemake/
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone), env=env)
    run(clone, "dvc", "remote", "modify", "--local", "local", "url", str(remote), env=env)
    assert not (clone / ".snakemake").exists() and not (clone / "results").exists()
    run(clone, "dvc", "pull", env=env)
    assert digests(clone) == produced
    # why the restore step exists: pulled files carry checkout-time mtimes in no DAG order
    assert "Nothing to be done" not in run(clone, "snakemake", "-n", env=env).output
    restore_and_check(clone)

    # the touch recorded Snakemake's metadata for every job: parameters are still tracked
    changed = copy.deepcopy(CONFIG)
    changed["algorithms"]["td3_seem"]["critic_lr"] = 1e-3
    (clone / "config" / "config.yaml").write_text(yaml.safe_dump(changed))
    stale = {"train": 1, "seem": 1, "report_tables": 1, "predictions": 1, "plot_seem_q": 1, "report_scores": 1,
             "plot_curves": 1, "report_totals": 1, "plot_totals": 1, "claims": 1, "plot_growth": 1, "all": 1}
    assert job_counts(run(clone, "snakemake", "-n", env=env).output) == stale
    # and the restore command refuses to mark outputs up to date for a config dvc.lock never saw
    refused = run(clone, "bash", "-c", RESTORE, env=env, check=False)
    assert refused.returncode != 0 and "localrule" not in refused.output
    assert job_counts(run(clone, "snakemake", "-n", env=env).output) == stale
    resized = copy.deepcopy(CONFIG)
    resized["recipes"]["demo"]["sac_steps"] = 201  # even the SAC recipe, which the pull left alone
    (clone / "config" / "config.yaml").write_text(yaml.safe_dump(resized))
    assert job_counts(run(clone, "snakemake", "-n", env=env).output)["recipe_train"] == 1
