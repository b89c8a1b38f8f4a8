"""SEEM and Q over training (paper Fig. 1, 4 and 6: one file per dataset, a colour per critic
option) and SEEM against the discount factor (Fig. 3 left)."""
from __future__ import annotations

import math
import os
from typing import Sequence

import pandas as pd

from seemrl.report.plots.style import figure, palette, plot_panels, save

PANELS = (("seem", "SEEM", "symlog"), ("seem_normalized", "normalised SEEM", "linear"),
          ("q_data_mean", "mean Q on data", "symlog"), ("critic_param_norm", "critic parameter norm", "symlog"))


def plot_seem_and_q(df: pd.DataFrame, path: str | os.PathLike, hue: str = "critic_norm") -> None:
    """SEEM, normalised SEEM, mean Q on data and critic norm over gradient steps, one line per seed.

    Colour is `hue` (the critic option); one row of panels per value of the identifying columns
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
    seed coloured by critic option, a line through the means; one panel per dataset."""
    import seaborn as sns

    data = df.copy()
    data["critic_norm"] = data.get("critic_norm", "all")
    datasets = sorted(data["dataset"].unique()) if "dataset" in data else [None]
    colours = palette(sorted(data["critic_norm"].astype(str).unique()))
    with figure(2, len(datasets), 4.5, 3.2) as (fig, axes):
        for c, dataset in enumerate(datasets):
            sub = data if dataset is None else data[data["dataset"] == dataset]
            for r, (col, label) in enumerate((("seem_normalized_final", "final normalised SEEM"),
                                              ("seem_normalized_max", "max normalised SEEM"))):
                ax = axes[r, c]
                sns.lineplot(data=sub, x="gamma", y=col, hue="critic_norm", marker="o", errorbar=None, ax=ax,
                             palette=colours, legend=(r == 0 and c == 0))
                sns.scatterplot(data=sub, x="gamma", y=col, hue="critic_norm", alpha=0.4, ax=ax, legend=False,
                                palette=colours)
                ax.axhline(0.0, color="grey", linewidth=0.5)
                ax.set_xlabel("discount factor gamma")
                ax.set_ylabel(label)
                ax.set_title(dataset or "", fontsize=9)
        save(fig, path)
