"""The paper's checkable claims against the runs that exist: one row per claim with what the paper
says (its number), what these runs measured, a verdict and the runs it used.

Verdicts: `holds`, `does not hold`, `not run here` (no run of the kind the claim needs) and
`too few runs` (runs exist but cannot decide: fewer than MIN_SEEDS seeds, or nothing diverged
to predict). Each verdict's rule is written in its row. The header states the scale of the runs
next to the paper's, so a verdict from a small demo reads as what it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from seemrl.report.tables import LAST, bootstrap_ci, select

HOLDS, FAILS, NOT_RUN, TOO_FEW = "holds", "does not hold", "not run here", "too few runs"
MIN_SEEDS = 3  # seeds per compared group below which no verdict is given
PAPER_STEPS, PAPER_SEEDS = 1_000_000, 10  # Table 1 and Fig. 8/9: 1M gradient steps, 10 seeds
COLUMNS = ("claim", "paper", "measured", "verdict", "rule", "runs", "n")


@dataclass
class Evidence:
    """What the report stage has: any part may be missing (None or empty)."""
    scores: pd.DataFrame | None = None       # per seed: scores.csv
    seeds: pd.DataFrame | None = None        # per seed: divergence verdicts (seeds.csv)
    predictions: pd.DataFrame | None = None  # per seed: predictions.csv
    paper: dict = field(default_factory=dict)  # config/paper/paper_results.yaml
    spec: dict = field(default_factory=dict)   # the config's `report` section
    theory: dict[str, pd.DataFrame] = field(default_factory=dict)  # theory summaries by file name
    online: pd.DataFrame | None = None       # online SAC metrics with env, variant labels
    online_variants: dict = field(default_factory=dict)  # the config's online variants


def _has(df) -> bool:
    return df is not None and len(df) > 0


def _row(claim, paper, measured, verdict, rule, runs="", n=0) -> dict:
    return dict(zip(COLUMNS, (claim, paper, measured, verdict, rule, runs, int(n))))


def _cells(df: pd.DataFrame) -> str:
    keys = [c for c in ("dataset", "percent", "algo", "critic_norm") if c in df.columns]
    cells = df[keys].drop_duplicates().astype(str).agg("/".join, axis=1)
    return "; ".join(sorted(cells)[:12]) + (f"; ... ({len(cells)} cells)" if len(cells) > 12 else "")


def _fmt(x, spec="{:.3g}") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


# ------------------------------------------------------------------ SEEM as a predictor
def _seem_setting(p: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The seeds in the SEEM setting (runs with EMA targets, BC or CQL's penalty are not what the
    detection claims are about), and a note of how many were left out."""
    if "seem_setting" not in p:
        return p, ""
    inside = p["seem_setting"].fillna(False).astype(bool)
    return p[inside], f"; {int((~inside).sum())} seeds outside the setting left out"


def _detection_row(ev: Evidence, claim: str, paper: str, rule: str, predictor: str, lead: str,
                   extra: Callable[[pd.DataFrame], str] | None = None) -> list[dict]:
    """A claim that `predictor` (a bool column of the predictions) flags Q's divergence no later
    than it happens: precision and recall over the SEEM setting's seeds, both >= 0.8 to hold."""
    from seemrl.analysis.predictions import precision_recall

    p = ev.predictions
    if not _has(p):
        return [_row(claim, paper, "no SEEM analysis", NOT_RUN, rule)]
    if predictor not in p:
        return [_row(claim, paper, f"the predictions have no `{predictor}` column (made by an older seemrl)",
                     NOT_RUN, rule)]
    p, left_out = _seem_setting(p)
    if not len(p):
        return [_row(claim, paper, "no run in the SEEM setting" + left_out, NOT_RUN, rule)]
    pr = precision_recall(p, require_lead=True, predictor=predictor, lead=lead)
    diverged = p[p["q_diverged"].astype(bool)]
    lead_time = pd.to_numeric(diverged[lead], errors="coerce")
    measured = (f"{len(diverged)} of {len(p)} seeds diverged; precision {_fmt(pr['precision'], '{:.2f}')}, recall "
                f"{_fmt(pr['recall'], '{:.2f}')}; median lead {_fmt(lead_time.median(), '{:,.0f}')} steps"
                + (extra(p) if extra else "") + left_out)
    if len(diverged) < MIN_SEEDS:
        verdict = TOO_FEW
        measured += f" (fewer than {MIN_SEEDS} diverged seeds: nothing to predict)"
    else:
        verdict = HOLDS if pr["precision"] >= 0.8 and pr["recall"] >= 0.8 else FAILS
    return [_row(claim, paper, measured, verdict, rule, _cells(p), len(p))]


def seem_precedes_divergence(ev: Evidence) -> list[dict]:
    return _detection_row(
        ev, "SEEM > 0 precedes Q divergence",
        "SEEM turns positive before Q diverges and predicts it at an early stage (Fig. 1, Sec. 3)",
        "holds if, over the seeds in the SEEM setting (TD3, no BC, tau 1), precision and recall of "
        "'SEEM positive no later than divergence' are >= 0.8", "seem_positive", "lead_time")


def seem_surge_precedes_divergence(ev: Evidence) -> list[dict]:
    from seemrl.analysis.predictions import DEFAULT_SURGE, auroc

    return _detection_row(
        ev, "Normalised SEEM surges before Q diverges",
        "Q stays stable until the normalised SEEM rises to a large positive value, then diverges (Fig. 3, 19, 20)",
        f"holds if, over the seeds in the SEEM setting, precision and recall of 'normalised SEEM above "
        f"{DEFAULT_SURGE:g} (this report's threshold: the paper gives none) no later than divergence' are >= 0.8",
        "seem_surged", "surge_lead_time",
        extra=lambda p: (f"; AUROC of the largest normalised SEEM before divergence {_fmt(auroc(p), '{:.2f}')}"
                         if "max_seem_normalized_before" in p else ""))


def nonpositive_seem_bounded(ev: Evidence) -> list[dict]:
    claim = "SEEM <= 0 throughout => Q stays bounded"
    paper = "a non-positive SEEM means no self-excitation: Q converges (Sec. 3, Thm. 1)"
    rule = f"holds if every seed whose SEEM never turned positive kept Q finite and bounded; >= {MIN_SEEDS} such seeds"
    p = ev.predictions
    if not _has(p):
        return [_row(claim, paper, "no SEEM analysis", NOT_RUN, rule)]
    quiet = p[~p["seem_positive"].astype(bool)]
    bounded = int((~quiet["q_diverged"].astype(bool)).sum())
    measured = f"{bounded} of {len(quiet)} seeds with SEEM never positive stayed bounded"
    verdict = TOO_FEW if len(quiet) < MIN_SEEDS else (HOLDS if bounded == len(quiet) else FAILS)
    return [_row(claim, paper, measured, verdict, rule, _cells(quiet), len(quiet))]


def adam_growth(ev: Evidence) -> list[dict]:
    paper_slope = (ev.paper.get("theory", {}).get("adam_loglog_slope") or {}).get("value", 3)
    p = ev.predictions
    rows = []
    claim1, claim2 = "Adam: parameter norm grows linearly after divergence", "Adam: log Q against log t has slope ~ L"
    paper1 = "||theta_t|| grows linearly in t once SEEM is positive (Thm. 4)"
    paper2 = f"Q grows like t^L; slope ~{paper_slope} for the 3-layer critic (Fig. 4, Thm. 4)"
    rule1 = f"holds if the mean R^2 of the linear fit is >= 0.9 over >= {MIN_SEEDS} diverged Adam seeds"
    rule2 = f"holds if the mean log-log slope (t - t0) is within 30% of L over >= {MIN_SEEDS} diverged Adam seeds"
    if not _has(p) or "optimizer" not in p:
        return [_row(claim1, paper1, "no SEEM analysis", NOT_RUN, rule1), _row(claim2, paper2, "-", NOT_RUN, rule2)]
    adam = p[(p["optimizer"].astype(str) == "adam") & p["q_diverged"].astype(bool)]
    r2 = pd.to_numeric(adam.get("norm_r2"), errors="coerce").dropna()
    slope = pd.to_numeric(adam.get("loglog_slope_t_minus_t0"), errors="coerce").dropna()
    layers = pd.to_numeric(adam.get("n_layers"), errors="coerce").dropna()
    L = float(layers.mean()) if len(layers) else math.nan
    rows.append(_row(claim1, paper1, f"mean R^2 {_fmt(r2.mean(), '{:.3f}')} over {len(r2)} diverged Adam seeds",
                     TOO_FEW if len(r2) < MIN_SEEDS else (HOLDS if r2.mean() >= 0.9 else FAILS), rule1,
                     _cells(adam), len(r2)))
    rows.append(_row(claim2, paper2, f"mean slope {_fmt(slope.mean(), '{:.2f}')} (L = {_fmt(L, '{:g}')}) over "
                     f"{len(slope)} seeds",
                     TOO_FEW if len(slope) < MIN_SEEDS else
                     (HOLDS if abs(slope.mean() - L) <= 0.3 * L else FAILS), rule2, _cells(adam), len(slope)))
    return rows


def sgd_crash(ev: Evidence) -> list[dict]:
    claim = "SGD: the crash step is predicted"
    paper = "with SGD, 1/Q decays linearly and a fit predicts the crash step (Thm. 3; Fig. 2: 605 vs 605)"
    rule = f"holds if the median |predicted - observed| / observed is <= 10% over >= {MIN_SEEDS} crashed SGD seeds"
    p = ev.predictions
    if not _has(p) or "optimizer" not in p:
        return [_row(claim, paper, "no SEEM analysis", NOT_RUN, rule)]
    sgd = p[p["optimizer"].astype(str) == "sgd"]
    if not len(sgd):
        return [_row(claim, paper, "no run trained with SGD", NOT_RUN, rule)]
    pred = pd.to_numeric(sgd.get("sgd_pred_crash_step"), errors="coerce")
    obs = pd.to_numeric(sgd.get("sgd_obs_crash_step"), errors="coerce")
    ok = pred.notna() & obs.notna() & (obs > 0)
    err = ((pred - obs).abs() / obs)[ok]
    measured = (f"{int(ok.sum())} of {len(sgd)} SGD seeds crashed with a prediction; median relative error "
                f"{_fmt(err.median(), '{:.1%}')}")
    verdict = TOO_FEW if ok.sum() < MIN_SEEDS else (HOLDS if err.median() <= 0.1 else FAILS)
    return [_row(claim, paper, measured, verdict, rule, _cells(sgd), int(ok.sum()))]


# ------------------------------------------------------------------ LayerNorm: stability and scores
def ln_bounds_q(ev: Evidence) -> list[dict]:
    claim = "LayerNorm keeps Q bounded where the critic without it diverges"
    paper = "with LN SEEM stays low and Q converges; without it Q diverges (Fig. 1, 6; Sec. 4)"
    rule = "holds if, in cells that differ only in LN (ln vs none), no LN seed diverged where a no-LN seed did"
    s = ev.seeds
    if not _has(s):
        return [_row(claim, paper, "no SEEM analysis", NOT_RUN, rule)]
    keys = ["dataset", "percent", "algo"]
    none, ln = s[s["critic_norm"] == "none"], s[s["critic_norm"] == "ln"]
    pairs = none[keys].drop_duplicates().merge(ln[keys].drop_duplicates(), on=keys)
    if not len(pairs):
        return [_row(claim, paper, "no cell was run both with and without LN", NOT_RUN, rule)]
    a = none.merge(pairs, on=keys)
    b = ln.merge(pairs, on=keys)
    div_a, div_b = int(a["diverged"].astype(bool).sum()), int(b["diverged"].astype(bool).sum())
    measured = f"without LN {div_a} of {len(a)} seeds diverged, with LN {div_b} of {len(b)} ({len(pairs)} cells)"
    where = a[a["diverged"].astype(bool)][keys].drop_duplicates()
    if div_a == 0 or min(len(a), len(b)) < MIN_SEEDS:
        verdict = TOO_FEW
        measured += "; no run without LN diverged, nothing to prevent" if div_a == 0 else ""
    else:
        ln_where = b.merge(where, on=keys)
        verdict = HOLDS if not ln_where["diverged"].astype(bool).any() else FAILS
    return [_row(claim, paper, measured, verdict, rule, _cells(pd.concat([a, b])), len(a) + len(b))]


def paired_difference(scores: pd.DataFrame, a: dict, b: dict, how: str = "sum") -> dict:
    """Per seed: the sum (or mean) over datasets of the last-10 score of the runs selector `a`
    picks, minus the same for `b`, over the seeds and datasets both have; mean, 95% bootstrap
    interval of the mean, and both sides' means."""
    col = f"last{LAST}_score"
    sides = []
    for sel in (a, b):
        picked = scores[select(scores, sel)]
        sides.append(picked.pivot_table(index="seed", columns="dataset", values=col, aggfunc="first"))
    tasks = sides[0].columns.intersection(sides[1].columns)
    seeds = sides[0].index.intersection(sides[1].index)
    if not len(tasks) or not len(seeds):
        return {"n_seeds": 0, "n_tasks": len(tasks)}
    agg = (lambda df: df.sum(axis=1)) if how == "sum" else (lambda df: df.mean(axis=1))
    va, vb = (agg(side.loc[seeds, tasks]) for side in sides)
    diff = (va - vb).dropna()
    lo, hi = bootstrap_ci(diff, stat=np.mean)
    return {"n_seeds": len(diff), "n_tasks": len(tasks), "a": float(va.mean()), "b": float(vb.mean()),
            "a_std": float(va.std()), "b_std": float(vb.std()), "diff": float(diff.mean()), "lo": lo, "hi": hi,
            "picked": pd.concat([scores[select(scores, a)], scores[select(scores, b)]])}


def _comparison_row(claim, paper, rule, d: dict, names: tuple[str, str], expect: str) -> dict:
    if not d.get("n_seeds"):
        return _row(claim, paper, "no runs of both kinds on the same tasks and seeds", NOT_RUN, rule)
    measured = (f"{names[0]} {_fmt(d['a'], '{:.1f}')} ± {_fmt(d['a_std'], '{:.1f}')} vs {names[1]} "
                f"{_fmt(d['b'], '{:.1f}')} ± {_fmt(d['b_std'], '{:.1f}')}: difference {_fmt(d['diff'], '{:+.1f}')}"
                f" [95% CI {_fmt(d['lo'], '{:+.1f}')}, {_fmt(d['hi'], '{:+.1f}')}] over {d['n_seeds']} seeds, "
                f"{d['n_tasks']} tasks")
    if d["n_seeds"] < MIN_SEEDS:
        verdict = TOO_FEW
    elif expect == "higher":
        verdict = HOLDS if d["lo"] > 0 else FAILS
    else:  # "similar": the interval holds 0, or the difference is within 10% of the baseline
        verdict = HOLDS if (d["lo"] <= 0 <= d["hi"]) or abs(d["diff"]) <= 0.1 * abs(d["b"]) else FAILS
    return _row(claim, paper, measured, verdict, rule, _cells(d["picked"]), d["n_seeds"])


def ln_lifts_scores(ev: Evidence) -> list[dict]:
    """Per line of each totals figure: LN against none at its smallest percent (<= 10%) and at 100%."""
    rows = []
    points = {}
    for fig in (ev.paper.get("totals") or {}).values():
        for p in fig.get("points", []):
            points[p["line"], p["critic"], float(p["percent"])] = p["total"]
    s = ev.scores
    specs = (ev.spec.get("totals") or {})
    rule_up = "holds if the LN total minus the no-LN total, paired by seed, has a 95% CI above 0"
    rule_same = "holds if the 95% CI of the LN - no-LN total holds 0 or the difference is within 10% of no-LN"
    if not _has(s) or not specs:
        return [_row("LN lifts scores on small X% datasets", "LN lifts every baseline at 10% and 1%; at 1% CQL "
                     "~50 -> ~300, TD3+BC ~70 -> ~228 (Fig. 9, Sec. 5.2)", "no evaluated X% runs", NOT_RUN, rule_up),
                _row("LN changes little at 100%", "at 100% LN changes little (Fig. 9, Sec. 5.2)",
                     "no evaluated X% runs", NOT_RUN, rule_same)]
    for name, spec in specs.items():
        lines = spec.get("lines") or {str(a): {"algorithms": [str(a)]} for a in s["algo"].unique()}
        for line, selector in lines.items():
            picked = s[select(s, {**selector, **{k: v for k, v in spec.items() if k in ("datasets",)}})]
            norms = set(picked["critic_norm"].astype(str))
            if not {"none", "ln"} <= norms:
                continue
            percents = sorted(set(pd.to_numeric(picked["percent"]).astype(float)))
            small = [p for p in percents if p <= 10]
            for percent, expect in ([(small[0], "higher")] if small else []) + \
                                   ([(100.0, "similar")] if 100.0 in percents else []):
                base = {**selector, "percents": [percent]}
                d = paired_difference(s, {**base, "critic_norms": ["ln"]}, {**base, "critic_norms": ["none"]})
                paper_ln, paper_none = points.get((line, "ln", percent)), points.get((line, "none", percent))
                quoted = f" (paper: {paper_none} -> {paper_ln})" if paper_ln is not None else ""
                if expect == "higher":
                    claim = f"LN lifts {line} at {percent:g}% ({name})"
                    paper = f"LN lifts every baseline at 10% and 1%{quoted} (Fig. 9, Sec. 5.2)"
                    rule = rule_up
                else:
                    claim = f"LN changes {line} little at 100% ({name})"
                    paper, rule = "at 100% LN changes little (Fig. 9, Sec. 5.2)", rule_same
                rows.append(_comparison_row(claim, paper, rule, d, ("LN total", "no-LN total"), expect))
    if not rows:
        rows.append(_row("LN lifts scores on small X% datasets", "LN lifts every baseline at 10% and 1% (Fig. 9)",
                         "no line was run both with and without LN", NOT_RUN, rule_up))
    return rows


def table_comparisons(ev: Evidence) -> list[dict]:
    """Diffusion-QL + LN against Diffusion-QL on AntMaze (Table 1); LN against BN and WN on the
    large mazes (Table 4): averages over the table's datasets, paired by seed."""
    rows = []
    tables = ev.spec.get("tables") or {}
    cases = (("table1", "Diffusion-QL + LN", "Diffusion-QL", "Diffusion-QL + LN beats Diffusion-QL on AntMaze"),
             ("table4", "LN", "BN", "BN is worse than LN on the large mazes"),
             ("table4", "LN", "WN", "WN is worse than LN on the large mazes"))
    rule = "holds if the average over the table's datasets, paired by seed, is higher with a 95% CI above 0"
    for table, better, worse, claim in cases:
        paper_t = (ev.paper.get("tables") or {}).get(table, {})
        avg = lambda col: np.mean([r[col] for r in paper_t.get("rows", {}).values() if col in r] or [math.nan])
        paper = f"{better} {avg(better):.1f} vs {worse} {avg(worse):.1f} on average ({paper_t.get('where', table)})"
        columns = (tables.get(table) or {}).get("columns") or {}
        if better not in columns or worse not in columns or not _has(ev.scores):
            rows.append(_row(claim, paper, f"no {table} runs of both columns", NOT_RUN, rule))
            continue
        d = paired_difference(ev.scores, columns[better], columns[worse], how="mean")
        rows.append(_comparison_row(claim, paper, rule, d, (better, worse), "higher"))
    return rows


# ------------------------------------------------------------------ online SAC and theory
def online_ema(ev: Evidence) -> list[dict]:
    from seemrl.analysis.seem import DEFAULT_Q_BOUND

    claim = "Online SAC without EMA diverges; LayerNorm fixes it"
    paper = "SAC without target EMA diverges online; with LN it trains without EMA (Fig. 11, Sec. 5.3)"
    rule = (f"holds if some no-EMA seed without LN reached |Q| > {DEFAULT_Q_BOUND:g} or a non-finite Q and no "
            f"no-EMA seed with LN did; >= {MIN_SEEDS} seeds each")
    m = ev.online
    if not _has(m) or not ev.online_variants:
        return [_row(claim, paper, "no online SAC runs", NOT_RUN, rule)]
    kinds = {}
    for name, v in ev.online_variants.items():
        if float(v.get("tau", 0.005)) >= 1.0:
            kinds[name] = "ln" if (v.get("critic") or {}).get("norm") == "layernorm" else "plain"
    q = pd.to_numeric(m["q_mean"], errors="coerce").abs()
    m = m.assign(_bad=~np.isfinite(q) | (q > DEFAULT_Q_BOUND))
    per_seed = m.groupby(["env", "variant", "seed"])["_bad"].any().reset_index()
    per_seed["kind"] = per_seed["variant"].map(kinds)
    plain, ln = per_seed[per_seed["kind"] == "plain"], per_seed[per_seed["kind"] == "ln"]
    if not len(plain) or not len(ln):
        return [_row(claim, paper, "no no-EMA variants with and without LN", NOT_RUN, rule)]
    measured = (f"without EMA: {int(plain['_bad'].sum())} of {len(plain)} seeds diverged without LN, "
                f"{int(ln['_bad'].sum())} of {len(ln)} with LN")
    verdict = TOO_FEW if min(len(plain), len(ln)) < MIN_SEEDS else \
        (HOLDS if plain["_bad"].any() and not ln["_bad"].any() else FAILS)
    runs = "; ".join(sorted(set(per_seed["env"] + "/" + per_seed["variant"])))
    return [_row(claim, paper, measured, verdict, rule, runs, len(plain) + len(ln))]


def _theory_row(ev: Evidence, file: str, claim: str, paper: str, rule: str, check) -> dict:
    """A theory claim from one summary file: `check(frame)` -> (measured, passed)."""
    s = ev.theory.get(file)
    if not _has(s):
        return _row(claim, paper, "theory experiment not run", NOT_RUN, rule)
    measured, passed = check(s)
    return _row(claim, paper, measured, HOLDS if passed else FAILS, rule, f"theory {file}", len(s))


def theory_claims(ev: Evidence) -> list[dict]:
    facts = ev.paper.get("theory", {})

    def fact(key, default):
        return (facts.get(key) or {}).get("value", default)

    ratio, step = fact("ntk_map_ratio_no_ln", 4.5), fact("toy_crash_step", 605)
    k5 = fact("homogeneity_output_k5", 124.99)

    def ntk(s):
        r = s.groupby("layernorm")["ratio_probe"].mean()
        no, yes = float(r.get(False, math.nan)), float(r.get(True, math.nan))
        return f"ratio without LN {no:.2f}, with LN {yes:.2f}", abs(no - ratio) <= 0.25 * ratio and yes < 1

    def baird(s):
        lin, ln = s[s["variant"] == "linear"], s[s["variant"] == "layernorm"]
        measured = "; ".join(f"{v}: {'diverged' if d else 'bounded'} (max norm {n:.3g})"
                             for v, d, n in zip(s["variant"], s["diverged"], s["max_param_norm"]))
        passed = len(lin) > 0 and len(ln) > 0 and lin["diverged"].astype(bool).all() and not ln["diverged"].any()
        return measured, bool(passed)

    def toy(s):
        r = s.iloc[0]
        err = float(r.get("rel_error", math.nan))
        return (f"crash at {_fmt(float(r['crash_step']), '{:.0f}')}, predicted "
                f"{_fmt(float(r['predicted_step']), '{:.0f}')} ({_fmt(err, '{:+.1%}')})",
                math.isfinite(err) and abs(err) <= 0.05)

    def homogeneity(s):
        expect = s["lambda"].astype(float) ** s["n_layers"].astype(float)
        rel = (s["output_ratio_single"].astype(float) / expect - 1).abs()
        return "; ".join(f"k={k:g}: x{v:.5g}" for k, v in zip(s["lambda"], s["output_ratio_single"])), \
            bool((rel <= 0.01).all())

    return [
        _theory_row(ev, "ntk_map_summary.csv", "NTK map: LayerNorm localises the kernel",
                    f"without LN k(x0, (4,4)) is ~{ratio}x k(x0, x0); with LN the far kernel is small (Fig. 5)",
                    "holds if the no-LN ratio is within 25% of the paper's and the LN ratio is below 1", ntk),
        _theory_row(ev, "baird_summary.csv", "Baird's counterexample is bounded with LayerNorm",
                    "semi-gradient TD diverges on Baird's MDP; with LN before the linear map it converges (Fig. 14)",
                    "holds if the linear variant diverged and the LayerNorm variant (with affine, the paper's) "
                    "did not", baird),
        _theory_row(ev, "toy_summary.csv", "Toy with SGD: the crash step is predicted",
                    f"predicted and observed crash at step {step} (Fig. 2, Thm. 3)",
                    "holds if |predicted - observed| <= 5% of observed", toy),
        _theory_row(ev, "homogeneity_table.csv", "Homogeneity: scaling weights by k scales Q by k^L",
                    f"k = 5: output x{k5} (5^3 = 125) (Table 3, Lemma 1)",
                    "holds if every output ratio is within 1% of k^L", homogeneity),
    ]


CHECKS: tuple[Callable[[Evidence], list[dict]], ...] = (
    seem_precedes_divergence, seem_surge_precedes_divergence, nonpositive_seem_bounded, adam_growth, sgd_crash, ln_bounds_q, ln_lifts_scores,
    table_comparisons, online_ema, theory_claims)


def claims_table(ev: Evidence) -> pd.DataFrame:
    return pd.DataFrame([row for check in CHECKS for row in check(ev)], columns=list(COLUMNS))


def scale_note(ev: Evidence) -> str:
    """The runs' scale beside the paper's: steps, seeds, transitions."""
    s = ev.scores if _has(ev.scores) else ev.seeds
    if not _has(s):
        return "No offline runs in this report."
    steps = pd.to_numeric(s["steps"] if "steps" in s else s.get("final_step"), errors="coerce").dropna()
    seeds = s.groupby(["dataset", "percent", "algo", "critic_norm"])["seed"].nunique()
    span = lambda v: f"{int(v.min()):,}" + ("" if v.min() == v.max() else f"-{int(v.max()):,}")
    text = f"These runs: {len(seeds)} cells, {span(seeds)} seeds per cell, {span(steps)} gradient steps"
    if "n_transitions" in s and s["n_transitions"].notna().any():
        text += f", {span(pd.to_numeric(s['n_transitions'], errors='coerce').dropna())} transitions per training set"
    text += (f". The paper: {PAPER_STEPS:,} steps and {PAPER_SEEDS} seeds (Table 1, Fig. 8/9) on D4RL's datasets "
             "(about 1M transitions at 100%).")
    if steps.max() < PAPER_STEPS / 10 or seeds.max() < MIN_SEEDS:
        text += (" At this scale a verdict says what these runs show, not whether the paper's numbers reproduce:"
                 " too few steps for divergence or for scores to separate, too few seeds for an interval.")
    return text


def claims_markdown(table: pd.DataFrame, note: str) -> str:
    from seemrl.io import to_markdown

    counts = table["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in (HOLDS, FAILS, TOO_FEW, NOT_RUN))
    return "\n".join(["# The paper's claims against these runs", "", note, "", f"Verdicts: {summary}.", "",
                      to_markdown(table[["claim", "paper", "measured", "verdict", "rule"]]), "",
                      "Runs used per claim: claims.csv (`runs`, `n` = seeds or cases counted).", ""])
