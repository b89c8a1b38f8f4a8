"""Totals over tasks against X% (paper Fig. 8; Fig. 12 for the ablation chain) and the gain of
each critic option over none (Fig. 9); per-task panels in a second file. Colour = line
(algorithm), line style = critic option; the paper's stated totals as crosses."""
from __future__ import annotations

import math
import os

import pandas as pd

from seemrl.report.plots.style import band, colour, figure, linestyle, save


def _xscale(ax, percents) -> None:
    ax.set_xscale("log")
    ticks = sorted(set(float(p) for p in percents))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("X% of the transitions (log scale)")


def plot_totals(totals: pd.DataFrame, paths, title: str = "") -> None:
    """Left: total normalised score against X%, mean ± std band over seeds; right: gain of each
    critic option over none with ± std error bars."""
    total = totals[totals["kind"] == "total"]
    gain = totals[totals["kind"] == "gain"]
    with figure(1, 2, 5.2, 3.8) as (fig, axes):
        ax = axes[0, 0]
        for (line, norm), g in total.groupby(["line", "critic_norm"], sort=True):
            g = g.sort_values("percent")
            band(ax, g["percent"], g["mean"], g["std"], colour(line), linestyle(norm),
                 f"{line}, {norm} ({int(g['n_tasks'].max())} tasks)")
            paper = g.dropna(subset=["paper"])
            if len(paper):
                ax.scatter(paper["percent"], paper["paper"], marker="x", s=60, color=colour(line), zorder=5,
                           label=f"{line}, {norm}: paper")
        _xscale(ax, total["percent"])
        ax.set_ylabel("total normalised score (x100)")
        ax.set_title((title + "\n" if title else "") + "total over tasks", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[0, 1]
        for (line, norm), g in gain.groupby(["line", "critic_norm"], sort=True):
            g = g.sort_values("percent")
            ax.errorbar(g["percent"], g["mean"], yerr=g["std"].fillna(0), color=colour(line), linestyle=linestyle(norm),
                        marker="o", capsize=3, label=f"{line}: {norm} - none")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        if len(gain):
            _xscale(ax, gain["percent"])
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no critic option paired with none", ha="center", transform=ax.transAxes)
        ax.set_ylabel("gain in total score over none")
        ax.set_title("critic option - none (paired by seed)", fontsize=9)
        save(fig, *([paths] if isinstance(paths, (str, os.PathLike)) else paths))


def plot_task_totals(totals: pd.DataFrame, path: str | os.PathLike) -> None:
    """One panel per task: its normalised score against X%, mean ± std band over seeds."""
    tasks = totals[totals["kind"] == "task"]
    datasets = sorted(tasks["dataset"].unique())
    ncols = min(3, max(1, len(datasets)))
    nrows = max(1, math.ceil(len(datasets) / ncols))
    with figure(nrows, ncols, 4.2, 3.2) as (fig, axes):
        for i, dataset in enumerate(datasets):
            ax = axes[i // ncols, i % ncols]
            for (line, norm), g in tasks[tasks["dataset"] == dataset].groupby(["line", "critic_norm"], sort=True):
                g = g.sort_values("percent")
                band(ax, g["percent"], g["mean"], g["std"], colour(line), linestyle(norm), f"{line}, {norm}")
            _xscale(ax, tasks["percent"])
            ax.set_ylabel("normalised score (x100)")
            ax.set_title(dataset, fontsize=9)
            if i == 0:
                ax.legend(fontsize=7)
        for j in range(len(datasets), nrows * ncols):
            axes[j // ncols, j % ncols].axis("off")
        save(fig, path)
