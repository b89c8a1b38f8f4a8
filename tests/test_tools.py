"""tools/: a command run detached (start.sh, wait.sh), a finished run's outputs gathered
(collect_run.sh), the offline environment of carried wheels (offline_env.sh) and the NVIDIA MPS
daemon's start and stop (mps.sh)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def sh(*args, env=None, cwd=None, check=False):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, check=check)


@pytest.fixture
def detached_env(tmp_path):
    return {**os.environ, "DETACHED_DIR": str(tmp_path / "detached")}


def test_a_detached_command_outlives_its_starter_and_reports_its_status(tmp_path, detached_env):
    marker = tmp_path / "done"
    started = sh(TOOLS / "detached/start.sh", "job", "bash", "-c", f"echo working; sleep 2; touch {marker}; exit 7",
                 env=detached_env, check=True)
    assert "started job" in started.stdout
    # the starter has returned; the command still runs
    running = sh(TOOLS / "detached/wait.sh", "job", "0", env=detached_env)
    assert running.returncode == 3 and "still running" in running.stdout and not marker.exists()
    again = sh(TOOLS / "detached/start.sh", "job", "true", env=detached_env)
    assert again.returncode == 1 and "already running" in again.stderr
    ended = sh(TOOLS / "detached/wait.sh", "job", "30", env=detached_env)
    assert ended.returncode == 7, ended.stdout
    assert "working" in ended.stdout and "exit status 7" in ended.stdout and marker.exists()
    folder = tmp_path / "detached/job"
    assert int((folder / "end").read_text()) - int((folder / "start").read_text()) >= 2


def test_waiting_for_a_command_never_started_is_an_error(detached_env):
    r = sh(TOOLS / "detached/wait.sh", "nothing", "1", env=detached_env)
    assert r.returncode == 4 and "never started" in r.stderr


def test_a_finished_detached_command_can_be_started_again(detached_env):
    sh(TOOLS / "detached/start.sh", "twice", "true", env=detached_env, check=True)
    assert sh(TOOLS / "detached/wait.sh", "twice", "30", env=detached_env).returncode == 0
    sh(TOOLS / "detached/start.sh", "twice", "false", env=detached_env, check=True)
    assert sh(TOOLS / "detached/wait.sh", "twice", "30", env=detached_env).returncode == 1


BENCHMARK_TSV = ("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "{s}\t0:00:01\t10\t10\t10\t10\t0\t0\t0\t1.0\n")


def test_collect_run_gathers_the_report_data_cards_and_metadata(tmp_path):
    run = tmp_path / "run"
    files = {"results/report/claims.md": "# claims\n", "results/report/summary.md": "s\n",
             "results/report/totals/evidence.csv": "a,b\n", "results/report/curves/x.png": "png",
             "resources/datasets/ev-x/card.json": '{"n": 1}', "resources/datasets/ev-x/transitions.parquet": "t",
             "resources/generated/evidence/Hopper-v5/training/recipe.json": "{}",
             "resources/generated/evidence/Hopper-v5/training/final.pt": "big",
             "results/benchmarks/train/a.tsv": BENCHMARK_TSV.format(s=2.5),
             "results/benchmarks/seem/b.tsv": BENCHMARK_TSV.format(s=1.5),
             ".snakemake/log/2026-12-07T000000.snakemake.log": "Finished job 0.\n",
             "results/runs/ev-x/1pct/td3bc_ev/ln/run.json": "{}",
             "results/runs/ev-x/1pct/td3bc_ev/ln/seem.parquet": "s",
             "results/runs/ev-x/1pct/td3bc_ev/ln/metrics.parquet": "m",
             "results/runs/ev-x/1pct/td3bc_ev/ln/evaluations.parquet": "e",
             "results/runs/ev-x/1pct/td3bc_ev/ln/checkpoints/step_0000000.pt": "big"}
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "out"
    r = sh(TOOLS / "collect_run.sh", out, "abc123", "config/paper/evidence.yaml", "snakemake --cores all", "99",
           env=env, cwd=run)
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    runs = [f"runs/ev-x/1pct/td3bc_ev/ln/{f}" for f in ("evaluations.parquet", "metrics.parquet", "run.json",
                                                         "seem.parquet")]
    assert got == ["claims.md", "curves/x.png", "environment.json", "jobs.csv", "recipe/Hopper-v5.recipe.json",
                   "recipe/ev-x.card.json", "run.json", "run.md", *runs, "sha256.txt", "snakemake.log", "summary.md",
                   "totals/evidence.csv"]  # no checkpoint, no data
    meta = json.loads((out / "run.json").read_text())
    assert (meta["commit"], meta["wall_seconds"], meta["jobs"]) == ("abc123", 99.0, 2)
    assert {r["rule"] for r in meta["rules"]} == {"train", "seem"}
    assert "resources/datasets/ev-x/transitions.parquet" in (out / "sha256.txt").read_text()


def test_collect_run_needs_its_arguments(tmp_path):
    r = sh(TOOLS / "collect_run.sh", tmp_path / "out", "abc", cwd=tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr


def test_offline_env_never_writes_through_an_old_link_to_the_interpreter(tmp_path):
    """An earlier call's /tmp/site/bin/python was a link to the interpreter: writing the wrapper
    through it overwrote the interpreter. The wrapper must replace the link, never follow it."""
    site = Path("/tmp/site")
    if site.exists():
        pytest.skip("/tmp/site exists on this machine; the test would change it")
    victim = tmp_path / "interpreter"
    victim.write_text("ORIGINAL")
    try:
        (site / "bin").mkdir(parents=True)
        (site / ".seemrl-wheels").touch()  # the wheels count as installed: nothing to install
        (site / "bin/python").symlink_to(victim)
        r = sh("bash", "-c", f". {TOOLS / 'offline_env.sh'} && python -c 'import sys; print(sys.prefix)'",
               cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert victim.read_text() == "ORIGINAL"
        assert not (site / "bin/python").is_symlink() and "exec " in (site / "bin/python").read_text()
    finally:
        subprocess.run(["rm", "-rf", str(site)])


def test_mps_script_says_what_it_cannot_do_without_the_nvidia_binary(tmp_path):
    """tools/mps.sh on a machine without NVIDIA's MPS control binary (this one; on a GPU host it
    started and stopped a daemon, 2026-12-07): start fails naming the binary, stop and status say
    no daemon answers, anything else is a usage error. PATH keeps only the shell's tools."""
    env = {"PATH": "/usr/bin:/bin", "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipes")}
    if shutil.which("nvidia-cuda-mps-control", path=env["PATH"]):
        pytest.skip("NVIDIA's MPS control binary is installed here")
    start = sh(TOOLS / "mps.sh", "start", env=env)
    assert start.returncode == 1 and "nvidia-cuda-mps-control is not installed" in start.stderr
    for cmd in ("stop", "status"):
        r = sh(TOOLS / "mps.sh", cmd, env=env)
        assert r.returncode == 0 and f"no MPS daemon answers in {tmp_path / 'pipes'}" in r.stdout + r.stderr, cmd
    bad = sh(TOOLS / "mps.sh", "restart", env=env)
    assert bad.returncode == 2 and "usage" in bad.stderr
