"""Totals over tasks against X% (paper Fig. 8; Fig. 12 for the ablation chain) and the gain of
each critic option over none (Fig. 9); per-task panels in a second file; performance profiles
and the IQM over all runs in a third. Colour = line (algorithm), line style = critic option; the
paper's stated totals as crosses."""
from __future__ import annotations

import math
import os

import numpy as np
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


def plot_profiles(totals: pd.DataFrame, profile: pd.DataFrame, path: str | os.PathLike) -> None:
    """The field's aggregates (Agarwal et al. 2021): per X%, the performance profile (fraction of
    runs scoring above tau) of each line and critic option; last panel, the IQM over all runs
    against X% with its stratified-bootstrap 95% interval."""
    percents = sorted(profile["percent"].unique(), key=float) if len(profile) else []
    with figure(1, len(percents) + 1, 4.4, 3.6) as (fig, axes):
        for c, percent in enumerate(percents):
            ax = axes[0, c]
            for (line, norm), g in profile[profile["percent"] == percent].groupby(["line", "critic_norm"], sort=True):
                ax.plot(g["tau"], g["fraction"], color=colour(line), linestyle=linestyle(norm), label=f"{line}, {norm}")
            ax.set_xlabel("normalised score tau (x100)")
            ax.set_ylabel("fraction of runs with score > tau")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"performance profile, {float(percent):g}% of the transitions", fontsize=9)
            if c == 0:
                ax.legend(fontsize=7)
        ax = axes[0, len(percents)]
        iqm = totals[totals["kind"] == "iqm"]
        for (line, norm), g in iqm.groupby(["line", "critic_norm"], sort=True):
            g = g.sort_values("percent")
            err = np.vstack([(g["mean"] - g["lo"]).fillna(0), (g["hi"] - g["mean"]).fillna(0)])
            ax.errorbar(g["percent"], g["mean"], yerr=err, color=colour(line), linestyle=linestyle(norm), marker="o",
                        capsize=3, label=f"{line}, {norm}")
        if len(iqm):
            _xscale(ax, iqm["percent"])
        ax.set_ylabel("IQM of the normalised score (x100)")
        ax.set_title("IQM over all runs, 95% stratified-bootstrap CI", fontsize=9)
        save(fig, path)
