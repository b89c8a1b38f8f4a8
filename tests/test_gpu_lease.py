"""One GPU per job: concurrent processes lease distinct devices of a fake pool, wait when all are
taken, get a device back when a holder is killed with SIGKILL, and leave the scheduler's choice
alone under SLURM. Runs on a CPU machine: the lease never touches CUDA."""
import os
import signal
import subprocess
import sys
import time

import pytest

from seemrl.training.gpu_lease import DEFAULT_LOCK_DIR, Lease, acquire, lease_device, scheduler_isolated

HOLDER = """
import sys, time
from seemrl.training.gpu_lease import acquire
lease = acquire([0, 1, 2, 3], sys.argv[1], slots_per_gpu=int(sys.argv[2]), poll_s=0.05, log=lambda m: None)
print(lease.index, lease.slot, flush=True)
time.sleep(float(sys.argv[3]))
"""


def _holder(lock_dir, slots=1, hold_s=60.0):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(slots), str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def _read(proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()  # blocks until the holder has its lease
    assert time.monotonic() < deadline and line, "holder printed nothing"
    index, slot = map(int, line.split())
    return index, slot


def test_four_concurrent_jobs_get_four_distinct_gpus_and_a_killed_job_frees_its_gpu(tmp_path):
    holders = [_holder(tmp_path) for _ in range(4)]
    try:
        got = [_read(p) for p in holders]
        assert sorted(i for i, _ in got) == [0, 1, 2, 3] and {s for _, s in got} == {0}
        fifth = _holder(tmp_path)  # every GPU is leased: it waits
        time.sleep(1.0)
        assert fifth.poll() is None
        victim, (victim_gpu, _) = holders[2], got[2]
        os.kill(victim.pid, signal.SIGKILL)  # no clean-up code runs; the kernel drops the flock
        victim.wait()
        assert _read(fifth)[0] == victim_gpu
        holders.append(fifth)
    finally:
        for p in holders:
            p.kill()
            p.wait()


def test_slots_spread_jobs_over_gpus_before_sharing(tmp_path):
    first = [acquire([0, 1], tmp_path, slots_per_gpu=2, log=lambda m: None) for _ in range(4)]
    assert [(l.index, l.slot) for l in first] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    with pytest.raises(TimeoutError, match="no free GPU slot"):
        acquire([0, 1], tmp_path, slots_per_gpu=2, timeout_s=0.2, poll_s=0.05, log=lambda m: None)
    first[1].release()
    again = acquire([0, 1], tmp_path, slots_per_gpu=2, timeout_s=1, log=lambda m: None)
    assert (again.index, again.slot) == (1, 0)


def test_scheduler_isolation_and_plain_devices_need_no_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert scheduler_isolated()
    lease = lease_device("cuda", tmp_path)
    assert (lease.device, lease.how) == ("cuda:0", "scheduler") and lease.record()["cuda_visible_devices"] == "3"
    assert not list(tmp_path.iterdir())  # no lock taken
    monkeypatch.delenv("SLURM_JOB_ID")
    assert not scheduler_isolated()
    assert lease_device("cpu", tmp_path) == Lease("cpu", None, None, "none")
    assert lease_device("cuda:2", tmp_path).index == 2


def test_fake_pool_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("SEEMRL_GPU_POOL", "5,7")
    a, b = lease_device("cuda", tmp_path, log=lambda m: None), lease_device("cuda", tmp_path, log=lambda m: None)
    assert (a.device, b.device) == ("cuda:5", "cuda:7") and a.record()["gpu_index"] == 5
    monkeypatch.setenv("SEEMRL_GPU_POOL", "zero")
    with pytest.raises(ValueError, match="SEEMRL_GPU_POOL"):
        lease_device("cuda", tmp_path)


CHECKOUT_HOLDER = """
import sys, time
from seemrl.cli import build_parser
from seemrl.training.gpu_lease import lease_device
# the lease settings a job of this checkout gets: the CLI's defaults, read from the environment
a = build_parser().parse_args(["seem", "--checkpoints", "c", "--data", "d", "--samples", "2", "--out", "o"])
lease = lease_device("cuda", a.lease_dir, a.gpu_slots, log=lambda m: None)
print(lease.index, a.lease_dir, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("lease_dir", [None, "configured"])
def test_jobs_of_two_checkouts_on_one_host_lease_distinct_gpus(tmp_path, lease_dir):
    """The lease directory belongs to the host (or is configured), not to the checkout a job runs in."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEEMRL_LEASE_DIR", "SLURM_JOB_ID", "SEEMRL_GPU_SLOTS")}
    env["SEEMRL_GPU_POOL"] = "90,91"  # fake GPUs of their own: no real job's lock file is touched
    if lease_dir:
        env["SEEMRL_LEASE_DIR"] = str(tmp_path / lease_dir)
    holders = []
    try:
        for checkout in ("clone-a", "clone-b"):
            (tmp_path / checkout).mkdir()
            holders.append(subprocess.Popen([sys.executable, "-c", CHECKOUT_HOLDER], cwd=tmp_path / checkout, env=env,
                                            stdout=subprocess.PIPE, text=True))
        got = [p.stdout.readline().split() for p in holders]
        assert sorted(int(index) for index, _ in got) == [90, 91]
        expected = str(tmp_path / lease_dir) if lease_dir else DEFAULT_LOCK_DIR
        assert {d for _, d in got} == {expected} and os.path.isabs(expected)
    finally:
        for p in holders:
            p.kill()
            p.wait()
