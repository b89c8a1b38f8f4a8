"""Tables and figures of the SEEM study from `seemrl.analysis.seem.analyse_run` frames.

Each input frame is one run (one cell: dataset x subset percent x algorithm x critic
normalisation, all its seeds) with those identifying columns added. Every file is written
atomically, so an interrupted report never leaves a plausible-looking partial file.
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
    for key, g in seeds.groupby(list(cell_columns), sort=True):
        row = dict(zip(cell_columns, key))
        row["n_seeds"], row["n_diverged"] = len(g), int(g["diverged"].sum())
        for col in aggregated:
            row[f"{col}_mean"], row[f"{col}_std"] = g[col].mean(), g[col].std()  # std: NaN for 1 seed
        rows.append(row)
    return pd.DataFrame(rows)


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


# ------------------------------------------------------------------ figure
PANELS = (("seem", "SEEM", "symlog"), ("seem_normalized", "normalised SEEM", "linear"),
          ("q_data_mean", "mean Q on data", "symlog"), ("critic_param_norm", "critic parameter norm", "symlog"))


def _symlog(ax, values: pd.Series) -> None:
    # Q and norms of a diverging critic span many decades while converging ones stay O(1-100):
    # a log scale keeps both readable; symlog where values can be zero or negative.
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log")
        return
    nonzero = finite[finite != 0].abs()
    ax.set_yscale("symlog", linthresh=float(nonzero.quantile(0.1)) if len(nonzero) else 1.0)
    if len(finite) and finite.min() < 0:
        # autoscale pads in symlog space, which would add decades of empty negative axis
        ax.set_ylim(bottom=float(finite.min()) * 1.5)


def plot_seem_and_q(df: pd.DataFrame, path: str | os.PathLike, hue: str = "critic_norm") -> None:
    """SEEM, normalised SEEM, mean Q on data and critic norm over training steps, one line per seed.

    Colour is `hue` (LayerNorm on / off); one row of panels per value of the identifying columns
    (dataset, percent, algo) that vary in `df`. Non-finite values are left out of the lines.
    """
    plot_panels(df, path, PANELS, hue, ("dataset", "percent", "algo"))


def seem_vs_gamma_frame(seem_frames: Sequence[pd.DataFrame], gammas: Sequence[float]) -> pd.DataFrame:
    """Per run and seed: the discount factor, and the normalised SEEM at the final checkpoint and
    its maximum over training (paper Fig. 3 left); frames carry their run labels."""
    rows = []
    for df, gamma in zip(seem_frames, gammas):
        keys = [c for c in ("dataset", "percent", "algo", "critic_norm") if c in df.columns]
        for seed, g in df.groupby("seed"):
            g = g.sort_values("step")
            values = pd.to_numeric(g["seem_normalized"], errors="coerce")
            rows.append({**{k: g[k].iloc[0] for k in keys}, "seed": seed, "gamma": float(gamma),
                         "seem_normalized_final": float(values.iloc[-1]),
                         "seem_normalized_max": float(values.max()) if values.notna().any() else math.nan})
    return pd.DataFrame(rows)


def plot_seem_vs_gamma(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Normalised SEEM (final checkpoint, and maximum over training) against gamma, a point per
    seed coloured by critic normalisation, a line through the means; one panel per dataset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = df.copy()
    data["critic_norm"] = data.get("critic_norm", "all")
    datasets = sorted(data["dataset"].unique()) if "dataset" in data else [None]
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.5 * len(datasets), 6.4), squeeze=False)
    try:
        for c, dataset in enumerate(datasets):
            sub = data if dataset is None else data[data["dataset"] == dataset]
            for r, (col, label) in enumerate((("seem_normalized_final", "final normalised SEEM"),
                                              ("seem_normalized_max", "max normalised SEEM"))):
                ax = axes[r, c]
                sns.lineplot(data=sub, x="gamma", y=col, hue="critic_norm", marker="o", errorbar=None, ax=ax,
                             legend=(r == 0 and c == 0))
                sns.scatterplot(data=sub, x="gamma", y=col, hue="critic_norm", alpha=0.4, ax=ax, legend=False)
                ax.axhline(0.0, color="grey", linewidth=0.5)
                ax.set_ylabel(label)
                ax.set_title(dataset or "", fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)


ONLINE_PANELS = (("q_mean", "mean Q on the batch", "symlog"), ("last_episode_return", "episode return", "linear"),
                 ("critic_param_norm", "critic parameter norm", "symlog"))


def plot_online(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Online SAC (paper Fig. 11): mean Q, episode return and critic norm over environment steps,
    one line per seed, coloured by variant (EMA / no EMA / no EMA + LayerNorm), a row per env."""
    plot_panels(df, path, ONLINE_PANELS, "variant", ("env",))


def plot_panels(df: pd.DataFrame, path: str | os.PathLike, panels, hue: str, row_candidates) -> None:
    """One panel per (column, label, scale) of `panels` over `step`, a line per seed coloured by
    `hue`, one row per value of the `row_candidates` columns that vary; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = df.copy()
    for col, _, _ in panels:
        data[col] = data[col].astype(float).replace([np.inf, -np.inf], np.nan)
    if hue not in data.columns:
        data[hue] = "all"
    data[hue] = data[hue].astype(str)
    row_keys = [c for c in row_candidates if c in data.columns and data[c].nunique() > 1]
    data["_row"] = data[row_keys].apply(lambda r: ", ".join(f"{k}={r[k]}" for k in row_keys), axis=1) \
        if row_keys else ""
    row_values = sorted(data["_row"].unique())
    hue_order = sorted(data[hue].unique())
    fig, axes = plt.subplots(len(row_values), len(panels), figsize=(4.2 * len(panels), 3.2 * len(row_values)),
                             squeeze=False)
    try:
        for r, row_value in enumerate(row_values):
            sub = data[data["_row"] == row_value]
            for c, (col, label, scale) in enumerate(panels):
                ax = axes[r, c]
                plotted = sub.dropna(subset=[col])
                if len(plotted):
                    sns.lineplot(data=plotted, x="step", y=col, hue=hue, hue_order=hue_order, units="seed",
                                 estimator=None, ax=ax, alpha=0.8, linewidth=1.0,
                                 legend=(r == 0 and c == 0))
                if scale == "symlog":
                    _symlog(ax, sub[col])
                ax.set_ylabel(label)
                ax.set_title(f"{label}" + (f"\n{row_value}" if row_value else ""), fontsize=9)
                if col.startswith("seem"):  # the sign of SEEM is what predicts divergence
                    ax.axhline(0.0, color="grey", linewidth=0.5)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
