"""The paper's predictions (`seemrl.analysis.predictions`) on synthetic runs with known answers,
on degenerate input (NaN, inf, empty, no divergence), and end to end on a tiny real run."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.analysis.predictions import (RunOutputs, adam_growth, auroc, first_nonfinite_step, first_positive_step,
                                         first_q_divergence_step, lead_times, linear_fit, load_run, precision_recall,
                                         predictions_table, sgd_crash, sgd_exponent, summary_markdown)
from seemrl.data.preparation import state_normalizer
from seemrl.training.draws import OfflineData

nan = math.nan


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize("seem, k, expected", [
    ([-1, 1e-3, -1, 1e-3, 1e-3, 1e-3], 2, 3),  # a lone positive reading is not enough
    ([-1, 1e-3, -1, 1e-3, 1e-3, 1e-3], 1, 1),
    ([-1, -1, 1e-3, nan, nan, nan], 2, 2),  # a streak cut short by the crash counts
    ([1e-3, nan, 1e-3, -1], 2, nan),  # a NaN followed by finite readings breaks the streak
    ([1e-9, 1e-9, 1e-9], 2, nan),  # ~0 (a singular A) is not positive
    ([nan, nan], 2, nan),
    ([], 2, nan),
    ([-1, 1e-3, 1e-3, -1, -1], 2, 1),  # positive once for k readings: detected, even if it falls back
])
def test_first_positive_step(seem, k, expected):
    steps = [10 * i for i in range(len(seem))]
    got = first_positive_step(steps, seem, positive_tol=1e-6, k=k)
    assert (math.isnan(got) and math.isnan(expected)) or got == 10 * expected


def test_first_positive_step_sorts_by_step_and_q_divergence_step():
    assert first_positive_step([30, 0, 20, 10], [1, -1, 1, -1], k=2) == 20
    assert first_q_divergence_step([0, 1, 2, 3], [1.0, -2e4, 5.0, nan], q_bound=1e4) == 1
    assert first_q_divergence_step([0, 1, 2], [1.0, math.inf, 1.0]) == 1
    assert first_q_divergence_step([0, 1, 2], [1.0, 2.0, 3.0], flagged=[False, False, True]) == 2
    assert math.isnan(first_q_divergence_step([0, 1], [1.0, 2.0]))
    assert first_nonfinite_step([0, 1, 2], [1e30, -math.inf, nan]) == 1


def _two_runs():
    """Run a (seeds 0, 1) and run b (seed 0), checkpoints every 100 steps up to 500."""
    rows = []
    steps = np.arange(0, 600, 100)
    spec = {  # (run, seed): (normalised SEEM, mean Q on data)
        ("a", 0): ([-0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 5, 50, 2e4, 1e6, 1e8]),  # positive 100, diverges 300
        ("a", 1): ([-0.1] * 6, [1, 1, 1, 1, 1, 1]),  # stable
        ("b", 0): ([-0.1, -0.1, -0.1, 0.2, nan, nan], [1, 1, 1, 10, nan, nan]),  # positive 300, NaN at 400
    }
    for (run, seed), (s, q) in spec.items():
        for t, si, qi in zip(steps, s, q):
            rows.append({"run": run, "step": t, "seed": seed, "seem_normalized": si, "q_data_mean": qi,
                         "diverged": not math.isfinite(qi)})
    return pd.DataFrame(rows)


def test_lead_times_and_precision_recall_on_known_runs():
    frame = _two_runs()
    metrics = pd.DataFrame([{"run": "a", "seed": 0, "step": t, "q_mean": 50.0 * t} for t in range(0, 600, 10)])
    diverged = pd.DataFrame([{"run": "b", "seed": 0, "diverged_step": 350}, {"run": "a", "seed": 1, "diverged_step": None}])
    table = lead_times(frame, q_bound=1e4, positive_tol=1e-6, k=2, metrics=metrics, diverged_steps=diverged).set_index(["run", "seed"])
    a0, a1, b0 = table.loc[("a", 0)], table.loc[("a", 1)], table.loc[("b", 0)]
    assert a0.first_positive_seem_step == 100 and a0.q_diverged_step_checkpoints == 300
    assert a0.q_diverged_step_metrics == 210  # the logged Q (every 10 steps) exceeds 1e4 first at 210
    assert a0.q_diverged_step == 210 and a0.lead_time == 110 and a0.seem_positive and a0.q_diverged
    assert not a1.seem_positive and not a1.q_diverged and math.isnan(a1.lead_time)
    assert math.isnan(a1.trainer_diverged_step)
    # b: positive at 300 (streak ended by the crash), trainer saw NaN at 350, the checkpoint at 400
    assert b0.first_positive_seem_step == 300 and b0.trainer_diverged_step == 350
    assert b0.q_diverged_step == 350 and b0.lead_time == 50
    pr = precision_recall(table.reset_index())
    assert (pr["tp"], pr["fp"], pr["fn"], pr["tn"]) == (2, 0, 0, 1)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0
    # SEEM turning positive only after Q diverged is a miss when a lead is required
    late = table.reset_index().assign(lead_time=[110.0, nan, -50.0])
    assert precision_recall(late, require_lead=True)["fn"] == 1
    assert precision_recall(late)["fn"] == 0


def test_surge_lead_times_and_the_largest_seem_before_divergence():
    """A surge is normalised SEEM above `surge` for k checkpoints; its lead is counted as the sign's,
    and the largest normalised SEEM is taken before Q diverged (the whole run if it never did)."""
    frame = _two_runs()
    diverged = pd.DataFrame([{"run": "b", "seed": 0, "diverged_step": 350}])
    table = lead_times(frame, q_bound=1e4, k=2, diverged_steps=diverged, surge=0.25).set_index(["run", "seed"])
    a0, a1, b0 = table.loc[("a", 0)], table.loc[("a", 1)], table.loc[("b", 0)]
    # a0: 0.3 at 200 and 0.4 at 300 are the first two readings above 0.25; Q diverges at 300
    assert a0.first_surge_step == 200 and a0.seem_surged and a0.surge_lead_time == 100
    assert a0.max_seem_normalized_before == pytest.approx(0.3)  # 0.4 is at the divergence step itself
    assert not a1.seem_surged and math.isnan(a1.surge_lead_time) and a1.max_seem_normalized_before == -0.1
    # b0: 0.2 never passes 0.25 (its positive streak is cut by the crash); before 350: at most 0.2
    assert not b0.seem_surged and b0.max_seem_normalized_before == pytest.approx(0.2)
    # the default threshold is 0.1: b0's single 0.2 before its crash is then a surge (streak cut by the crash)
    default = lead_times(frame, q_bound=1e4, k=2, diverged_steps=diverged).set_index(["run", "seed"])
    assert default.loc[("b", 0)].first_surge_step == 300 and default.loc[("a", 0)].first_surge_step == 100
    pr = precision_recall(table.reset_index(), True, "seem_surged", "surge_lead_time")
    assert (pr["tp"], pr["fp"], pr["fn"], pr["tn"]) == (1, 0, 1, 1)


@pytest.mark.parametrize("diverged, score, expected", [
    ([True, True, False, False], [0.9, 0.8, 0.1, 0.2], 1.0),
    ([True, True, False, False], [0.1, 0.2, 0.9, 0.8], 0.0),
    ([True, False, False], [0.5, 0.5, 0.1], 0.75),  # a tie counts a half
    ([True, False], [nan, 0.1], 0.0),  # no finite reading: the lowest score
    ([True, True], [0.9, 0.8], nan),  # one kind only
    ([], [], nan),
])
def test_auroc(diverged, score, expected):
    got = auroc(pd.DataFrame({"q_diverged": diverged, "max_seem_normalized_before": score}))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_lead_times_of_a_single_run_with_a_seed_map_and_degenerate_input():
    frame = _two_runs()
    one = frame[frame.run == "b"].drop(columns="run")
    table = lead_times(one, diverged_steps={"0": 350})
    assert table.loc[0, "trainer_diverged_step"] == 350 and table.loc[0, "q_diverged_step"] == 350
    with pytest.raises(ValueError):  # a seed map cannot tell runs apart
        lead_times(frame, diverged_steps={"0": 350})
    empty = lead_times(frame.iloc[:0])
    assert len(empty) == 0 and "lead_time" in empty.columns
    pr = precision_recall(empty)
    assert pr["n"] == 0 and math.isnan(pr["precision"]) and math.isnan(pr["recall"])
    # all NaN, inf, no SEEM column: no exception
    weird = pd.DataFrame({"step": [0, 1, 2], "seed": 0, "q_data_mean": [nan, math.inf, -math.inf]})
    row = lead_times(weird).iloc[0]
    assert not row.seem_positive and row.q_diverged and row.q_diverged_step == 0


# ------------------------------------------------------------------ Adam
def test_adam_growth_recovers_linear_norm_and_cubic_q():
    t = np.arange(1000, 20001, 1000, dtype=float)
    fit = adam_growth(t, 3.0 + 0.05 * t, 2e-9 * t ** 3, t0=1000, n_layers=3, lr=3e-4, n_params=10_000)
    assert fit["norm_slope"] == pytest.approx(0.05) and fit["norm_intercept"] == pytest.approx(3.0)
    assert fit["norm_r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["loglog_slope_t"] == pytest.approx(3.0) and fit["loglog_r2_t"] == pytest.approx(1.0)
    assert fit["norm_slope_theory"] == pytest.approx(3e-4 * 100)
    assert fit["adam_n_points"] == 20
    # Q ~ (t - t0)^3: exact against t - t0, flatter against t
    t0 = 5000.0
    q = -(np.clip(t - t0, 0, None) ** 3) - 1.0  # negative Q diverging: |Q| is what grows
    fit = adam_growth(t, t, q, t0=t0)
    assert fit["loglog_slope_t_minus_t0"] == pytest.approx(3.0, rel=1e-3)
    assert fit["loglog_slope_t"] > 3.0  # a later start makes the apparent slope in log t steeper
    # before t0 nothing is used
    t_all = np.arange(0, 20001, 1000, dtype=float)
    pre = np.where(t_all < t0, 100.0 * np.sin(t_all), 1.0 + 0.05 * t_all)
    assert adam_growth(t_all, pre, t_all ** 3, t0=t0)["norm_r2"] == pytest.approx(1.0)


def test_adam_growth_degenerate():
    t = np.arange(10, dtype=float)
    out = adam_growth(t, t, t ** 3, t0=nan)  # no critical point: nothing is fitted
    assert math.isnan(out["norm_slope"]) and math.isnan(out["loglog_slope_t"]) and out["adam_n_points"] == 0
    out = adam_growth(t, [nan] * 10, [0.0] * 10, t0=None)
    assert math.isnan(out["norm_slope"]) and math.isnan(out["loglog_slope_t"])
    out = adam_growth(t, np.where(t > 6, math.inf, 1.0 + t), np.where(t > 6, nan, 1.0 + t), t0=0)
    assert out["adam_n_points"] == 7 and out["norm_slope"] == pytest.approx(1.0)
    assert math.isnan(adam_growth([], [], [], t0=None)["norm_slope"])
    assert linear_fit([1, 1, 1], [1, 2, 3])["slope"] != linear_fit([1, 1, 1], [1, 2, 3])["slope"]  # NaN
    assert linear_fit([0, 1, 2], [5, 5, 5])["r2"] == 1.0


# ------------------------------------------------------------------ SGD
def test_sgd_crash_of_q_equal_c_over_t_minus_t_is_exact():
    T, C = 605, 2.0
    t = np.arange(0, 700, dtype=float)
    with np.errstate(divide="ignore"):
        q = np.where(t < T, C / (T - t), nan)
    out = sgd_crash(t, q)
    assert out["sgd_pred_crash_step"] == pytest.approx(T, abs=1e-6)
    assert out["sgd_obs_crash_step"] == T and abs(out["sgd_crash_error"]) < 1e-6
    # default window: 1/|Q| = (T - t) / C from 3/4 to 1/4 of its median over the first third
    # (t = 100, y = 252.5): steps 227 to 479, a forecast 126 steps ahead
    assert (out["sgd_fit_start"], out["sgd_fit_end"]) == (227, 479)
    assert out["sgd_horizon"] == T - 479 and out["sgd_r2"] == pytest.approx(1.0)
    # spikes of 1/|Q| where Q crosses zero early on do not move the window
    noisy = q.copy()
    noisy[:100:7] = 1e-9
    assert sgd_crash(t, noisy)["sgd_pred_crash_step"] == pytest.approx(T)
    # the paper's toy numbers: 1/||u|| ~ -1.44e-3 t + 0.87 fitted on steps 450-500 -> 604
    q_paper = 1.0 / (0.87 - 1.44e-3 * t[:604])
    out = sgd_crash(t[:604], q_paper, window=(450, 500), observed_crash=605)
    assert out["sgd_pred_crash_step"] == pytest.approx(0.87 / 1.44e-3) and out["sgd_n_points"] == 51
    assert out["sgd_crash_error"] == pytest.approx(0.87 / 1.44e-3 - 605)


def test_sgd_crash_with_the_l_layer_exponent():
    assert sgd_exponent(2) == 1.0 and sgd_exponent(3) == pytest.approx(4 / 3)
    T, t0 = 1000.0, 200.0
    t = np.arange(0, 1100, 10, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(t < T, (T - t) ** (-3 / 4), nan)  # 1 / |Q|^(4/3) = T - t
    out = sgd_crash(t, q, t0=t0, exponent=sgd_exponent(3))
    assert out["sgd_fit_start"] > t0 and out["sgd_pred_crash_step"] == pytest.approx(T)
    assert sgd_crash(t, q, t0=t0, exponent=1.0)["sgd_r2"] < 1.0 - 1e-4  # p = 1 is not linear here


def test_sgd_crash_degenerate():
    t = np.arange(50, dtype=float)
    out = sgd_crash(t, 1.0 + 0.0 * t)  # constant Q: slope 0, no crash predicted or observed
    assert math.isnan(out["sgd_pred_crash_step"]) and math.isnan(out["sgd_obs_crash_step"])
    out = sgd_crash(t, np.exp(-t))  # shrinking Q: 1/|Q| grows, no crash predicted
    assert math.isnan(out["sgd_pred_crash_step"])
    assert math.isnan(sgd_crash(t, np.full(50, nan))["sgd_pred_crash_step"])
    assert math.isnan(sgd_crash([], [])["sgd_pred_crash_step"])
    assert math.isnan(sgd_crash(t, np.zeros(50))["sgd_pred_crash_step"])
    assert math.isnan(sgd_crash(t, 1 + t, t0=nan, window=(0, 1))["sgd_slope"])  # 2 points < 3


# ------------------------------------------------------------------ table and summary
def _synthetic_runs():
    steps = np.arange(0, 1001, 100)
    crash = 800
    log_steps = np.arange(0, 1001, 10)
    with np.errstate(divide="ignore"):
        sgd_seem = pd.DataFrame({"step": steps, "seed": 0, "seem_normalized": np.where(steps >= 200, 0.3, -0.1),
                                 "q_data_mean": np.where(steps < crash, 1.0 / (0.001 * (crash - steps)), nan),
                                 "critic_param_norm": 5.0, "diverged": steps >= crash})
        sgd_metrics = pd.DataFrame({"step": log_steps, "seed": 0, "critic_param_norm": 5.0,
                                    "q_mean": np.where(log_steps < crash, 1.0 / (0.001 * (crash - log_steps)), nan)})
    adam_seem = pd.concat([
        pd.DataFrame({"step": steps, "seed": 0, "seem_normalized": np.where(steps >= 300, 0.2, -0.1),
                      "q_data_mean": 1e-4 * np.maximum(steps, 1.0) ** 3, "critic_param_norm": 2 + 0.01 * steps,
                      "diverged": False}),
        pd.DataFrame({"step": steps, "seed": 1, "seem_normalized": -0.1, "q_data_mean": 1.0,
                      "critic_param_norm": 2.0, "diverged": False})])
    return [RunOutputs(sgd_seem, sgd_metrics, {"0": crash}, {"dataset": "toy", "algo": "sgd"}, n_layers=2,
                       optimizer="sgd", lr=1e-2),
            RunOutputs(adam_seem, None, {"0": None, "1": None}, {"dataset": "toy", "algo": "adam"}, n_layers=3,
                       optimizer="adam", lr=3e-4, n_params=400)]


def test_predictions_table_and_summary():
    table = predictions_table(_synthetic_runs(), q_bound=1e4).set_index(["algo", "seed"])
    sgd, adam, stable = table.loc[("sgd", 0)], table.loc[("adam", 0)], table.loc[("adam", 1)]
    assert sgd.q_source == "metrics" and sgd.first_positive_seem_step == 200
    assert sgd.sgd_pred_crash_step == pytest.approx(800) and sgd.sgd_obs_crash_step == 800
    assert sgd.sgd_L_pred_crash_step == pytest.approx(800)  # L = 2: the same exponent
    assert sgd.q_diverged_step == 800 and sgd.lead_time == 600
    assert adam.q_source == "checkpoints" and adam.norm_r2 == pytest.approx(1.0)
    assert adam.norm_slope == pytest.approx(0.01) and adam.loglog_slope_t == pytest.approx(3.0)
    assert adam.norm_slope_theory == pytest.approx(3e-4 * 20) and adam.q_diverged and adam.lead_time == 500 - 300
    assert math.isnan(adam.sgd_obs_crash_step)  # Adam's Q grows but stays finite
    assert not stable.seem_positive and not stable.q_diverged and math.isnan(stable.norm_slope)
    text = summary_markdown(table.reset_index())
    assert "| positive at any time " in text and "precision" in text and "loglog_slope_t" in text
    assert len([line for line in text.splitlines() if line.startswith("| toy")]) == 2
    assert len(predictions_table([])) == 0


# ------------------------------------------------------------------ end to end on a tiny real run
def test_end_to_end_on_a_tiny_sgd_run_that_crashes(tmp_path):
    """TD3 in the SEEM setting with SGD at a large learning rate diverges in ~100 steps; the
    pipeline's files (checkpoints, seem.parquet, metrics.parquet, run.json) go through load_run."""
    from seemrl.algos import td3
    from seemrl.analysis.seem import analyse_run

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 500
    obs = rng.normal(size=(n, 5)).astype(np.float32)
    arrays = dict(obs=obs, action=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                  reward=rng.normal(size=n).astype(np.float32),
                  next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32), terminal=np.zeros(n, bool))
    cfg = td3.TD3Config(steps=160, batch_size=32, hidden=(16, 16), checkpoint_every=20, log_every=10,
                        optimizer="sgd", actor_lr=0.3, critic_lr=0.3)
    mean, std = state_normalizer(obs, True)
    data = OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    nets = td3.build_nets(cfg, [0, 1], 5, 2, mean, std)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    result = td3.train(cfg, [0, 1], data, nets, run / "checkpoints", log=lambda msg: None)
    seem = analyse_run(run / "checkpoints", arrays, n_samples=48, sample_seed=0)
    seem.to_parquet(run / "seem.parquet")
    result.metrics.to_parquet(run / "metrics.parquet")
    (run / "run.json").write_text(json.dumps({
        "labels": {"dataset": "toy", "percent": "100", "algo": "td3_sgd", "critic_norm": "none"},
        "algorithm": "td3", "config": {"optimizer": "sgd", "critic_lr": 0.3, "hidden": [16, 16], "tau": 1.0,
                                       "bc_weight": 0.0},
        "diverged_step": dict(zip(["0", "1"], result.diverged_step))}))
    loaded = load_run(run)
    assert loaded.n_layers == 3 and loaded.optimizer == "sgd" and loaded.seem_setting
    assert loaded.n_params == 2 * (7 * 16 + 16 + 16 * 16 + 16 + 16 + 1)
    table = predictions_table([loaded]).set_index("seed")
    assert len(table) == 2
    assert all(step is not None for step in result.diverged_step)  # both seeds crash (at ~70-80)
    metrics = result.metrics
    for i, seed in enumerate((0, 1)):
        row = table.loc[seed]
        logged = metrics[metrics.seed == seed]
        first_nan = logged.loc[~np.isfinite(logged.q_mean), "step"].min()
        assert row.q_diverged and row.trainer_diverged_step == result.diverged_step[i]
        assert row.sgd_obs_crash_step == min(first_nan, result.diverged_step[i])
        assert row.q_diverged_step <= row.sgd_obs_crash_step
        assert row.seem_positive and row.lead_time == row.q_diverged_step - row.first_positive_seem_step
        assert row.q_source == "metrics" and row.n_checkpoints == 9 and row.seem_setting
    md = summary_markdown(table.reset_index())
    assert "td3_sgd" in md


def test_load_run_with_only_a_seem_frame(tmp_path):
    frame = _two_runs()
    frame[frame.run == "a"].drop(columns="run").to_parquet(tmp_path / "seem.parquet")
    run = load_run(tmp_path)
    # no run.json: the module's documented default depth (no algorithm's defaults are looked up)
    assert run.metrics is None and run.diverged_step is None and run.n_params is None and run.n_layers == 3
    assert run.seem_setting is None  # unknown without run.json
    table = predictions_table([run], q_bound=1e4).set_index("seed")
    assert table.loc[0, "q_source"] == "checkpoints" and table.loc[0, "lead_time"] == 200
    assert not table.loc[1, "q_diverged"]


def test_seem_setting_is_td3_without_bc_and_with_copied_targets():
    from seemrl.analysis.predictions import in_seem_setting

    assert in_seem_setting("td3", {"tau": 1.0, "bc_weight": 0.0})
    assert not in_seem_setting("td3", {"tau": 0.005, "bc_weight": 0.0})  # EMA targets
    assert not in_seem_setting("td3", {"tau": 1.0, "bc_weight": 1.0})  # TD3+BC
    assert not in_seem_setting("cql", {"tau": 1.0})
