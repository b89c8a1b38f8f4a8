"""profiles/slurm: what it sets, how it merges with profiles/default, and a run of this project's
Snakefile through it on a real single-node SLURM (tests/slurm_cluster.py) with four fake GPUs.

The fast tests read the profile and dry-run the workflow with it. The slow one starts slurmctld,
slurmd and munged on 127.0.0.1 under a temp dir (apt-get installing slurm-wlm and munge when they
are missing and we are root; skipped with the reason otherwise), runs a tiny experiment of one
dataset, one X%, one algorithm and four critic normalisations (four concurrent `gpu=1` training
jobs) with `--profile profiles/slurm`, and checks that every job went through sbatch and that the
four training jobs were handed four different GPUs (CUDA_VISIBLE_DEVICES in run.json).
It stops at the training runs (data chain + train, 8 jobs in 5 DAG levels): each level costs
~10-25 s of status polling on top of the work, and SEEM plus the report would double the time.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import job_counts, venv_env
from slurm_cluster import SlurmCluster, ensure_slurm

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
PROFILE = ROOT / "profiles" / "slurm"
PROFILE_CONFIG = yaml.safe_load((PROFILE / "config.yaml").read_text())
WORKFLOW_PROFILE_CONFIG = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
SNAKEMAKE_TIMEOUT_S = 360  # hard limit of the SLURM run (timeout -k 10); it takes ~3 min here

NORMS = ["none", "ln", "ln_noaffine", "wd"]

CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
CONFIG["recipes"]["demo"].update(sac_steps=120, learning_starts=100, snapshot_every=60, eval_episodes=1,
                                 hidden=[32, 32], batch_size=32, n_transitions=400)
CONFIG["algorithms"]["td3_seem"].update(steps=30, batch_size=32, hidden=[32, 32], checkpoint_every=10,
                                        log_every=5, eval_episodes=1)
CONFIG["experiment"].update(datasets=["hopper-demo"], percents=[100], algorithms=["td3_seem"],
                            critic_norms=NORMS)
CONFIG["analysis"]["seem_samples"] = 16
CONFIG["resources"]["device"] = "cpu"  # SLURM hands out fake GPUs; the jobs compute on CPU


def rule_blocks() -> dict[str, str]:
    """{rule name: its text} of every rule in workflow/rules/*.smk."""
    blocks = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):", smk.read_text(), flags=re.M)
        blocks.update(dict(zip(parts[1::2], parts[2::2])))
    return blocks


def partitions_of_profile() -> list[str]:
    """Every slurm_partition the profile names, in order of first use (the first is the default
    partition of the test cluster)."""
    names = [res["slurm_partition"] for res in PROFILE_CONFIG["set-resources"].values() if "slurm_partition" in res]
    return list(dict.fromkeys(names))


def write_workdir(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    for name in ("datasets.yaml", "datasets.lock.json", "paper/paper_results.yaml"):
        (workdir / "config" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "config" / name, workdir / "config" / name)


# ---------------------------------------------------------------------------------------- fast
def test_profile_sets_no_key_that_the_workflow_profile_overrides():
    """profiles/default is loaded too (as the workflow profile) and wins per top-level key, so a
    key set in both would be silently dropped from profiles/slurm (default-resources above all)."""
    assert PROFILE_CONFIG["executor"] == "slurm"
    assert not set(PROFILE_CONFIG) & set(WORKFLOW_PROFILE_CONFIG)
    assert "default-resources" in WORKFLOW_PROFILE_CONFIG  # why the profile uses set-resources


def workflow_rules() -> set[str]:
    """Every rule Snakemake sees (rules made in loops included), less the target-only local rules."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--list-rules"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rules = {m[1] for line in proc.stdout.splitlines() if (m := re.fullmatch(r"(\w+)(?: \(.*\))?", line.strip()))}
    return rules - {"all", "theory"}


def test_profile_gives_every_rule_partition_runtime_and_memory():
    blocks = rule_blocks()
    rules = workflow_rules()
    resources = PROFILE_CONFIG["set-resources"]
    assert set(resources) == rules, "set-resources must list exactly the workflow's rules"
    for rule in rules:
        assert {"slurm_partition", "runtime", "mem_mb"} <= set(resources[rule]), rule
        assert "gpu" not in resources[rule], f"{rule}: GPUs come from the rule's own resources"
    gpu_rules = {r for r, text in blocks.items() if re.search(r"^\s+gpu=1,", text, re.M)}
    assert gpu_rules == {"recipe_train", "train", "train_online", "seem"}
    gpu_partitions = {resources[r]["slurm_partition"] for r in gpu_rules}
    cpu_partitions = {resources[r]["slurm_partition"] for r in rules - gpu_rules}
    assert len(gpu_partitions) == 1 and len(cpu_partitions) == 1 and gpu_partitions != cpu_partitions
    assert resources["train"]["runtime"] > resources["seem"]["runtime"] > resources["report_tables"]["runtime"]
    assert PROFILE_CONFIG["slurm-status-command"] == "squeue"
    assert PROFILE_CONFIG["slurm-init-seconds-before-status-checks"] <= 100  # squeue needs MinJobAge >= 3x


def test_dry_run_merges_both_profiles(tmp_path):
    """What jobs would get: partition, runtime and memory from profiles/slurm, tmpdir from
    profiles/default, gpu=1 from the rule."""
    write_workdir(tmp_path, CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "--profile", str(PROFILE), "-n"],
        capture_output=True, text=True, env=venv_env(), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(rf"Using profiles? {PROFILE} and workflow specific profile \S*profiles/default", out)
    resources = {}
    for rule, line in re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", out, re.M):
        resources.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in line.split(", ")))
    assert job_counts(out)["train"] == len(NORMS) == len(resources["train"])
    train = PROFILE_CONFIG["set-resources"]["train"]
    for res in resources["train"]:
        assert res["tmpdir"] == ".cache/tmp" and res["gpu"] == "1"
        assert res["slurm_partition"] == train["slurm_partition"] and res["runtime"] == str(train["runtime"])
        assert res["mem_mb"] == str(train["mem_mb"])
    subset = PROFILE_CONFIG["set-resources"]["subset"]
    assert resources["subset"][0]["slurm_partition"] == subset["slurm_partition"]
    assert "gpu" not in resources["subset"][0]


def test_missing_slurm_gives_a_reason_to_skip_instead_of_failing(monkeypatch):
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster, "missing_binaries", lambda: ["slurmctld"])
    assert "not installed" in ensure_slurm(install=False)
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert "not root" in ensure_slurm()
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster, "_which", lambda name: None)
    assert "no apt-get" in ensure_slurm()


# ---------------------------------------------------------------------------------------- slow
@pytest.fixture
def slurm_cluster(tmp_path_factory):
    t0 = time.monotonic()
    reason = ensure_slurm(log=print)
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    print(f"SLURM available after {time.monotonic() - t0:.1f} s")
    # a short path: munge's socket must fit in a unix socket address (108 bytes)
    root = tempfile.mkdtemp(prefix="seemrl-slurm-", dir="/tmp" if os.path.isdir("/tmp") else None)
    cluster = SlurmCluster(root, partitions=partitions_of_profile(), gpus=4, cpus=16, mem_mb=128_000)
    try:
        cluster.up()
        print(f"cluster up in {cluster.up_seconds:.2f} s under {root}")
        yield cluster
    finally:
        logs = None
        try:  # SLURM's logs outlive the cluster in pytest's temp dir, for a look after a failure
            logs = tmp_path_factory.mktemp("slurm-logs")
            if cluster.log_dir.exists():
                shutil.copytree(cluster.log_dir, logs, dirs_exist_ok=True)
        finally:
            t1 = time.monotonic()
            notes = cluster.down()  # cancels jobs, stops the daemons by PID file, removes the state dir
            print(f"cluster down in {time.monotonic() - t1:.1f} s: {notes}; logs in {logs}")


@pytest.mark.slow
def test_training_jobs_run_through_sbatch_each_on_its_own_gpu(slurm_cluster, tmp_path):
    cluster = slurm_cluster
    write_workdir(tmp_path, CONFIG)
    targets = [f"results/runs/hopper-demo/100pct/td3_seem/{n}/run.json" for n in NORMS]
    # On top of the profile: keep the SLURM logs of successful jobs (the check below reads them),
    # and poll sooner than the profile's 8 s. The plugin adds 10 s to the interval after every
    # check that finds nothing finished, so a job is seen finished up to ~half its run time late;
    # with 3 s instead of 8 s this run takes ~40 s less.
    cmd = ["timeout", "-k", "10", str(SNAKEMAKE_TIMEOUT_S),
           sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path),
           "--profile", str(PROFILE), "--slurm-keep-successful-logs",
           "--slurm-init-seconds-before-status-checks", "3", *targets]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env(venv_env()), cwd=ROOT,
                          timeout=SNAKEMAKE_TIMEOUT_S + 30)
    print(f"snakemake through SLURM: rc={proc.returncode} in {time.monotonic() - t0:.1f} s")
    out = proc.stdout + proc.stderr
    if proc.returncode in (124, 137):
        pytest.fail(f"snakemake did not finish in {SNAKEMAKE_TIMEOUT_S} s:\n{out[-6000:]}\n{cluster.log_tails()}")
    assert proc.returncode == 0, f"{out[-6000:]}\n{cluster.log_tails()}"

    # every job but `all` went through sbatch: one 'submitted with SLURM jobid' per job
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    by_rule = Counter(re.search(r"/rule_(\w+)/", log)[1] for _, log in submitted)
    expected = job_counts(out)
    expected.pop("all", None)
    assert by_rule == expected == {"recipe_train": 1, "recipe_dataset": 1, "dataset_table": 1, "subset": 1,
                                   "train": len(NORMS)}
    assert "localrule" not in out

    # ... and SLURM ran each to completion in the partition and with the wall time of the profile
    completed = cluster.completed_jobs()
    resources = PROFILE_CONFIG["set-resources"]
    for job_id, log in submitted:
        rule = re.search(r"/rule_(\w+)/", log)[1]
        assert job_id in completed, f"SLURM has no record of job {job_id} ({rule})"
        assert completed[job_id]["JobState"] == "COMPLETED", completed[job_id]
        assert completed[job_id]["Partition"] == resources[rule]["slurm_partition"]
        assert completed[job_id]["TimeLimit"] == str(resources[rule]["runtime"])
        slurm_log = Path(log.replace("%j", job_id))
        assert slurm_log.is_file(), f"no SLURM log {slurm_log}"

    # four concurrent gpu=1 jobs, four different GPUs; the job itself computed on CPU as configured
    visible = {}
    for norm in NORMS:
        run = json.loads((tmp_path / f"results/runs/hopper-demo/100pct/td3_seem/{norm}/run.json").read_text())
        device = run["device"]
        assert device["device"] == "cpu" and device["how"] == "none", device
        visible[norm] = device["cuda_visible_devices"]
    print(f"CUDA_VISIBLE_DEVICES of the training jobs: {visible}")
    assert all(v is not None for v in visible.values()), visible
    assert sorted(visible.values()) == ["0", "1", "2", "3"], visible
