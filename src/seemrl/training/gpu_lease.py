"""One GPU per job: a device lease held for the life of the job process.

Snakemake's `resources: gpu=1` caps how many GPU jobs run at once but never tells a job which GPU
to use. A job therefore takes an exclusive `flock` on one lock file per (GPU, slot) in a
directory shared by every job of the machine, and keeps it until it exits; the kernel drops the
lock on any exit, `kill -9` included, so a crashed job never strands a GPU.
`docs/engine.md` covers slots and CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_LOCK_DIR = "/tmp/seemrl-gpu-leases"


@dataclass
class Lease:
    """A held device: `index` in the machine's numbering (None when the scheduler isolated the
    job's devices), the torch device string, and how it was obtained."""

    device: str
    index: int | None
    slot: int | None
    how: str  # "lease", "scheduler" or "none"
    lock_path: str | None = None
    _fd: int | None = field(default=None, repr=False)

    def record(self) -> dict:
        """What run.json keeps about the device."""
        return {"device": self.device, "gpu_index": self.index, "slot": self.slot, "how": self.how,
                "lock": self.lock_path, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None


def scheduler_isolated(env: dict | None = None) -> bool:
    """Whether a scheduler already gave this job its own devices (SLURM with GPUs)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("CUDA_VISIBLE_DEVICES"))


def gpu_pool(env: dict | None = None) -> list[int]:
    env = os.environ if env is None else env
    if env.get("SEEMRL_GPU_POOL"):
        try:
            return [int(i) for i in env["SEEMRL_GPU_POOL"].split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"SEEMRL_GPU_POOL must list GPU indices like '0,1,2', got {env['SEEMRL_GPU_POOL']!r}")
    import torch

    return list(range(torch.cuda.device_count()))


def _shared_dir(path: Path) -> None:
    """Create the lock directory for every user of the host (mode 1777, as /tmp) if missing."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # created by another user meanwhile
        path.chmod(0o1777)


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None if another process holds it."""
    _shared_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):  # another user's lock file: theirs to mode
        os.fchmod(fd, 0o666)  # past the umask: other users' jobs must lock it too
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people reading the directory
    return fd


def acquire(pool: Sequence[int], lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, slots_per_gpu: int = 1,
            timeout_s: float = 3600.0, poll_s: float = 0.5, log: Callable[[str], None] = print) -> Lease:
    """Lease the first free (GPU, slot) of `pool`, GPUs first so jobs spread over devices before
    they share one; wait (polling) while all are taken, up to `timeout_s`."""
    if slots_per_gpu < 1:
        raise ValueError(f"slots_per_gpu must be >= 1, got {slots_per_gpu}")
    if not pool:
        raise ValueError("no GPU to lease: the pool is empty")
    lock_dir = Path(lock_dir)
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        for slot in range(slots_per_gpu):
            for index in pool:
                path = lock_dir / f"gpu{index}.slot{slot}.lock"
                fd = try_lock(path)
                if fd is not None:
                    return Lease(f"cuda:{index}", index, slot, "lease", str(path), fd)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot in {lock_dir} after {timeout_s:.0f} s (pool {list(pool)}, "
                               f"{slots_per_gpu} slot(s) each): run fewer GPU jobs than GPUs x slots")
        if not waited:
            log(f"all {len(pool) * slots_per_gpu} GPU slots are leased; waiting for one ({lock_dir})")
            waited = True
        time.sleep(poll_s)


def lease_device(device: str, lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, slots_per_gpu: int = 1,
                 log: Callable[[str], None] = print) -> Lease:
    """The device a job should use for `device` ('cpu', 'cuda', 'cuda:N' or 'auto' already resolved):
    'cuda' gets a leased GPU (or the scheduler's), explicit 'cuda:N' and 'cpu' are kept as given."""
    if device != "cuda":
        return Lease(device, int(device.split(":")[1]) if device.startswith("cuda:") else None, None, "none")
    if scheduler_isolated():
        return Lease("cuda:0", None, None, "scheduler")
    lease = acquire(gpu_pool(), lock_dir, slots_per_gpu, log=log)
    log(f"leased GPU {lease.index} (slot {lease.slot}) via {lease.lock_path}")
    return lease
