"""One look for every figure: a fixed colour per critic option and per algorithm (the same in
every figure), a line style per critic option, numeric order for percents and steps, readable
symlog axes, and atomic PNG/PDF writing."""
from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from seemrl.io import atomic_path

# Colours of the names the paper's configs use; any other name gets a colour from its hash, so
# it too is the same in every figure.
COLOURS = {
    # critic options (and online SAC variants)
    "none": "#4d4d4d", "ln": "#1f77b4", "ln_last": "#17becf", "ln_noaffine": "#9467bd", "bn": "#d62728",
    "wn": "#ff7f0e", "dropout": "#8c564b", "wd": "#e377c2", "ofn": "#2ca02c",
    "ln_0": "#aec7e8", "ln_01": "#6baed6", "ln_12": "#3182bd", "ln_2": "#08519c", "ln_012": "#1f77b4",
    "ln_012_noaffine": "#9467bd",
    "sac_ema": "#2ca02c", "sac_no_ema": "#d62728", "sac_no_ema_ln": "#1f77b4",
    # algorithms (lines of the totals figures take these names)
    "TD3+BC": "#1f77b4", "td3bc": "#1f77b4", "IQL": "#2ca02c", "iql": "#2ca02c", "CQL": "#d62728",
    "cql": "#d62728", "Diffusion-QL": "#9467bd", "diffql_mujoco": "#9467bd", "td3_seem": "#ff7f0e",
    "DDPG": "#8c564b", "ddpg_no_ema": "#8c564b", "DDPG + EMA": "#e377c2", "ddpg_ema": "#e377c2",
    "DDPG + EMA + double Q": "#7f7f7f", "ddpg_ema_double_q": "#7f7f7f",
}
FALLBACK = ("#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
            "#31a354", "#756bb1", "#636363")
LINESTYLES = {"none": "-", "ln": "--"}  # other critic options: dotted / dash-dot by hash


def colour(name) -> str:
    name = str(name)
    return COLOURS.get(name) or FALLBACK[zlib.crc32(name.encode()) % len(FALLBACK)]


def palette(names) -> dict[str, str]:
    return {str(n): colour(n) for n in names}


def linestyle(critic_norm) -> str:
    name = str(critic_norm)
    return LINESTYLES.get(name) or (":", "-.")[zlib.crc32(name.encode()) % 2]


def percent_order(values) -> list:
    """Percents (numbers or their text) in numeric order: 1, 10, 50, 100, not "1", "10", "100", "50"."""
    return sorted(set(values), key=float)


def symlog(ax, values: pd.Series) -> None:
    """Log axis where all values are positive, else symlog with a threshold at the small values:
    Q and norms of a diverging critic span many decades while converging ones stay O(1-100)."""
    values = pd.to_numeric(values, errors="coerce")
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log")
        return
    nonzero = finite[finite != 0].abs()
    ax.set_yscale("symlog", linthresh=float(nonzero.quantile(0.1)) if len(nonzero) else 1.0)
    if len(finite) and finite.min() < 0:
        # autoscale pads in symlog space, which would add decades of empty negative axis
        ax.set_ylim(bottom=float(finite.min()) * 1.5)


@contextlib.contextmanager
def figure(nrows: int, ncols: int, width: float, height: float):
    """A matplotlib figure of nrows x ncols axes (Agg backend), closed whatever happens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def save(fig, *paths: str | os.PathLike) -> None:
    """Write the figure atomically to each path, in the format its suffix names (.png, .pdf)."""
    fig.tight_layout()
    for path in map(Path, paths):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120)


def band(ax, x, mean, std, colour_: str, style: str, label: str) -> None:
    """A mean line with a +-1 std band (std NaN for one seed: no band); markers where there are
    few points, so that a single evaluation still shows."""
    x, mean, std = (np.asarray(v, float) for v in (x, mean, std))
    ax.plot(x, mean, color=colour_, linestyle=style, linewidth=1.6, label=label,
            marker="o" if len(x) <= 12 else None, markersize=3.5)
    ok = np.isfinite(std)
    if ok.any():
        ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=colour_, alpha=0.18, linewidth=0)


def plot_panels(df: pd.DataFrame, paths, panels, hue: str, row_candidates, x_label: str = "gradient steps") -> None:
    """One panel per (column, label, scale) of `panels` over `step`, a line per seed coloured by
    `hue`, one row per value of the `row_candidates` columns that vary (percents in numeric
    order); written atomically to each of `paths`."""
    import seaborn as sns

    data = df.copy()
    for col, _, _ in panels:
        data[col] = pd.to_numeric(data[col], errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan)
    if hue not in data.columns:
        data[hue] = "all"
    data[hue] = data[hue].astype(str)
    row_keys = [c for c in row_candidates if c in data.columns and data[c].astype(str).nunique() > 1]
    order = data[row_keys].drop_duplicates()
    order = order.sort_values(row_keys, key=lambda s: s.astype(float) if s.name == "percent" else s.astype(str))
    rows = [tuple(r) for r in order.itertuples(index=False)] if row_keys else [()]
    hue_order = sorted(data[hue].unique())
    with figure(len(rows), len(panels), 4.2, 3.2) as (fig, axes):
        for r, row in enumerate(rows):
            sub = data
            for k, v in zip(row_keys, row):
                sub = sub[sub[k].astype(str) == str(v)]
            title = ", ".join(f"{k}={v}{'%' if k == 'percent' else ''}" for k, v in zip(row_keys, row))
            for c, (col, label, scale) in enumerate(panels):
                ax = axes[r, c]
                plotted = sub.dropna(subset=[col])
                if len(plotted):
                    sns.lineplot(data=plotted, x="step", y=col, hue=hue, hue_order=hue_order, units="seed",
                                 estimator=None, ax=ax, alpha=0.8, linewidth=1.0, palette=palette(hue_order),
                                 legend=(r == 0 and c == 0))
                if scale == "symlog":
                    symlog(ax, sub[col])
                ax.set_xlabel(x_label)
                ax.set_ylabel(label)
                ax.set_title(label + (f"\n{title}" if title else ""), fontsize=9)
                if col.startswith("seem"):  # the sign of SEEM is what predicts divergence
                    ax.axhline(0.0, color="grey", linewidth=0.5)
        save(fig, *([paths] if isinstance(paths, (str, os.PathLike)) else paths))
