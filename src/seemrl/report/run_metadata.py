"""What ran where, and how long each rule took: the metadata committed beside a run's results.

Every rule has a Snakemake `benchmark:` file (results/benchmarks/..., one per job: wall seconds,
peak memory, CPU seconds). This module sums them per rule and adds the commit, the command, the
GPU and the library versions, so a committed table or figure says what made it.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from seemrl.io import to_markdown, write_json_atomic, write_text_atomic

# per-run rules keep their files under runs/<dataset>/<percent>/<algo>/<norm>/<rule>.tsv
NESTED = {"runs": "{stem}", "online": "{stem}_online"}


def rule_of(rel: Path) -> str:
    """The rule of a benchmark file, from its path under the benchmarks folder."""
    head = rel.parts[0]
    if head in NESTED and len(rel.parts) > 1:
        return NESTED[head].format(stem=rel.stem)
    if len(rel.parts) > 1:
        return head
    return rel.stem


def read_benchmarks(root: str | os.PathLike) -> pd.DataFrame:
    """One row per job: rule, job (the file's path under `root`), seconds, max_rss_mb, cpu_seconds."""
    root = Path(root)
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no Snakemake benchmark files (*.tsv) under {root}")
    rows = []
    for f in files:
        try:
            t = pd.read_csv(f, sep="\t", na_values=["-", "NA"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{f}: not a Snakemake benchmark file ({e})") from e
        missing = {"s", "max_rss", "cpu_time"} - set(t.columns)
        if missing or t.empty:
            raise ValueError(f"{f}: not a Snakemake benchmark file (missing {sorted(missing) or 'rows'})")
        rel = f.relative_to(root)
        rows.append({"rule": rule_of(rel), "job": str(rel.with_suffix("")),
                     "seconds": float(t["s"].iloc[-1]), "max_rss_mb": float(t["max_rss"].iloc[-1]),
                     "cpu_seconds": float(t["cpu_time"].iloc[-1])})
    return pd.DataFrame(rows)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs, total / mean / max wall seconds and peak memory per rule, the costliest rule first."""
    g = jobs.groupby("rule")
    out = pd.DataFrame({"jobs": g.size(), "total_s": g["seconds"].sum(), "mean_s": g["seconds"].mean(),
                        "max_s": g["seconds"].max(), "max_rss_mb": g["max_rss_mb"].max()})
    return out.sort_values("total_s", ascending=False).reset_index()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The host, its GPUs and the versions that compute: python, torch (and its CUDA), snakemake, seemrl."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
            **{dist: _version(dist) for dist in ("snakemake", "gymnasium", "mujoco", "seemrl")}}


def write_run_metadata(benchmarks: str | os.PathLike, out_json: str | os.PathLike, out_markdown: str | os.PathLike,
                       *, commit: str, command: str, config: str, wall_seconds: float | None = None,
                       jobs_csv: str | os.PathLike | None = None, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run's metadata (JSON, Markdown) and optionally every job's row (CSV); returns the JSON.
    `env`: the run host's `environment()`, recorded there, when this is written on another host."""
    jobs = read_benchmarks(benchmarks)
    rules = per_rule(jobs)
    if env is not None and set(env) != set(environment()):
        raise ValueError(f"the run host's environment must have the keys {sorted(environment())}, got {sorted(env)}")
    meta = {"commit": commit, "command": command, "config": config, "wall_seconds": wall_seconds,
            "environment": environment() if env is None else env, "jobs": int(len(jobs)),
            "job_seconds": float(jobs["seconds"].sum()), "rules": rules.to_dict(orient="records")}
    env = meta["environment"]
    lines = [f"- commit: `{commit}`", f"- command: `{command}`", f"- config: `{config}`",
             f"- GPU: {', '.join(env['gpus']) or 'none'}; {env['cpus']} CPU cores; torch {env['torch']}"
             f" (CUDA {env['cuda']}), snakemake {env['snakemake']}, python {env['python']}",
             f"- wall time: {'%.0f s' % wall_seconds if wall_seconds is not None else 'not given'};"
             f" {len(jobs)} jobs, {meta['job_seconds']:.0f} s of job time summed (jobs overlap)",
             "", "Wall time per rule (Snakemake `benchmark:` files):", "", to_markdown(rules, "{:.4g}")]
    if jobs_csv is not None:
        write_text_atomic(jobs_csv, jobs.to_csv(index=False))
    write_json_atomic(out_json, meta)
    write_text_atomic(out_markdown, "\n".join(lines) + "\n")
    return meta
