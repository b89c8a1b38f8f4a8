"""The paper's tables, totals over tasks and the claims report, computed from synthetic per-seed
scores whose answers are known: cells, the paper's numbers beside ours, differences, averages,
totals and gains paired by seed, and each verdict of the claims report reached for its reason."""
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT

from seemrl.report import claims, tables

PAPER = yaml.safe_load((ROOT / "config/paper/paper_results.yaml").read_text())


def scores_frame(cells: dict, seeds=range(5)) -> pd.DataFrame:
    """{(dataset, percent, algo, critic_norm): score of seed 0} -> per-seed rows; seed s adds s."""
    rows = []
    for (dataset, percent, algo, norm), base in cells.items():
        for s in seeds:
            rows.append({"dataset": dataset, "percent": percent, "algo": algo, "critic_norm": norm, "seed": s,
                         "final_score": base + s + 1.0, "last10_score": base + s, "best_score": base + s + 2.0,
                         "steps": 1000, "n_transitions": 500})
    return pd.DataFrame(rows)


MAZES = ("antmaze-umaze-v0", "antmaze-large-play-v0")
TABLE1 = {"columns": {"TD3+BC": {"algorithms": ["td3bc"], "critic_norms": ["none"]},
                      "Diffusion-QL": {"algorithms": ["diffql_*"], "critic_norms": ["none"]},
                      "Diffusion-QL + LN": {"algorithms": ["diffql_*"], "critic_norms": ["ln"]}}}


def test_paper_table_cells_beside_the_papers_numbers():
    scores = scores_frame({("antmaze-umaze-v0", 100, "diffql_umaze", "none"): 50.0,
                           ("antmaze-umaze-v0", 100, "diffql_umaze", "ln"): 90.0,
                           ("antmaze-large-play-v0", 100, "diffql_large", "ln"): 60.0,
                           ("antmaze-large-play-v0", 100, "diffql_large", "none"): 0.0})
    shuffled = {"columns": dict(sorted(TABLE1["columns"].items(), reverse=True))}
    table = tables.paper_table(scores, "table1", shuffled, PAPER["tables"]["table1"])
    assert list(table.column[:3]) == ["TD3+BC", "Diffusion-QL", "Diffusion-QL + LN"]  # the paper's column order
    # the paper's row order, then the average row; every column kept
    assert list(table.dataset) == [*(m for m in MAZES for _ in range(3)), "average", "average", "average"]
    cell = table[(table.dataset == "antmaze-umaze-v0") & (table.column == "Diffusion-QL + LN")].iloc[0]
    assert cell.n_seeds == 5 and cell.last10_mean == 92.0 and cell.last10_std == pytest.approx(np.std(range(5), ddof=1))
    assert (cell.final_mean, cell.best_mean) == (93.0, 94.0)
    assert (cell.paper, cell.paper_std, cell.paper_best) == (94.3, 0.5, 97.0)
    assert cell["diff"] == pytest.approx(92.0 - 94.3)
    assert cell.last10_iqm_lo <= cell.last10_iqm <= cell.last10_iqm_hi
    assert cell.algo == "diffql_umaze" and cell.critic_norm == "ln"
    td3 = table[(table.dataset == "antmaze-umaze-v0") & (table.column == "TD3+BC")].iloc[0]
    assert td3.n_seeds == 0 and math.isnan(td3.last10_mean) and td3.paper == 40.2  # not run: the paper's number stays
    average = table[table.dataset == "average"].set_index("column")
    assert average.loc["Diffusion-QL + LN", "last10_mean"] == pytest.approx((92.0 + 62.0) / 2)
    assert average.loc["Diffusion-QL + LN", "paper"] == pytest.approx((94.3 + 65.4) / 2)  # over the same rows
    display = tables.paper_table_display(table)
    assert display.loc[0, "Diffusion-QL + LN"] == "92.0 ± 1.6" and display.loc[0, "Diffusion-QL + LN: paper"] == \
        "94.3 ± 0.5" and display.loc[0, "Diffusion-QL + LN: Δ"] == "-2.3"
    assert display.loc[0, "TD3+BC"] == "not run"


def test_paper_table_across_versions_and_an_ambiguous_column():
    scores = scores_frame({("antmaze-umaze-v2", 100, "diffql_a", "ln"): 10.0})
    table = tables.paper_table(scores, "table1", TABLE1, PAPER["tables"]["table1"])
    assert table.loc[table.column == "Diffusion-QL + LN", "paper_dataset"].iloc[0] == "antmaze-umaze-v0"
    caption = tables.paper_table_caption(table, "T", "W", {"antmaze-umaze-v2": "a D4RL file"})
    assert "antmaze-umaze-v2 against the paper's antmaze-umaze-v0" in caption and "5 seeds per cell" in caption
    two = pd.concat([scores, scores_frame({("antmaze-umaze-v2", 100, "diffql_b", "ln"): 20.0})])
    with pytest.raises(ValueError, match="column 'Diffusion-QL \\+ LN' selects 2 runs of one dataset"):
        tables.paper_table(two, "table1", TABLE1, PAPER["tables"]["table1"])


def test_latex_of_a_paper_table(tmp_path):
    scores = scores_frame({("antmaze-umaze-v0", 100, "diffql_u", "ln"): 90.0})
    display = tables.paper_table_display(tables.paper_table(scores, "table1", TABLE1, PAPER["tables"]["table1"]))
    tables.write_latex(display, tmp_path / "t.tex", "Table 1, 100% of the data")
    tex = (tmp_path / "t.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "100\\%" in tex and "not run" in tex


def test_totals_sum_over_tasks_per_seed_and_pair_gains_by_seed():
    cells = {}
    for d, base in (("hopper-medium-v2", 10.0), ("walker2d-medium-v2", 20.0)):
        for p in (1, 100):
            cells[d, p, "cql", "none"] = base
            cells[d, p, "cql", "ln"] = base + (30.0 if p == 1 else 0.0)
    scores = scores_frame(cells)
    totals = tables.totals_table(scores, {"lines": {"CQL": {"algorithms": ["cql"]}}},
                                 PAPER["totals"]["fig8"]["points"])
    total = totals[totals.kind == "total"].set_index(["critic_norm", "percent"])
    # per seed s: (10 + s) + (20 + s) = 30 + 2s; mean over s = 0..4 is 34
    assert total.loc[("none", 1), "mean"] == 34.0 and total.loc[("none", 1), "n_tasks"] == 2
    assert total.loc[("none", 1), "std"] == pytest.approx(np.std([30 + 2 * s for s in range(5)], ddof=1))
    assert total.loc[("ln", 1), "mean"] == 94.0
    assert (total.loc[("none", 1), "paper"], total.loc[("ln", 1), "paper"]) == (50, 300)  # the paper's stated totals
    assert math.isnan(total.loc[("none", 100), "paper"])
    gain = totals[totals.kind == "gain"].set_index("percent")
    assert gain.loc[1, "mean"] == 60.0 and gain.loc[1, "std"] == 0.0  # paired by seed: the same gain for each
    assert gain.loc[100, "mean"] == 0.0
    assert len(totals[totals.kind == "task"]) == 8
    # a seed missing from one task leaves that seed out of the total
    dropped = scores.drop(scores[(scores.dataset == "hopper-medium-v2") & (scores.seed == 4)].index)
    again = tables.totals_table(dropped, {"lines": {"CQL": {"algorithms": ["cql"]}}})
    assert again[(again.kind == "total")].n_seeds.unique().tolist() == [4]


def test_iqm_over_all_runs_with_a_stratified_interval_and_performance_profiles():
    cells = {("hopper-medium-v2", 10, "cql", "none"): 10.0, ("walker2d-medium-v2", 10, "cql", "none"): 50.0}
    scores = scores_frame(cells)  # runs: 10..14 and 50..54
    totals = tables.totals_table(scores, {"lines": {"CQL": {"algorithms": ["cql"]}}})
    row = totals[totals.kind == "iqm"].iloc[0]
    pooled = np.sort(np.r_[np.arange(10, 15), np.arange(50, 55)].astype(float))
    assert row["mean"] == pytest.approx(pooled[2:8].mean()) and row.n_tasks == 2 and row.n_seeds == 10
    assert row.lo <= row["mean"] <= row.hi
    # resampling within each task keeps 5 runs of each: the interval never reaches a task-only IQM
    assert row.lo > 14.0 and row.hi < 50.0
    # one run per task: nothing to resample, no interval
    assert all(math.isnan(v) for v in tables.stratified_bootstrap_iqm([np.array([1.0]), np.array([2.0])]))
    profile = tables.performance_profile(scores, {"lines": {"CQL": {"algorithms": ["cql"]}}})
    at = profile.set_index("tau")["fraction"]
    assert at.iloc[0] == 1.0 and at.iloc[-1] == 0.0 and at.is_monotonic_decreasing
    assert profile.tau.max() == 54.0 and at[at.index > 14.0].iloc[0] == 0.5  # half the runs score above 14


def test_selectors_globs_and_percents():
    scores = scores_frame({("a-v2", 10, "diffql_umaze", "ln"): 0.0, ("b-v2", 1, "td3bc", "none"): 0.0}, seeds=[0])
    assert tables.select(scores, {"algorithms": ["diffql_*"]}).tolist() == [True, False]
    assert tables.select(scores, {"percents": [1]}).tolist() == [False, True]
    assert tables.select(scores, {"datasets": ["b-*"], "critic_norms": ["none"]}).tolist() == [False, True]
    assert tables.select(scores, None).all()


def test_iqm_and_its_bootstrap_interval():
    assert tables.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(np.mean([2, 3, 4, 5]))
    lo, hi = tables.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= lo <= 3.0 <= hi <= 5.0
    assert tables.bootstrap_ci([1.0, 2.0, 3.0]) == tables.bootstrap_ci([1.0, 2.0, 3.0])  # a fixed resampling seed
    assert all(math.isnan(v) for v in tables.bootstrap_ci([1.0]))


def test_summary_percents_in_numeric_order():
    rows = pd.DataFrame({"dataset": "d", "percent": [100, 50, 10, 1], "algo": "a", "critic_norm": "none",
                         "seed": 0})
    assert tables.sort_cells(rows).percent.tolist() == [1, 10, 50, 100]


# ------------------------------------------------------------------ claims
def predictions(rows) -> pd.DataFrame:
    keys = ("dataset", "percent", "algo", "critic_norm", "seed", "seem_positive", "q_diverged", "lead_time",
            "optimizer", "norm_r2", "loglog_slope_t_minus_t0", "n_layers", "sgd_pred_crash_step", "sgd_obs_crash_step")
    return pd.DataFrame([dict(zip(keys, r)) for r in rows])


def verdicts(ev) -> dict:
    return claims.claims_table(ev).set_index("claim")["verdict"].to_dict()


def test_claims_seem_predictions_each_verdict():
    # 4 diverged seeds, each with SEEM positive first (lead 500), 4 bounded seeds with SEEM never positive
    good = predictions([("d", 100, "td3", "none", s, True, True, 500.0, "adam", 0.99, 3.1, 3, math.nan, math.nan)
                        for s in range(4)] +
                       [("d", 100, "td3", "ln", s, False, False, math.nan, "adam", math.nan, math.nan, 3, math.nan,
                         math.nan) for s in range(4)])
    v = verdicts(claims.Evidence(predictions=good))
    assert v["SEEM > 0 precedes Q divergence"] == "holds"
    assert v["SEEM <= 0 throughout => Q stays bounded"] == "holds"
    assert v["Adam: parameter norm grows linearly after divergence"] == "holds"
    assert v["Adam: log Q against log t has slope ~ L"] == "holds"
    assert v["SGD: the crash step is predicted"] == "not run here"
    # SEEM positive on the bounded seeds too: precision 0.5, the claim fails; a slope of 1.5 is not ~L = 3
    bad = good.assign(seem_positive=True, loglog_slope_t_minus_t0=1.5)
    v = verdicts(claims.Evidence(predictions=bad))
    assert v["SEEM > 0 precedes Q divergence"] == "does not hold"
    assert v["Adam: log Q against log t has slope ~ L"] == "does not hold"
    assert v["SEEM <= 0 throughout => Q stays bounded"] == "too few runs"  # no seed left with SEEM <= 0
    # nothing diverged: nothing to predict
    calm = good.assign(q_diverged=False)
    assert verdicts(claims.Evidence(predictions=calm))["SEEM > 0 precedes Q divergence"] == "too few runs"
    # no SEEM analysis at all
    assert verdicts(claims.Evidence())["SEEM > 0 precedes Q divergence"] == "not run here"
    # only the SEEM setting counts: false alarms in runs with BC or EMA targets are left out, and
    # without any run in the setting the claim is not run
    marked = pd.concat([good.assign(seem_setting=True),
                        good.assign(seem_setting=False, seem_positive=True, q_diverged=False, algo="td3bc")])
    table = claims.claims_table(claims.Evidence(predictions=marked)).set_index("claim")
    assert table.loc["SEEM > 0 precedes Q divergence", "verdict"] == "holds"
    assert "8 seeds outside the setting left out" in table.loc["SEEM > 0 precedes Q divergence", "measured"]
    outside = verdicts(claims.Evidence(predictions=good.assign(seem_setting=False)))
    assert outside["SEEM > 0 precedes Q divergence"] == "not run here"


def test_claims_seem_surge_each_verdict():
    rows = [("d", 100, "td3", "none", s, True, True, 500.0, "adam", 0.99, 3.1, 3, math.nan, math.nan)
            for s in range(3)] + [("d", 100, "td3", "ln", s, True, False, math.nan, "adam", math.nan, math.nan, 3,
                                   math.nan, math.nan) for s in range(3)]
    base = predictions(rows).assign(seem_setting=True)
    claim = "Normalised SEEM surges before Q diverges"
    # SEEM positive everywhere (the sign fails), but only the diverged seeds surge, 300 steps ahead
    good = base.assign(seem_surged=[True] * 3 + [False] * 3, surge_lead_time=[300.0] * 3 + [math.nan] * 3,
                       max_seem_normalized_before=[0.8, 0.7, 0.9, 0.02, 0.03, 0.01])
    table = claims.claims_table(claims.Evidence(predictions=good)).set_index("claim")
    assert table.loc["SEEM > 0 precedes Q divergence", "verdict"] == "does not hold"
    assert table.loc[claim, "verdict"] == "holds"
    assert "median lead 300 steps" in table.loc[claim, "measured"] and "AUROC" in table.loc[claim, "measured"]
    assert "1.00" in table.loc[claim, "measured"].split("AUROC")[1]
    # surging only after divergence is a miss; surging in bounded seeds is a false alarm
    late = good.assign(surge_lead_time=[-100.0] * 3 + [math.nan] * 3)
    assert verdicts(claims.Evidence(predictions=late))[claim] == "does not hold"
    noisy = good.assign(seem_surged=True)
    assert verdicts(claims.Evidence(predictions=noisy))[claim] == "does not hold"
    # predictions made before the surge columns existed
    assert verdicts(claims.Evidence(predictions=base))[claim] == "not run here"


def test_claims_sgd_crash_prediction():
    rows = [("d", 100, "td3", "none", s, True, True, 100.0, "sgd", math.nan, math.nan, 3, 1000.0 + 20 * s, 1000.0)
            for s in range(3)]
    assert verdicts(claims.Evidence(predictions=predictions(rows)))["SGD: the crash step is predicted"] == "holds"
    far = [r[:12] + (2000.0, 1000.0) for r in rows]
    assert verdicts(claims.Evidence(predictions=predictions(far)))["SGD: the crash step is predicted"] == \
        "does not hold"


def test_claims_layernorm_scores_and_tables():
    cells = {}
    for d in ("hopper-medium-v2", "walker2d-medium-v2"):
        cells[d, 1, "cql", "none"], cells[d, 1, "cql", "ln"] = 10.0, 40.0
        cells[d, 100, "cql", "none"], cells[d, 100, "cql", "ln"] = 50.0, 50.5
    spec = {"totals": {"fig8": {"paper": "fig8", "lines": {"CQL": {"algorithms": ["cql"]}}}}}
    table = claims.claims_table(claims.Evidence(scores=scores_frame(cells), paper=PAPER, spec=spec)).set_index("claim")
    lift = table.loc["LN lifts CQL at 1% (fig8)"]
    assert lift.verdict == "holds" and "(paper: 50 -> 300)" in lift.paper and "+60.0" in lift.measured
    assert table.loc["LN changes CQL little at 100% (fig8)", "verdict"] == "holds"
    # LN lowering the 1% total: the claim fails
    worse = {k: (5.0 if k[3] == "ln" and k[1] == 1 else v) for k, v in cells.items()}
    table = claims.claims_table(claims.Evidence(scores=scores_frame(worse), paper=PAPER, spec=spec)).set_index("claim")
    assert table.loc["LN lifts CQL at 1% (fig8)", "verdict"] == "does not hold"
    # two seeds: too few for an interval
    table = claims.claims_table(claims.Evidence(scores=scores_frame(cells, seeds=[0, 1]), paper=PAPER,
                                                spec=spec)).set_index("claim")
    assert table.loc["LN lifts CQL at 1% (fig8)", "verdict"] == "too few runs"
    # Table 4: LN against BN and WN on the large mazes
    t4 = {"columns": {"LN": {"critic_norms": ["ln"]}, "BN": {"critic_norms": ["bn"]}, "WN": {"critic_norms": ["wn"]}}}
    maze = {("antmaze-large-play-v0", 100, "diffql", "ln"): 70.0, ("antmaze-large-play-v0", 100, "diffql", "bn"): 1.0,
            ("antmaze-large-play-v0", 100, "diffql", "wn"): 80.0}
    v = verdicts(claims.Evidence(scores=scores_frame(maze), paper=PAPER, spec={"tables": {"table4": t4}}))
    assert v["BN is worse than LN on the large mazes"] == "holds"
    assert v["WN is worse than LN on the large mazes"] == "does not hold"
    assert v["Diffusion-QL + LN beats Diffusion-QL on AntMaze"] == "not run here"


def test_claims_layernorm_bounds_q_from_the_seed_table():
    seeds = pd.DataFrame([{"dataset": "d", "percent": 10, "algo": "td3", "critic_norm": n, "seed": s,
                           "diverged": n == "none"} for n in ("none", "ln") for s in range(3)])
    assert verdicts(claims.Evidence(seeds=seeds))[
        "LayerNorm keeps Q bounded where the critic without it diverges"] == "holds"
    seeds.loc[seeds.critic_norm == "ln", "diverged"] = True
    assert verdicts(claims.Evidence(seeds=seeds))[
        "LayerNorm keeps Q bounded where the critic without it diverges"] == "does not hold"
    seeds["diverged"] = False
    assert verdicts(claims.Evidence(seeds=seeds))[
        "LayerNorm keeps Q bounded where the critic without it diverges"] == "too few runs"


def test_claims_online_sac_and_theory():
    variants = {"sac_ema": {"tau": 0.005}, "sac_no_ema": {"tau": 1.0},
                "sac_no_ema_ln": {"tau": 1.0, "critic": {"norm": "layernorm"}}}
    online = pd.DataFrame([{"env": "Hopper-v5", "variant": v, "seed": s, "step": t,
                            "q_mean": (1e6 * t if v == "sac_no_ema" else 50.0)}
                           for v in variants for s in range(3) for t in (1, 2)])
    ev = claims.Evidence(online=online, online_variants=variants, paper=PAPER, theory={
        "ntk_map_summary.csv": pd.DataFrame({"layernorm": [False, True], "ratio_probe": [4.4, 0.3]}),
        "baird_summary.csv": pd.DataFrame({"variant": ["linear", "layernorm"], "diverged": [True, False],
                                           "max_param_norm": [1e9, 3.0]}),
        "toy_summary.csv": pd.DataFrame({"crash_step": [605.0], "predicted_step": [640.0],
                                         "rel_error": [35 / 605]}),
        "homogeneity_table.csv": pd.DataFrame({"lambda": [5.0], "n_layers": [3], "output_ratio_single": [124.99]})})
    v = verdicts(ev)
    assert v["Online SAC without EMA diverges; LayerNorm fixes it"] == "holds"
    assert v["NTK map: LayerNorm localises the kernel"] == "holds"
    assert v["Baird's counterexample is bounded with LayerNorm"] == "holds"
    assert v["Toy with SGD: the crash step is predicted"] == "does not hold"  # 5.8% off
    assert v["Homogeneity: scaling weights by k scales Q by k^L"] == "holds"
    assert verdicts(claims.Evidence())["Baird's counterexample is bounded with LayerNorm"] == "not run here"


def test_claims_markdown_states_the_scale():
    scores = scores_frame({("d", 10, "td3", "none"): 1.0}, seeds=[0, 1])
    ev = claims.Evidence(scores=scores)
    note = claims.scale_note(ev)
    assert "1 cells, 2 seeds per cell, 1,000 gradient steps, 500 transitions" in note
    assert "not whether the paper's numbers reproduce" in note
    text = claims.claims_markdown(claims.claims_table(ev), note)
    assert text.startswith("# The paper's claims") and note in text
    assert "| claim" in text and "not run here" in text
