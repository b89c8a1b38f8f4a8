"""Learning curves: normalised score over gradient steps, one file per dataset, a panel per
percent; colour = algorithm, line style = critic option, mean ± std band over seeds (seeds as
thin lines when asked)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from seemrl.report.plots.style import band, colour, figure, linestyle, percent_order, save


def plot_curves(evaluations: pd.DataFrame, paths, seeds: bool = False, title: str = "") -> None:
    """`evaluations`: the runs' evaluations.parquet rows with their cell labels (one dataset)."""
    data = evaluations.copy()
    scored = data["normalized_score"].notna().any()
    y, label = ("normalized_score", "normalised score (x100)") if scored else ("return_mean", "return")
    data[y] = pd.to_numeric(data[y], errors="coerce").replace([np.inf, -np.inf], np.nan)
    percents = percent_order(data["percent"].astype(str))
    with figure(1, len(percents), 5.0, 3.6) as (fig, axes):
        for c, percent in enumerate(percents):
            ax = axes[0, c]
            sub = data[data["percent"].astype(str) == percent]
            for (algo, norm), g in sub.groupby(["algo", "critic_norm"], sort=True):
                stats = g.groupby("step")[y].agg(["mean", "std"]).reset_index()
                band(ax, stats["step"], stats["mean"], stats["std"], colour(algo), linestyle(norm),
                     f"{algo}, {norm} ({g['seed'].nunique()} seeds)")
                if seeds:
                    for _, s in g.groupby("seed"):
                        ax.plot(s["step"], s[y], color=colour(algo), linestyle=linestyle(norm), linewidth=0.5,
                                alpha=0.5)
            ax.set_xlabel("gradient steps")
            ax.set_ylabel(label)
            ax.set_title(f"{title} {percent}% of the transitions".strip(), fontsize=9)
            ax.legend(fontsize=7)
        save(fig, *([paths] if isinstance(paths, (str, os.PathLike)) else paths))
