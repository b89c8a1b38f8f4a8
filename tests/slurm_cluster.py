"""A real single-node SLURM cluster on 127.0.0.1 for tests (mode A: no slurmdbd).

Follows the tested recipe (recipes/slurm-local.md in the shared notes): munged on a private
socket, slurmctld and slurmd as root with every file under one state directory, fake GPUs that are
symlinks to /dev/null (gres.conf needs character devices), an `srun` wrapper first on PATH that
re-exports SLURM_CONF (the jobstep plugin strips SLURM_* before its nested srun), CPUs and memory
overridden so a 2-core box runs several jobs at once. Ports are picked free at start, so two
clusters (or a system SLURM) on one machine do not collide.

    reason = ensure_slurm()                  # None, or why SLURM can't be had (then skip)
    cluster = SlurmCluster(state_dir, partitions=["cpu", "gpu"], gpus=4)
    env = cluster.up()                       # environment for sbatch/squeue/snakemake
    ...
    cluster.down()                           # always, even after a failure (kills by PID file)

Every process the cluster starts carries SEEMRL_SLURM_TEST=<state dir> in its environment, and so
do the jobs (sbatch --export=ALL of the submitting environment). `down()` first cancels the jobs,
then stops the daemons by their PID files, then ends any process still carrying that marker
(leftover slurmstepd or job processes), each by its PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun")
PACKAGES = ("slurm-wlm", "munge")
MARKER = "SEEMRL_SLURM_TEST"


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SBIN_PATH]))


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def ensure_slurm(install: bool = True, timeout_s: int = 900, log=print) -> str | None:
    """None when SLURM and munge are installed (installing them with apt-get when missing, we are
    root and `install`), else the reason they can't be had."""
    missing = missing_binaries()
    if not missing:
        return None
    if not install:
        return f"SLURM is not installed (missing {missing})"
    if os.geteuid() != 0:
        return f"SLURM is not installed (missing {missing}) and we are not root to apt-get it"
    if _which("apt-get") is None:
        return f"SLURM is not installed (missing {missing}) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]  # wait for another apt instead of failing at once
    t0 = time.monotonic()
    for cmd in (["apt-get", *lock, "update", "-qq"],
                ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(cmd)}` failed: {exc}"
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed (rc={proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}"
    log(f"installed {' '.join(PACKAGES)} with apt-get in {time.monotonic() - t0:.1f} s")
    missing = missing_binaries()
    return f"apt-get installed {PACKAGES} but {missing} are still missing" if missing else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _stop(pid: int, wait_s: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL."""
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


class SlurmCluster:
    """One node (`localhost`, 127.0.0.1) in every partition of `partitions` (the first is the
    default), `gpus` fake GPUs, `cpus` CPUs and `mem_mb` of memory as SLURM sees them."""

    def __init__(self, root: str | os.PathLike, partitions=("debug",), gpus: int = 4, cpus: int = 16,
                 mem_mb: int = 128_000):
        self.root = Path(root).resolve()
        self.partitions = list(dict.fromkeys(partitions))
        self.gpus, self.cpus, self.mem_mb = gpus, cpus, mem_mb
        self.conf = self.root / "etc" / "slurm.conf"
        self.bin = self.root / "bin"
        self.log_dir = self.root / "log"
        self.jobcomp = self.log_dir / "jobcomp.txt"
        self.started = False

    # ------------------------------------------------------------------ environment
    def env(self, base: dict | None = None) -> dict:
        """`base` (default os.environ) with SLURM_CONF, the srun wrapper and sbin on PATH, and the
        marker that lets `down()` find leftover processes."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", ""), SBIN_PATH])
        env[MARKER] = str(self.root)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    # ------------------------------------------------------------------ up
    def up(self, timeout_s: float = 60) -> dict:
        t0 = time.monotonic()
        p = self.root
        for d in ("munge", "etc", "state", "spool", "log", "run", "fakedev", "bin"):
            (p / d).mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o755)  # e.g. a mkdtemp directory (0700): munged needs o+x on the way to its socket
        os.chmod(p / "munge", 0o755)  # munged refuses a socket directory without o+x
        key = p / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        sock = p / "munge" / "munge.sock"
        if len(str(sock)) > 100:  # sun_path is 108 bytes
            raise ValueError(f"state directory too long for a unix socket: {sock}")
        for i in range(self.gpus):  # fake GPUs: gres needs character devices
            dev = p / "fakedev" / f"nvidia{i}"
            if dev.is_symlink() or dev.exists():
                dev.unlink()
            dev.symlink_to("/dev/null")
        ctld_port, slurmd_port = _free_port(), _free_port()
        while slurmd_port == ctld_port:
            slurmd_port = _free_port()
        default = self.partitions[0]
        partitions = "\n".join(
            f"PartitionName={name} Nodes=ALL Default={'YES' if name == default else 'NO'} "
            "MaxTime=INFINITE State=UP" for name in self.partitions)
        gres = f"Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(f"""\
ClusterName=seemrltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={p}/state
SlurmdSpoolDir={p}/spool
SlurmctldPidFile={p}/run/slurmctld.pid
SlurmdPidFile={p}/run/slurmd.pid
SlurmctldLogFile={p}/log/slurmctld.log
SlurmdLogFile={p}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} {gres} State=UNKNOWN
{partitions}
""")
        (p / "etc" / "gres.conf").write_text(
            "AutoDetect=off\n"
            + (f"NodeName=localhost Name=gpu File={p}/fakedev/nvidia[0-{self.gpus - 1}]\n" if self.gpus else ""))
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={self.conf}\nexec {_which("srun")} "$@"\n')
        srun.chmod(0o755)

        self.started = True  # from here on, down() has something to stop
        for cmd in ([_which("munged"), f"--key-file={key}", f"--socket={sock}", f"--pid-file={p}/munge/munged.pid",
                     f"--log-file={p}/munge/munged.log", f"--seed-file={p}/munge/munged.seed"],
                    [_which("slurmctld"), "-i"],  # -i: ignore (empty) saved state
                    [_which("slurmd"), "-N", "localhost"]):
            proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:  # each daemonizes; a non-zero exit means it did not start
                raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}): {proc.stdout}{proc.stderr}\n"
                                   f"{self.log_tails()}")
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-n", "localhost", "-o", "%t", check=False)
            state = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else proc.stderr.strip()
            if state == "idle":
                self.up_seconds = time.monotonic() - t0
                return self.env()
            time.sleep(0.25)
        raise RuntimeError(f"SLURM node not idle after {timeout_s} s (state {state!r}):\n{self.log_tails()}")

    # ------------------------------------------------------------------ inspection
    def log_tails(self, n: int = 30) -> str:
        out = []
        for f in (self.root / "munge" / "munged.log", self.log_dir / "slurmctld.log", self.log_dir / "slurmd.log"):
            if f.exists():
                out.append(f"--- {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def completed_jobs(self) -> dict[str, dict[str, str]]:
        """SLURM's own record of finished jobs (jobcomp/filetxt): {job id: {field: value}}."""
        jobs = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if "JobId" in fields:
                    jobs[fields["JobId"]] = fields
        return jobs

    # ------------------------------------------------------------------ down
    def _pid(self, path: Path) -> int | None:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def down(self, remove: bool = True) -> list[str]:
        """Cancel jobs, stop the daemons by PID file, end leftovers carrying the marker; returns
        what it did, for the test log. Safe to call more than once and after a failed `up`."""
        notes = []
        if not self.started:
            return notes
        p = self.root
        ctld = self._pid(p / "run" / "slurmctld.pid")
        if ctld and _alive(ctld):
            try:
                ids = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15).stdout.split()
                if ids:
                    notes.append(f"cancelling jobs {ids}")
                    self.run("scancel", *ids, check=False, timeout=15)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and self.run(
                            "squeue", "-h", "-o", "%i", check=False, timeout=15).stdout.split():
                        time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError) as exc:
                notes.append(f"could not cancel jobs: {exc}")
        for name, pidfile in (("slurmd", p / "run" / "slurmd.pid"), ("slurmctld", p / "run" / "slurmctld.pid"),
                              ("munged", p / "munge" / "munged.pid")):
            pid = self._pid(pidfile)
            if pid and _alive(pid):
                _stop(pid)
                notes.append(f"stopped {name} (pid {pid})" + (" - STILL ALIVE" if _alive(pid) else ""))
        # leftovers: slurmstepd and job processes inherit the marker through their environment
        needle = f"{MARKER}={self.root}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _environ_has(int(entry.name), needle):
                pid = int(entry.name)
                if _alive(pid):
                    _stop(pid, wait_s=3.0)
                    notes.append(f"stopped leftover pid {pid}")
        self.started = False
        if remove:
            shutil.rmtree(p, ignore_errors=True)
        return notes
