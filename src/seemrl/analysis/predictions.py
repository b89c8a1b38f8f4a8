"""The paper's predictions, checked against a run's outputs (paper Sec. 3, Thm. 3/4, Fig. 2-4, 10).

Per run: the SEEM frame of `seemrl.analysis.seem.analyse_run`, the trainer's metrics and
run.json. Checked: SEEM > 0 as a predictor of Q divergence (lead time, precision / recall);
with Adam, linear parameter-norm growth and log Q against log t with slope ~ L (Thm. 4); with
SGD, the crash step predicted from the decay of 1/Q (Thm. 3). `docs/analysis.md` gives the
definitions and tolerances.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from seemrl.analysis.seem import DEFAULT_Q_BOUND

RUN_COLUMNS = ("run", "dataset", "percent", "algo", "critic_norm")
# Normalised SEEM above this reads as positive. A singular A (repeated transitions in the batch)
# gives |SEEM| / ||A||_F ~ 1e-18 from rounding; the same tolerance as `divergence_verdict`.
DEFAULT_POSITIVE_TOL = 1e-6
DEFAULT_K = 2  # consecutive positive checkpoints that make "SEEM positive"
# Normalised SEEM above this (for k checkpoints) is a *surge* (paper Fig. 3: Q stays stable "until the normalized
# kernel matrix's SEEM rises up to a large positive value"). The paper gives no number; 0.1 is this
# project's choice, first used on the second evidence run's page (docs/results), not fitted to a verdict.
DEFAULT_SURGE = 0.1
DEFAULT_N_LAYERS = 3  # linear layers of the default 256-256 critic
MIN_FIT_POINTS = 3

LEAD_COLUMNS = ("first_positive_seem_step", "q_diverged_step_checkpoints", "q_diverged_step_metrics",
                "trainer_diverged_step", "q_diverged_step", "seem_positive", "q_diverged", "lead_time",
                "first_surge_step", "seem_surged", "surge_lead_time", "max_seem_normalized_before",
                "n_checkpoints", "final_step")


# ------------------------------------------------------------------ small helpers
def _arrays(steps, values) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) as float arrays sorted by step."""
    t = np.asarray(steps, dtype=float).reshape(-1)
    v = np.asarray(values, dtype=float).reshape(-1)
    order = np.argsort(t, kind="stable")
    return t[order], v[order]


def _first(t: np.ndarray, mask: np.ndarray) -> float:
    return float(t[mask][0]) if mask.any() else math.nan


def linear_fit(x, y) -> dict[str, float]:
    """Least-squares line y = slope * x + intercept over the finite pairs, with R^2 and n.

    NaN slope, intercept and R^2 when fewer than 2 distinct x remain; R^2 is 1 for an exact fit
    (also when y is constant: a constant is fitted exactly).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": int(len(x))}
    if len(x) < 2 or np.ptp(x) == 0:
        return out
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    slope = ((x - xm) * (y - ym)).sum() / sxx
    intercept = ym - slope * xm
    ss_res = ((y - (slope * x + intercept)) ** 2).sum()
    ss_tot = ((y - ym) ** 2).sum()
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-24 * max(1.0, (y ** 2).sum()) else math.nan)
    out.update(slope=float(slope), intercept=float(intercept), r2=float(r2))
    return out


# ------------------------------------------------------------------ 1. detection and lead time
def first_positive_step(steps, seem_normalized, positive_tol: float = DEFAULT_POSITIVE_TOL,
                        k: int = DEFAULT_K) -> float:
    """First step at which SEEM turns positive for good (see the module doc), or NaN.

    A streak is broken by a non-positive reading; a NaN reading (a diverged checkpoint) ends the
    finite record only if no finite reading follows it, otherwise it breaks the streak too.
    """
    t, s = _arrays(steps, seem_normalized)
    finite = np.isfinite(s)
    if not finite.any():
        return math.nan
    last_finite = np.flatnonzero(finite)[-1]
    positive = finite & (s > positive_tol)
    start = None
    for i in range(last_finite + 1):
        if positive[i]:
            start = i if start is None else start
            if i - start + 1 >= k or i == last_finite:
                return float(t[start])
        else:
            start = None
    return math.nan


def first_q_divergence_step(steps, q, q_bound: float = DEFAULT_Q_BOUND, flagged=None) -> float:
    """First step where |q| > q_bound or q is non-finite (or `flagged` is True), or NaN."""
    t, v = _arrays(steps, q)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (np.abs(v) > q_bound)
    if flagged is not None:
        _, f = _arrays(steps, np.asarray(flagged, dtype=float))
        bad |= f > 0
    return _first(t, bad)


def first_nonfinite_step(steps, q) -> float:
    """First step where q is NaN or inf, or NaN if it never is (the SGD crash)."""
    t, v = _arrays(steps, q)
    return _first(t, ~np.isfinite(v))


def _run_keys(frame: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    return list(by) if by is not None else [c for c in RUN_COLUMNS if c in frame.columns]


def _key_tuple(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _diverged_lookup(diverged_steps, keys: list[str]) -> dict[tuple, float]:
    """{(run keys..., seed): step} from a frame with a `diverged_step` column or a {seed: step} map."""
    if diverged_steps is None:
        return {}
    if isinstance(diverged_steps, pd.DataFrame):
        out = {}
        for row in diverged_steps.to_dict("records"):
            step = row.get("diverged_step")
            out[(*(row.get(k) for k in keys), int(row["seed"]))] = math.nan if step is None or pd.isna(step) else float(step)
        return out
    if keys:  # a plain {seed: step} map only identifies seeds of a single run
        raise ValueError(f"with run columns {keys} give diverged_steps as a frame with those columns, seed, diverged_step")
    return {(int(seed),): (math.nan if step is None or pd.isna(step) else float(step))
            for seed, step in dict(diverged_steps).items()}


def max_before(steps, values, before: float) -> float:
    """The largest finite value at steps earlier than `before` (all steps if `before` is NaN), or NaN."""
    t, v = _arrays(steps, values)
    keep = np.isfinite(v) & ((t < before) if not math.isnan(before) else True)
    return float(v[keep].max()) if keep.any() else math.nan


def lead_times(frame: pd.DataFrame, q_bound: float = DEFAULT_Q_BOUND, positive_tol: float = DEFAULT_POSITIVE_TOL,
               k: int = DEFAULT_K, metrics: pd.DataFrame | None = None, diverged_steps=None,
               by: Sequence[str] | None = None, surge: float = DEFAULT_SURGE) -> pd.DataFrame:
    """One row per (run, seed): when SEEM turned positive, when Q diverged, and the lead time; the
    same for a surge (normalised SEEM above `surge` for k checkpoints, `first_surge_step`,
    `surge_lead_time`), and the largest normalised SEEM before Q diverged (over the whole run if
    it never did: `max_seem_normalized_before`, the score `auroc` ranks seeds by).

    frame: `analyse_run` rows (step, seed, seem_normalized, q_data_mean, optionally diverged) with
    the run columns `by` (default: the `RUN_COLUMNS` present). metrics: the trainer's rows (step,
    seed, q_mean) with the same run columns. diverged_steps: a frame (run columns, seed,
    diverged_step) or, for a single run, {seed: step or None} as in run.json.
    Columns: the run columns, seed, and `LEAD_COLUMNS` (steps are NaN where nothing happened;
    `seem_positive` / `q_diverged` are bools; `lead_time` is NaN unless both happened).
    """
    keys = _run_keys(frame, by)
    trainer = _diverged_lookup(diverged_steps, keys)
    metric_groups = {}
    if metrics is not None and len(metrics):
        for key, g in metrics.groupby([*keys, "seed"], sort=False, dropna=False):
            metric_groups[_key_tuple(key)] = g
    rows = []
    if not len(frame):
        return pd.DataFrame(columns=[*keys, "seed", *LEAD_COLUMNS])
    for key, g in frame.groupby([*keys, "seed"], sort=True, dropna=False):
        key = _key_tuple(key)
        seem_col = g["seem_normalized"] if "seem_normalized" in g else pd.Series(np.nan, index=g.index)
        pos = first_positive_step(g["step"], seem_col, positive_tol, k)
        surged = first_positive_step(g["step"], seem_col, surge, k)
        q_col = g["q_data_mean"] if "q_data_mean" in g else pd.Series(np.nan, index=g.index)
        q_ckpt = first_q_divergence_step(g["step"], q_col, q_bound, g["diverged"] if "diverged" in g else None)
        m = metric_groups.get(key)
        q_metrics = first_q_divergence_step(m["step"], m["q_mean"], q_bound) if m is not None and "q_mean" in m else math.nan
        trainer_step = trainer.get((*key[:-1], int(key[-1])), math.nan)
        candidates = [s for s in (q_ckpt, q_metrics, trainer_step) if not math.isnan(s)]
        q_div = min(candidates) if candidates else math.nan
        rows.append({**dict(zip([*keys, "seed"], key)),
                     "first_positive_seem_step": pos, "q_diverged_step_checkpoints": q_ckpt,
                     "q_diverged_step_metrics": q_metrics, "trainer_diverged_step": trainer_step,
                     "q_diverged_step": q_div, "seem_positive": not math.isnan(pos),
                     "q_diverged": not math.isnan(q_div), "lead_time": q_div - pos,
                     "first_surge_step": surged, "seem_surged": not math.isnan(surged),
                     "surge_lead_time": q_div - surged,
                     "max_seem_normalized_before": max_before(g["step"], seem_col, q_div),
                     "n_checkpoints": int(len(g)), "final_step": float(g["step"].max())})
    return pd.DataFrame(rows)


def precision_recall(table: pd.DataFrame, require_lead: bool = False, predictor: str = "seem_positive",
                     lead: str = "lead_time") -> dict[str, float]:
    """Confusion counts and precision / recall of "SEEM positive" (or another bool column,
    `predictor`, with its lead-time column `lead`, e.g. seem_surged and surge_lead_time) for
    "Q diverged", over all rows (seeds) of a `lead_times` table.

    With `require_lead`, a diverged seed counts as predicted only if SEEM turned positive no later
    than Q diverged (lead time >= 0); a positive seed that never diverged is a false positive
    either way (it may diverge after the run ends: the run length bounds what can be verified).
    precision = TP / (TP + FP) and recall = TP / (TP + FN), NaN where the denominator is 0.
    """
    if not len(table):
        predicted = truth = np.zeros(0, dtype=bool)
    else:
        predicted = table[predictor].astype(bool).to_numpy()
        truth = table["q_diverged"].astype(bool).to_numpy()
        if require_lead:
            lead_time = table[lead].to_numpy(dtype=float)
            predicted = predicted & (~truth | (np.nan_to_num(lead_time, nan=-1.0) >= 0))
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn, tn = int((~predicted & truth).sum()), int((~predicted & ~truth).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": tp + fp + fn + tn,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / (tp + fn) if tp + fn else math.nan,
            "accuracy": (tp + tn) / (tp + fp + fn + tn) if tp + fp + fn + tn else math.nan}


def auroc(table: pd.DataFrame, score: str = "max_seem_normalized_before") -> float:
    """How well a score ranks the seeds whose Q diverged above those whose Q did not, without a
    threshold: the probability that a diverged seed scores higher than a bounded one (ties count
    a half; a NaN score, no finite reading, counts as the lowest). NaN unless both kinds exist."""
    if not len(table):
        return math.nan
    truth = table["q_diverged"].astype(bool).to_numpy()
    x = np.nan_to_num(pd.to_numeric(table[score], errors="coerce").to_numpy(dtype=float), nan=-np.inf)
    pos, neg = x[truth], x[~truth]
    if not len(pos) or not len(neg):
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


# ------------------------------------------------------------------ 2. Adam: linear norm, |Q| ~ t^L
def adam_growth(steps, param_norm, q, t0: float | None, n_layers: int = DEFAULT_N_LAYERS,
                lr: float | None = None, n_params: int | None = None,
                min_points: int = MIN_FIT_POINTS) -> dict[str, float]:
    """Fits of Thm. 4 on the points at t >= t0 (all points if t0 is None; nothing if t0 is NaN).

    norm_*: the line ||theta|| = slope * t + intercept (and its R^2); norm_slope_theory =
    lr * sqrt(n_params) when both are given (P of the network whose norm is passed: Q1 and Q2
    together for `critic_param_norm`). loglog_*_t: slope and R^2 of log|Q| against log t (t > 0);
    loglog_*_t_minus_t0: of log|Q| against log(t - t0) (t > t0). Theory: both slopes -> L for
    large t. Points where either value is non-finite (or |Q| = 0 for the logs) are left out; a
    fit on fewer than `min_points` points is NaN.
    """
    t, norm = _arrays(steps, param_norm)
    _, qv = _arrays(steps, q)
    out = {"adam_t0": math.nan if t0 is None else float(t0), "adam_n_points": 0, "n_layers": n_layers,
           "norm_slope": math.nan, "norm_intercept": math.nan, "norm_r2": math.nan,
           "norm_slope_theory": lr * math.sqrt(n_params) if lr and n_params else math.nan,
           "loglog_slope_t": math.nan, "loglog_r2_t": math.nan,
           "loglog_slope_t_minus_t0": math.nan, "loglog_r2_t_minus_t0": math.nan}
    if t0 is not None and not np.isfinite(t0):
        return out
    start = -np.inf if t0 is None else t0
    window = t >= start
    ok = window & np.isfinite(norm)
    out["adam_n_points"] = int(ok.sum())
    if ok.sum() >= min_points:
        fit = linear_fit(t[ok], norm[ok])
        out.update(norm_slope=fit["slope"], norm_intercept=fit["intercept"], norm_r2=fit["r2"])
    absq = np.abs(qv)
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.where(np.isfinite(absq) & (absq > 0), np.log(absq), np.nan)
        for suffix, x in (("t", t), ("t_minus_t0", t - (t0 if t0 is not None else 0.0))):
            use = window & (x > 0) & np.isfinite(logq)
            if use.sum() >= min_points:
                fit = linear_fit(np.log(x[use]), logq[use])
                out[f"loglog_slope_{suffix}"], out[f"loglog_r2_{suffix}"] = fit["slope"], fit["r2"]
    return out


# ------------------------------------------------------------------ 3. SGD: 1/|Q|^p hits zero
def sgd_exponent(n_layers: int) -> float:
    """p = (2L - 2) / L of Thm. 3 / eq. 23: 1 / |Q|^p decays linearly (1 for L = 2, 4/3 for L = 3)."""
    return (2 * n_layers - 2) / n_layers


def sgd_window(steps, y, t0: float | None = None, band: tuple[float, float] = (0.25, 0.75)) -> tuple[float, float]:
    """Default fit window for `sgd_crash`: the last descent of y = 1 / |Q|^p through a band.

    Over the finite y at t >= t0 (all if t0 is None or NaN): y_ref = the median of the first
    third of them (robust to the spikes of y where Q crosses zero); the window ends at the first
    point with y < band[0] * y_ref and starts after the last point before that with
    y > band[1] * y_ref. For an exact law y = a (T - t) from t0 = 0 that is roughly t in
    [0.4 T, 0.8 T]: a forecast made about 0.2 T ahead of the crash. (NaN, NaN) if no finite y.
    """
    t, y = _arrays(steps, y)
    use = np.isfinite(y) & (t >= (t0 if t0 is not None and np.isfinite(t0) else -np.inf))
    t, y = t[use], y[use]
    if not len(t):
        return math.nan, math.nan
    y_ref = float(np.median(y[: max(1, len(y) // 3)]))
    below = np.flatnonzero(y < band[0] * y_ref)
    end = int(below[0]) if len(below) else len(y) - 1
    above = np.flatnonzero(y[:end] > band[1] * y_ref)
    start = int(above[-1]) + 1 if len(above) else 0
    start = min(start, end)
    return float(t[start]), float(t[end])


def sgd_crash(steps, q, t0: float | None = None, window: tuple[float, float] | None = None,
              exponent: float = 1.0, observed_crash: float | None = None,
              min_points: int = MIN_FIT_POINTS) -> dict[str, float]:
    """Predicted crash step of Thm. 3 from a line fitted to y = 1 / |q|^exponent.

    The fit uses the finite, non-zero q at steps in `window` = (start, end), inclusive (default:
    `sgd_window` from t0, the critical point). The predicted crash is the zero crossing
    -intercept / slope when the slope is negative (NaN otherwise: no crash predicted).
    `observed_crash` (default: the first non-finite q) is compared: error = predicted - observed;
    horizon = observed - window end (how far ahead of the crash the fitted data end).
    """
    t, qv = _arrays(steps, q)
    observed = first_nonfinite_step(t, qv) if observed_crash is None else observed_crash
    observed = math.nan if observed is None else float(observed)
    absq = np.abs(qv)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        y = np.where(np.isfinite(absq) & (absq > 0), 1.0 / absq ** exponent, np.nan)
    ok = np.isfinite(y)
    out = {"sgd_exponent": exponent, "sgd_fit_start": math.nan, "sgd_fit_end": math.nan, "sgd_n_points": 0,
           "sgd_slope": math.nan, "sgd_intercept": math.nan, "sgd_r2": math.nan,
           "sgd_pred_crash_step": math.nan, "sgd_obs_crash_step": observed,
           "sgd_crash_error": math.nan, "sgd_horizon": math.nan}
    start, end = (float(window[0]), float(window[1])) if window is not None else sgd_window(t, y, t0)
    if math.isnan(start):
        return out
    use = ok & (t >= start) & (t <= end)
    out.update(sgd_fit_start=start, sgd_fit_end=end, sgd_n_points=int(use.sum()))
    if use.sum() < min_points:
        return out
    fit = linear_fit(t[use], y[use])
    out.update(sgd_slope=fit["slope"], sgd_intercept=fit["intercept"], sgd_r2=fit["r2"])
    if np.isfinite(fit["slope"]) and fit["slope"] < 0:
        pred = -fit["intercept"] / fit["slope"]
        out["sgd_pred_crash_step"] = pred
        out["sgd_crash_error"] = pred - observed
    out["sgd_horizon"] = observed - end
    return out


# ------------------------------------------------------------------ one table over runs
@dataclass
class RunOutputs:
    """What `predictions_table` needs from one run (`load_run` reads it from a run directory)."""

    seem: pd.DataFrame  # analyse_run frame
    metrics: pd.DataFrame | None = None  # trainer's metrics (step, seed, q_mean, critic_param_norm)
    diverged_step: Mapping | None = None  # {seed: first non-finite step or None}
    labels: dict = field(default_factory=dict)  # run identity, e.g. dataset, percent, algo, critic_norm
    n_layers: int = DEFAULT_N_LAYERS  # linear layers of the critic (len(hidden) + 1)
    optimizer: str | None = None  # "adam" or "sgd"
    lr: float | None = None
    n_params: int | None = None  # parameters of Q1 and Q2 of one seed (for lr * sqrt(P))
    seem_setting: bool | None = None  # the paper's SEEM setting: TD3, no BC, target copied every update


def in_seem_setting(algorithm: str | None, config: dict) -> bool:
    """The setting the paper's SEEM predictions are made for (Sec. 3): offline TD3 without a
    behaviour term and with the target copied every update (tau 1). EMA targets, BC or CQL's
    penalty change the dynamics the prediction is about."""
    return algorithm == "td3" and float(config.get("tau", 0.005)) == 1.0 and float(config.get("bc_weight", 0.0)) == 0.0


def load_run(run_dir: str | Path) -> RunOutputs:
    """A run directory of the pipeline: seem.parquet, and if present metrics.parquet, run.json
    (labels, diverged_step, the resolved config: hidden, optimizer, critic_lr) and a checkpoint
    (parameter count). An algorithm without an `optimizer` setting trains with Adam."""
    run_dir = Path(run_dir)
    seem = pd.read_parquet(run_dir / "seem.parquet")
    metrics = pd.read_parquet(run_dir / "metrics.parquet") if (run_dir / "metrics.parquet").exists() else None
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    from seemrl.algos import load_checkpoint
    from seemrl.training.resume import checkpoint_paths

    config = info.get("config", {})
    hidden = config.get("hidden", ())
    n_params = None
    try:

        paths = checkpoint_paths(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else []
        if paths:
            nets = load_checkpoint(paths[0]).nets
            n_params = sum(p[0].numel() for m in (nets.q1, nets.q2) for p in m.parameters())
    except (OSError, ValueError):
        n_params = None
    return RunOutputs(seem=seem, metrics=metrics, diverged_step=info.get("diverged_step"),
                      labels={"run": str(run_dir), **info.get("labels", {})},
                      n_layers=len(hidden) + 1 if hidden else DEFAULT_N_LAYERS,
                      optimizer=config.get("optimizer", "adam"), lr=config.get("critic_lr"),
                      n_params=n_params, seem_setting=in_seem_setting(info.get("algorithm"), config) if info else None)


def _labelled(frame: pd.DataFrame | None, labels: dict) -> pd.DataFrame | None:
    if frame is None:
        return None
    frame = frame.copy()
    for k, v in labels.items():
        frame[k] = v
    return frame


def predictions_table(runs: Sequence[RunOutputs], q_bound: float = DEFAULT_Q_BOUND,
                      positive_tol: float = DEFAULT_POSITIVE_TOL, k: int = DEFAULT_K,
                      surge: float = DEFAULT_SURGE) -> pd.DataFrame:
    """One row per (run, seed): `lead_times` columns, Adam growth fits (`adam_growth`, from t0 =
    the first positive-SEEM step) and SGD crash predictions for p = 1 (`sgd_*`) and
    p = (2L - 2) / L (`sgd_L_*`), plus optimizer and n_layers.

    Q and the parameter norm come from the trainer's metrics where given (q_mean, on its training
    minibatches, every log_every steps), else from the checkpoints (q_data_abs_mean or q_data_mean,
    critic_param_norm); `q_source` says which. The observed crash is the first non-finite Q there
    or the trainer's diverged_step, whichever is earlier.
    """
    tables = []
    for run in runs:
        labels = dict(run.labels)
        keys = [c for c in labels]
        seem = _labelled(run.seem, labels)
        metrics = _labelled(run.metrics, labels)
        div = None
        if run.diverged_step is not None:
            div = pd.DataFrame([{**labels, "seed": int(s), "diverged_step": v} for s, v in run.diverged_step.items()])
        lead = lead_times(seem, q_bound, positive_tol, k, metrics, div, by=keys, surge=surge)
        extra = []
        for row in lead.to_dict("records"):
            seed = row["seed"]
            use_metrics = metrics is not None and "q_mean" in metrics and (metrics["seed"] == seed).any()
            if use_metrics:
                g = metrics[metrics["seed"] == seed]
                t, q, norm = g["step"], g["q_mean"], g.get("critic_param_norm", pd.Series(np.nan, index=g.index))
            else:
                g = seem[seem["seed"] == seed]
                qcol = "q_data_abs_mean" if "q_data_abs_mean" in g else "q_data_mean"
                t, q, norm = g["step"], g[qcol], g.get("critic_param_norm", pd.Series(np.nan, index=g.index))
            t0 = row["first_positive_seem_step"]
            crash = first_nonfinite_step(t, q)
            trainer_step = row["trainer_diverged_step"]
            observed = min([s for s in (crash, trainer_step) if not math.isnan(s)], default=math.nan)
            sgd1 = sgd_crash(t, q, t0=t0, exponent=1.0, observed_crash=observed)
            sgd_l = sgd_crash(t, q, t0=t0, exponent=sgd_exponent(run.n_layers), observed_crash=observed)
            extra.append({"optimizer": run.optimizer, "seem_setting": run.seem_setting, "q_source": "metrics" if use_metrics else "checkpoints",
                          **adam_growth(t, norm, q, t0, run.n_layers, run.lr, run.n_params),
                          **sgd1, **{"sgd_L_" + k_[4:]: v for k_, v in sgd_l.items()}})
        tables.append(pd.concat([lead.reset_index(drop=True), pd.DataFrame(extra)], axis=1))
    if not tables:
        return pd.DataFrame(columns=["seed", *LEAD_COLUMNS])
    return pd.concat(tables, ignore_index=True)


def summary_markdown(table: pd.DataFrame, run_columns: Sequence[str] | None = None) -> str:
    """Markdown: precision / recall over all seeds (any time, and requiring a lead), then one row
    per run: seeds, SEEM-positive and diverged counts, median lead time, Adam fits (mean over the
    seeds where defined) against L, and SGD predicted vs observed crash (median)."""
    from seemrl.io import to_markdown

    keys = list(run_columns) if run_columns is not None else [c for c in RUN_COLUMNS if c in table.columns]
    lines = ["### SEEM positive as a predictor of Q divergence (one case per seed)", ""]
    pr = pd.DataFrame([{"counted": name, **precision_recall(table, require_lead=lead)}
                       for name, lead in (("positive at any time", False), ("positive no later than divergence", True))])
    lines.append(to_markdown(pr))
    if "seem_surged" in table:
        lines += ["", f"### Normalised SEEM surging (above {DEFAULT_SURGE:g}) as a predictor (one case per seed)", ""]
        pr = pd.DataFrame([{"counted": name, **precision_recall(table, lead, "seem_surged", "surge_lead_time")}
                           for name, lead in (("surged at any time", False), ("surged no later than divergence", True))])
        lines += [to_markdown(pr), "", "Without a threshold: the largest normalised SEEM before divergence ranks "
                  f"a diverged seed above a bounded one with probability (AUROC) {auroc(table):.2f}."]
    rows = []
    groups = table.groupby(keys, sort=True, dropna=False) if keys else [((), table)]
    for key, g in groups:
        num = lambda c: pd.to_numeric(g[c], errors="coerce") if c in g else pd.Series(dtype=float)
        med = lambda c: float(num(c).median()) if num(c).notna().any() else math.nan
        mean = lambda c: float(num(c).mean()) if num(c).notna().any() else math.nan
        optimizers = sorted({str(o) for o in g["optimizer"].dropna()}) if "optimizer" in g else []
        rows.append({**dict(zip(keys, _key_tuple(key))), "optimizer": ",".join(optimizers) or "-", "seeds": len(g),
                     "seem_positive": int(g["seem_positive"].sum()), "q_diverged": int(g["q_diverged"].sum()),
                     "median_lead_time": med("lead_time"),
                     "seem_surged": int(g["seem_surged"].sum()) if "seem_surged" in g else 0,
                     "median_surge_lead_time": med("surge_lead_time"), "L": mean("n_layers"),
                     "norm_r2": mean("norm_r2"), "norm_slope": mean("norm_slope"),
                     "norm_slope_theory": mean("norm_slope_theory"),
                     "loglog_slope_t": mean("loglog_slope_t"), "loglog_slope_t_minus_t0": mean("loglog_slope_t_minus_t0"),
                     "sgd_pred_crash": med("sgd_pred_crash_step"), "sgd_L_pred_crash": med("sgd_L_pred_crash_step"),
                     "obs_crash": med("sgd_obs_crash_step")})
    lines += ["", "### Per run (Adam: Thm. 4 after the first positive SEEM; SGD: Thm. 3 zero crossing)", "",
              to_markdown(pd.DataFrame(rows))]
    return "\n".join(lines)
