"""The growth order after divergence (paper Fig. 4, Thm. 4): with Adam, |Q| against t - t0 on
log-log axes beside a slope-L guide, and the critic's parameter norm against t - t0 (linear),
for every seed whose Q diverged; t0 is the step SEEM turned positive (predictions.csv)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from seemrl.report.plots.style import colour, figure, save

KEYS = ("dataset", "percent", "algo", "critic_norm", "seed")


def plot_growth(metrics: pd.DataFrame, predictions: pd.DataFrame, path: str | os.PathLike) -> None:
    """`metrics`: the runs' metrics.parquet rows with their cell labels; `predictions`: per seed."""
    keys = [k for k in KEYS if k in metrics.columns and k in predictions.columns]
    diverged = predictions[predictions["q_diverged"].astype(bool) & predictions["first_positive_seem_step"].notna()]
    with figure(1, 2, 5.2, 3.8) as (fig, axes):
        ax_q, ax_n = axes[0, 0], axes[0, 1]
        layers = set()
        for row in diverged.itertuples(index=False):
            r = row._asdict()
            mask = np.logical_and.reduce([metrics[k].astype(str) == str(r[k]) for k in keys])
            g = metrics[mask].sort_values("step")
            dt = g["step"].to_numpy(float) - float(r["first_positive_seem_step"])
            q = np.abs(pd.to_numeric(g["q_mean"], errors="coerce").to_numpy(float))
            ok = (dt > 0) & np.isfinite(q) & (q > 0)
            label = f"{r.get('dataset', '')} {r.get('percent', '')}% {r.get('algo', '')} seed {r.get('seed', '')}"
            c = colour(r.get("algo", ""))
            ax_q.plot(dt[ok], q[ok], color=c, linewidth=0.9, alpha=0.8, label=label)
            if "critic_param_norm" in g:
                norm = pd.to_numeric(g["critic_param_norm"], errors="coerce").to_numpy(float)
                ax_n.plot(dt[dt >= 0], norm[dt >= 0], color=c, linewidth=0.9, alpha=0.8)
            if ok.any() and pd.notna(r.get("n_layers")):
                layers.add(int(r["n_layers"]))
                x = dt[ok]
                for L in layers:  # a guide of slope L through the seed's last point
                    ax_q.plot(x, q[ok][-1] * (x / x[-1]) ** L, color="black", linestyle=":", linewidth=0.8)
        if not len(diverged):
            ax_q.text(0.5, 0.5, "no seed diverged", ha="center", transform=ax_q.transAxes)
        ax_q.set_xscale("log")
        ax_q.set_yscale("log")
        ax_q.set_xlabel("gradient steps since SEEM turned positive (t - t0)")
        ax_q.set_ylabel("|mean Q| on the batch")
        ax_q.set_title("log |Q| against log(t - t0); dotted: slope L" + (f" = {sorted(layers)}" if layers else ""),
                       fontsize=9)
        ax_n.set_xlabel("gradient steps since SEEM turned positive (t - t0)")
        ax_n.set_ylabel("critic parameter norm")
        ax_n.set_title("parameter norm: linear in t with Adam", fontsize=9)
        if 0 < len(diverged) <= 12:
            ax_q.legend(fontsize=6)
        save(fig, path)
