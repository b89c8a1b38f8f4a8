"""`python -m seemrl status`: the training jobs of a workflow, as their progress files tell it.

Every training job (train, train_online, recipe_train) rewrites a progress file while it runs
(`seemrl.training.tracking.Monitor`); this reads them all under a project's results/ and prints one line
per job: its state, step of total, steps/s, ETA, and the latest mean Q and evaluation over its
seeds. A job whose file says "running" but whose process is gone (killed, node lost) shows as
"stopped"; one on another host, whose process cannot be checked, shows its file's age.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

STATES = ("running", "stopped", "failed", "done")


def progress_files(root: str | os.PathLike) -> list[Path]:
    results = Path(root) / "results"
    return sorted({*results.glob("**/progress.json"), *results.glob("**/*.progress.json")})


def _alive(pid: int) -> bool:
    """Whether `pid` on this host is still a running seemrl process (not a reused pid, not a
    killed job its parent has yet to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z":
            return False
        return b"seemrl" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to ask: trust the signal


def read_jobs(root: str | os.PathLike, now: float | None = None) -> list[dict[str, Any]]:
    """One dict per progress file: its contents, `state` corrected for dead processes, `age_s`, `path`."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    jobs = []
    for path in progress_files(root):
        try:
            job = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced (written atomically, so only a foreign file lands here)
        if job.get("format") != "seemrl.progress.v1":
            continue
        if job["state"] == "running" and job.get("host") == host and not _alive(int(job["pid"])):
            job["state"] = "stopped"
        job["age_s"], job["path"] = now - job["updated"], str(path)
        jobs.append(job)
    return jobs


def _mean(values) -> float | None:
    finite = [v for v in values or [] if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _number(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def table(jobs: list[dict[str, Any]]) -> str:
    """The jobs as a fixed-width table, running first."""
    header = ["job", "run", "state", "step", "%", "steps/s", "ETA", "Q mean", "score", "updated"]
    rows = []
    for job in sorted(jobs, key=lambda j: (STATES.index(j["state"]) if j["state"] in STATES else 9, j["name"])):
        latest = job.get("latest", {})
        score = _mean(latest.get("eval_normalized_score")) if _mean(latest.get("eval_normalized_score")) is not None \
            else _mean(latest.get("eval_return_mean"))
        q = _mean(latest.get("q_mean") or latest.get("q1_mean") or latest.get("episode_return"))
        rate = job.get("steps_per_second")
        rows.append([job["job"], job["name"], job["state"], f"{job['step']}/{job['total']}",
                     f"{100 * job['step'] / job['total']:.0f}" if job["total"] else "-",
                     _number(rate, ".0f"), _duration(job.get("eta_s")) if job["state"] == "running" else "-",
                     _number(q), _number(score), f"{_duration(job['age_s'])} ago"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def main(root: str = ".", all_jobs: bool = False, watch: float = 0.0) -> None:
    while True:
        jobs = read_jobs(root)
        shown = jobs if all_jobs else [j for j in jobs if j["state"] != "done"]
        counts = {s: sum(j["state"] == s for j in jobs) for s in STATES}
        text = (table(shown) if shown else "no training job is running") + "\n" + \
            ", ".join(f"{n} {s}" for s, n in counts.items()) + f"  ({len(jobs)} progress files under {root}/results)"
        if watch:
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + text, flush=True)
            time.sleep(watch)
        else:
            print(text)
            return
