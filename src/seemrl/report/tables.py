"""The report's tables: per-seed scores, the SEEM summary, the paper's tables with its numbers
beside ours, and totals over tasks (paper Fig. 8/9 and 12).

A cell is (dataset, subset percent, algorithm, critic option), all its seeds. A table's column or
a figure's line selects cells (glob patterns over algorithm, critic option and dataset; percents).
Scores are D4RL normalised scores per seed: final, mean of the last 10 evaluations (the paper's
metric) and best. Every file is written atomically: an interrupted report leaves no partial file.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import pandas as pd

from seemrl.analysis.seem import DEFAULT_Q_BOUND, divergence_verdict
from seemrl.io import format_value, atomic_path, to_markdown, write_text_atomic

CELL_COLUMNS = ("dataset", "percent", "algo", "critic_norm")
# Per-seed summaries averaged over the seeds of a cell.
AGGREGATED = ("final_seem", "max_seem", "final_seem_normalized", "final_q_data_mean", "final_critic_param_norm")


# Per-seed policy evaluation summaries (run.json), D4RL-normalised scores and raw returns.
SCORE_COLUMNS = ("final_score", "last10_score", "best_score", "final_return")


# ------------------------------------------------------------------ tables
def evaluation_rows(labels: dict, evaluation: dict | None) -> list[dict]:
    """Rows (cell labels, seed, SCORE_COLUMNS) from one run.json's `evaluation`; none if the run
    was not evaluated."""
    if not evaluation:
        return []
    return [{**labels, "seed": int(seed), **{k: summary.get(k) for k in SCORE_COLUMNS}}
            for seed, summary in evaluation["per_seed"].items()]


def seed_table(seem_frames: Sequence[pd.DataFrame], q_bound: float = DEFAULT_Q_BOUND,
               cell_columns: Sequence[str] = CELL_COLUMNS, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, seed): `divergence_verdict` columns, then evaluation `scores` if given."""
    df = pd.concat(list(seem_frames), ignore_index=True)
    missing = [c for c in (*cell_columns, "seed") if c not in df.columns]
    if missing:
        raise KeyError(f"SEEM frames lack identifying columns {missing}")
    table = divergence_verdict(df, q_bound=q_bound, by=(*cell_columns, "seed"))
    if scores is not None and len(scores):
        table = table.merge(scores, on=[*cell_columns, "seed"], how="left", validate="one_to_one")
    return table


def summary_table(seem_frames: Sequence[pd.DataFrame], q_bound: float = DEFAULT_Q_BOUND,
                  cell_columns: Sequence[str] = CELL_COLUMNS, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: seeds diverged / total and mean, std over seeds of the per-seed summaries.

    Means and stds are over the seeds where the value is finite (a diverged seed has NaN SEEM);
    `n_diverged` says how many seeds that leaves out.
    """
    seeds = seed_table(seem_frames, q_bound, cell_columns, scores).replace([np.inf, -np.inf], np.nan)
    aggregated = [*AGGREGATED, *(c for c in SCORE_COLUMNS if c in seeds.columns)]
    rows = []
    for key, g in seeds.groupby(list(cell_columns), sort=False):
        row = dict(zip(cell_columns, key))
        row["n_seeds"], row["n_diverged"] = len(g), int(g["diverged"].sum())
        for col in aggregated:
            row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std()  # std: NaN for 1 seed
        rows.append(row)
    return sort_cells(pd.DataFrame(rows))


def merge_mean_std(df: pd.DataFrame, fmt: str = "{:.3g}") -> pd.DataFrame:
    """For display: each `X_mean`, `X_std` pair becomes one text column `X` = "mean ± std"."""
    out = df.copy()
    for col in [c[: -len("_mean")] for c in df.columns if c.endswith("_mean") and f"{c[:-5]}_std" in df.columns]:
        mean, std = out.pop(f"{col}_mean"), out.pop(f"{col}_std")
        out[col] = [format_value(m, fmt) + ("" if pd.isna(s) else " ± " + format_value(s, fmt))
                    for m, s in zip(mean, std)]
    return out


def write_table_csv(df: pd.DataFrame, path: str | os.PathLike, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def write_table_markdown(df: pd.DataFrame, path: str | os.PathLike) -> None:
    write_text_atomic(path, to_markdown(df))


# ------------------------------------------------------------------ cells and selectors
def sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of their cell (percents numeric: 1, 10, 50, 100) and seed."""
    keys = [c for c in (*CELL_COLUMNS, "seed") if c in df.columns]
    if not len(df) or not keys:
        return df.reset_index(drop=True)
    key = lambda s: pd.to_numeric(s, errors="coerce") if s.name in ("percent", "seed") else s.astype(str)
    return df.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


def select(df: pd.DataFrame, selector: dict | None) -> pd.Series:
    """Rows whose cell the selector picks: `algorithms`, `critic_norms`, `datasets` are lists of
    glob patterns (all when absent), `percents` a list of numbers."""
    import fnmatch

    selector = selector or {}
    mask = pd.Series(True, index=df.index)
    for key, column in (("algorithms", "algo"), ("critic_norms", "critic_norm"), ("datasets", "dataset")):
        if selector.get(key) is not None:
            patterns = [str(p) for p in selector[key]]
            mask &= df[column].astype(str).map(lambda v: any(fnmatch.fnmatchcase(v, p) for p in patterns))
    if selector.get("percents") is not None:
        mask &= pd.to_numeric(df["percent"]).isin([float(p) for p in selector["percents"]])
    return mask


# ------------------------------------------------------------------ scores per seed
LAST = 10  # the paper's tables average the last 10 evaluations
SCORE_FIELDS = ("final_score", f"last{LAST}_score", "best_score", "final_return", f"last{LAST}_return", "best_return")


def score_rows(evaluations: pd.DataFrame, run: dict) -> list[dict]:
    """One row per seed of one run: its cell labels, seed, the final / last-10 / best normalised
    score and return, evaluations counted, the run's steps, transitions and divergence step."""
    from seemrl.training.evaluation import summarize

    if evaluations is None or not len(evaluations):
        return []
    labels = {k: run["labels"][k] for k in CELL_COLUMNS if k in run["labels"]}
    diverged = run.get("diverged_step") or {}
    rows = []
    for seed, summary in summarize(evaluations, last=LAST).items():
        rows.append({**labels, "seed": int(seed), **{k: summary.get(k) for k in SCORE_FIELDS},
                     "evaluations": summary["evaluations"], "final_eval_step": summary["final_step"],
                     "steps": run.get("steps"), "n_transitions": (run.get("data") or {}).get("n_transitions"),
                     "diverged_step": diverged.get(str(seed)), "nonfinite_actions": summary["any_nonfinite_actions"]})
    return rows


def scores_table(rows: Sequence[dict]) -> pd.DataFrame:
    columns = [*CELL_COLUMNS, "seed", *SCORE_FIELDS, "evaluations", "final_eval_step", "steps", "n_transitions",
               "diverged_step", "nonfinite_actions"]
    df = pd.DataFrame(list(rows), columns=columns)
    for c in SCORE_FIELDS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return sort_cells(df)


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (a quarter trimmed from each end)."""
    x = np.sort(np.asarray(values, float))
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan
    k = int(0.25 * len(x))
    return float(x[k:len(x) - k].mean())


def bootstrap_ci(values, stat=iqm, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat` over the seeds (fixed resampling seed)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(x), size=(n, len(x)))
    stats = np.array([stat(x[d]) for d in draws])
    return float(np.quantile(stats, (1 - level) / 2)), float(np.quantile(stats, (1 + level) / 2))


def stratified_bootstrap_iqm(tasks: Sequence[np.ndarray], n: int = 2000, level: float = 0.95,
                             seed: int = 0) -> tuple[float, float]:
    """95% interval of the IQM over all runs of several tasks, resampling seeds within each task
    (the stratified bootstrap of Agarwal et al. 2021); NaN when every task has one run or fewer."""
    tasks = [np.asarray(t, float) for t in tasks if len(t)]
    if not tasks or all(len(t) < 2 for t in tasks):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([t[rng.integers(0, len(t), size=(n, len(t)))] for t in tasks], axis=1)
    pooled.sort(axis=1)
    k = int(0.25 * pooled.shape[1])
    stats = pooled[:, k:pooled.shape[1] - k].mean(axis=1)
    return float(np.quantile(stats, (1 - level) / 2)), float(np.quantile(stats, (1 + level) / 2))


def performance_profile(scores: pd.DataFrame, spec: dict, points: int = 101) -> pd.DataFrame:
    """Per line, critic option and percent: the fraction of runs (task x seed) whose last-10 score
    exceeds tau, for tau from 0 to the largest score (a performance profile, Agarwal et al. 2021)."""
    lines = spec.get("lines") or {str(a): {"algorithms": [str(a)]} for a in scores["algo"].unique()}
    base = scores[select(scores, {k: v for k, v in spec.items() if k in ("datasets", "percents", "critic_norms")})]
    values = base[f"last{LAST}_score"].dropna()
    taus = np.linspace(0.0, max(float(values.max()), 1.0) if len(values) else 1.0, points)
    rows = []
    for label, selector in lines.items():
        for (norm, percent), g in base[select(base, selector)].groupby(["critic_norm", "percent"], sort=True):
            x = g[f"last{LAST}_score"].dropna().to_numpy(float)
            rows += [{"line": label, "critic_norm": norm, "percent": percent, "tau": t,
                      "fraction": float((x > t).mean()) if len(x) else math.nan} for t in taus]
    return pd.DataFrame(rows, columns=["line", "critic_norm", "percent", "tau", "fraction"])


def aggregate(values, prefix: str) -> dict[str, float]:
    """mean, std (NaN for one seed), IQM and its 95% bootstrap interval of per-seed values."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    lo, hi = bootstrap_ci(x)
    return {f"{prefix}_mean": float(x.mean()) if len(x) else math.nan,
            f"{prefix}_std": float(x.std()) if len(x) > 1 else math.nan,
            f"{prefix}_iqm": iqm(x), f"{prefix}_iqm_lo": lo, f"{prefix}_iqm_hi": hi}


# ------------------------------------------------------------------ the paper's tables
def _version_free(name: str) -> str:
    import re

    return re.sub(r"-v\d+$", "", str(name))


def paper_row(dataset: str, paper_rows: dict) -> str | None:
    """The paper's row for a dataset: the same name, else the same task in another version
    (antmaze-umaze-v2 -> antmaze-umaze-v0); the table says which row it compared with."""
    if dataset in paper_rows:
        return dataset
    same_task = [r for r in paper_rows if _version_free(r) == _version_free(dataset)]
    return same_task[0] if same_task else None


def _one_cell(cells: pd.DataFrame, where: str) -> pd.DataFrame:
    found = cells[["algo", "critic_norm"]].drop_duplicates()
    if len(found) > 1:
        raise ValueError(f"{where} selects {len(found)} runs of one dataset: "
                         f"{[tuple(r) for r in found.itertuples(index=False)]}; narrow its selector")
    return cells


def paper_table(scores: pd.DataFrame, name: str, spec: dict, paper: dict) -> pd.DataFrame:
    """The paper's table `name` from the runs: one row per (dataset, percent) a column selects
    and an `average` row; per column our last-10 score (mean, std, IQM with its 95% bootstrap
    interval), final and best, seeds and steps, and the paper's number, std and best beside it
    with the difference ours - paper. A column without runs is kept, with the paper's number."""
    # the paper's column order (the spec reaches the job as JSON with sorted keys), then any others
    order = [c for c in paper.get("columns", []) if c in spec["columns"]]
    columns = {c: spec["columns"][c] for c in order + [c for c in spec["columns"] if c not in order]}
    rows_paper = paper.get("rows", {})
    keys = scores.loc[np.logical_or.reduce([select(scores, sel) for sel in columns.values()]),
                      ["dataset", "percent"]].drop_duplicates()
    order = list(rows_paper)
    keys["_order"] = [order.index(paper_row(d, rows_paper)) if paper_row(d, rows_paper) else len(order)
                      for d in keys["dataset"]]
    keys = keys.sort_values(["_order", "dataset", "percent"],
                            key=lambda s: s if s.name != "percent" else s.astype(float))
    out = []
    for dataset, percent in zip(keys["dataset"], keys["percent"]):
        ref = paper_row(dataset, rows_paper)
        for label, selector in columns.items():
            here = scores[select(scores, selector) & (scores["dataset"] == dataset) & (scores["percent"] == percent)]
            here = _one_cell(here, f"report table {name}, column {label!r}")
            get = lambda part: (paper.get(part, {}).get(ref) or {}).get(label, math.nan) if ref else math.nan
            row = {"dataset": dataset, "percent": percent, "column": label, "paper_dataset": ref or "",
                   "algo": ",".join(sorted(here["algo"].astype(str).unique())),
                   "critic_norm": ",".join(sorted(here["critic_norm"].astype(str).unique())),
                   "n_seeds": len(here), "steps": here["steps"].max() if len(here) else math.nan,
                   **aggregate(here[f"last{LAST}_score"], f"last{LAST}"),
                   "final_mean": here["final_score"].mean(), "final_std": here["final_score"].std(),
                   "best_mean": here["best_score"].mean(), "best_std": here["best_score"].std(),
                   "paper": float(get("rows")), "paper_std": float(get("std")), "paper_best": float(get("best"))}
            row["diff"] = row[f"last{LAST}_mean"] - row["paper"]
            out.append(row)
    table = pd.DataFrame(out)
    if not len(table):
        return table
    for label in columns:
        mine = table[(table["column"] == label) & (table["n_seeds"] > 0)]
        paper_values = mine["paper"]
        average = {"dataset": "average", "percent": math.nan, "column": label, "paper_dataset": "",
                   "algo": "", "critic_norm": "", "n_seeds": int(mine["n_seeds"].sum()), "steps": mine["steps"].max(),
                   f"last{LAST}_mean": mine[f"last{LAST}_mean"].mean() if len(mine) else math.nan,
                   "final_mean": mine["final_mean"].mean() if len(mine) else math.nan,
                   "best_mean": mine["best_mean"].mean() if len(mine) else math.nan,
                   # the paper's average over the same rows (only where it has all of them)
                   "paper": paper_values.mean() if len(mine) and paper_values.notna().all() else math.nan}
        average["diff"] = average[f"last{LAST}_mean"] - average["paper"]
        table = pd.concat([table, pd.DataFrame([average])], ignore_index=True)
    return table


def _mean_std(m, s, fmt="{:.1f}") -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return fmt.format(m) + ("" if s is None or (isinstance(s, float) and math.isnan(s)) else " ± " + fmt.format(s))


def paper_table_display(table: pd.DataFrame) -> pd.DataFrame:
    """Wide, for Markdown and LaTeX: a row per dataset (and percent where several), per column
    ours (mean ± std over seeds of the last-10 mean), the paper's number and the difference."""
    if not len(table):
        return pd.DataFrame()
    several = table["percent"].dropna().nunique() > 1
    rows = []
    for (dataset, percent), g in table.groupby(["dataset", "percent"], sort=False, dropna=False):
        suffix = f" ({format_value(percent, '{:g}')}%)" if several and dataset != "average" else ""
        row = {"dataset": dataset + suffix}
        for r in g.itertuples(index=False):
            d = r._asdict()
            std = d.get(f"last{LAST}_std") if dataset != "average" else None
            row[r.column] = _mean_std(d[f"last{LAST}_mean"], std) if d["n_seeds"] else "not run"
            row[f"{r.column}: paper"] = _mean_std(d["paper"], d["paper_std"])
            row[f"{r.column}: Δ"] = "-" if math.isnan(d["diff"]) else f"{d['diff']:+.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def paper_table_caption(table: pd.DataFrame, title: str, where: str, sources: dict[str, str]) -> str:
    """What was run (seeds, steps, data) and what is compared, for the table's Markdown and report."""
    runs = table[(table["dataset"] != "average") & (table["n_seeds"] > 0)]
    seeds = sorted({int(n) for n in runs["n_seeds"]})
    steps = sorted({int(s) for s in runs["steps"].dropna()})
    data = sorted({f"{d}: {sources.get(d, 'unknown source')}" for d in runs["dataset"]})
    other = sorted({f"{d} against the paper's {r}" for d, r in zip(runs["dataset"], runs["paper_dataset"])
                    if r and r != d})
    text = (f"{title}. Ours: D4RL normalised score (x100), mean ± std over seeds of the mean of the last {LAST} "
            f"evaluations; {'/'.join(map(str, seeds)) or 'no'} seeds per cell, "
            f"{'/'.join(f'{s:,}' for s in steps) or '-'} gradient steps. Data: {'; '.join(data) or '-'}. "
            f"Paper: {where}. Δ = ours - paper.")
    if other:
        text += " Compared across dataset versions: " + "; ".join(other) + "."
    return text


def write_latex(df: pd.DataFrame, path: str | os.PathLike, caption: str) -> None:
    """The display table as a LaTeX tabular (pandas' Styler; booktabs rules)."""
    latex = df.style.hide(axis="index").to_latex(hrules=True, caption=caption.replace("%", r"\%"))
    write_text_atomic(path, latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$"))


# ------------------------------------------------------------------ totals over tasks (Fig. 8/9, 12)
def totals_table(scores: pd.DataFrame, spec: dict, paper_points: Sequence[dict] = ()) -> pd.DataFrame:
    """Totals of the last-10 score over the tasks (datasets), per line (an algorithm, or a named
    selector of `spec["lines"]`), critic option and percent; rows of `kind`:

    - `total`: mean ± std over seeds of the per-seed total (seeds present in every task);
    - `task`: one dataset's mean ± std over seeds (the per-task panels);
    - `gain`: a critic option minus `none` (paper Fig. 9), per-seed totals paired by seed;
    - `iqm`: the interquartile mean over all runs (task x seed) with its stratified-bootstrap 95%
      interval (`lo`, `hi`), the aggregate rigorous RL reporting uses today.

    The paper's total is beside a `total` row where it states one (`paper_points`).
    """
    lines = spec.get("lines") or {str(a): {"algorithms": [str(a)]} for a in scores["algo"].unique()}
    base = scores[select(scores, {k: v for k, v in spec.items() if k in ("datasets", "percents", "critic_norms")})]
    points = {(p["line"], p["critic"], float(p["percent"])): p["total"] for p in paper_points}
    rows, per_seed = [], {}
    for label, selector in lines.items():
        sel = base[select(base, selector)]
        for (norm, percent), g in sel.groupby(["critic_norm", "percent"], sort=False):
            for dataset, d in g.groupby("dataset"):
                _one_cell(d, f"report figure line {label!r}")
                rows.append({"kind": "task", "line": label, "critic_norm": norm, "percent": percent,
                             "dataset": dataset, "n_tasks": 1, "n_seeds": len(d),
                             "mean": d[f"last{LAST}_score"].mean(), "std": d[f"last{LAST}_score"].std()})
            wide = g.pivot_table(index="seed", columns="dataset", values=f"last{LAST}_score", aggfunc="first")
            complete = wide.dropna()
            totals = complete.sum(axis=1)
            per_seed[label, norm, percent] = (tuple(sorted(wide.columns)), totals)
            rows.append({"kind": "total", "line": label, "critic_norm": norm, "percent": percent, "dataset": "",
                         "n_tasks": wide.shape[1], "n_seeds": len(totals), "mean": totals.mean(),
                         "std": totals.std(), "paper": points.get((label, str(norm), float(percent)), math.nan)})
    for label, selector in lines.items():  # the field's aggregate (rliable): IQM over all runs, stratified CI
        sel = base[select(base, selector)]
        for (norm, percent), g in sel.groupby(["critic_norm", "percent"], sort=False):
            runs = [d[f"last{LAST}_score"].dropna().to_numpy(float) for _, d in g.groupby("dataset")]
            lo, hi = stratified_bootstrap_iqm(runs)
            rows.append({"kind": "iqm", "line": label, "critic_norm": norm, "percent": percent, "dataset": "",
                         "n_tasks": len(runs), "n_seeds": int(sum(len(r) for r in runs)),
                         "mean": iqm(np.concatenate(runs)) if runs else math.nan, "lo": lo, "hi": hi})
    for (label, norm, percent), (tasks, totals) in per_seed.items():
        if norm == "none" or (label, "none", percent) not in per_seed:
            continue
        base_tasks, base_totals = per_seed[label, "none", percent]
        if base_tasks != tasks:
            continue
        common = totals.index.intersection(base_totals.index)
        diff = totals[common] - base_totals[common]
        rows.append({"kind": "gain", "line": label, "critic_norm": norm, "percent": percent, "dataset": "",
                     "n_tasks": len(tasks), "n_seeds": len(diff), "mean": diff.mean(), "std": diff.std()})
    out = pd.DataFrame(rows, columns=["kind", "line", "critic_norm", "percent", "dataset", "n_tasks", "n_seeds",
                                      "mean", "std", "paper", "lo", "hi"])
    out["percent"] = pd.to_numeric(out["percent"])
    return out.sort_values(["kind", "line", "critic_norm", "percent", "dataset"], kind="stable").reset_index(drop=True)
