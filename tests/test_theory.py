"""Theory experiments (seemrl.theory): toy crash prediction, NTK map, Baird, homogeneity, CLI."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.theory import (BairdConfig, HomogeneityConfig, NTKMapConfig, ToyConfig, probe_ratios, run_baird,
                           run_homogeneity, run_ntk_map, run_toy)
from seemrl.theory import cli as theory_cli
from seemrl.theory.ntk_map import init_params as ntk_init
from seemrl.theory.ntk_map import mlp as ntk_mlp
from seemrl.theory.ntk_map import ntk_column
from seemrl.theory.toy import choose_window, fit_singularity, singular_coordinate

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ toy
@pytest.fixture(scope="module")
def toy_default():
    return run_toy(ToyConfig())


def test_toy_default_crash_is_predicted_from_a_window_well_before_it(toy_default):
    s = toy_default.summary.iloc[0]
    assert s["crashed"]
    crash = s["crash_step"]
    # the fit window ends well before the crash and only uses finite steps
    assert s["window_end"] <= crash - 20
    assert s["window_end"] - s["window_start"] == 50
    assert s["slope"] < 0 and s["r2"] > 0.98
    # Theorem 3: the zero of the line fitted to 1/||u|| is the crash step, within a few percent
    assert abs(s["predicted_step"] - crash) / crash < 0.05, (s["predicted_step"], crash)
    assert s["rel_error"] == pytest.approx((s["predicted_step"] - crash) / crash)


def test_toy_seem_is_positive_before_the_crash(toy_default):
    st = toy_default.steps
    s = toy_default.summary.iloc[0]
    before = st[(st["step"] <= s["window_end"])]
    assert before["seem"].notna().all()
    assert (before["seem"] > 0).all()
    assert s["seem_positive_to_window_end"] and s["seem_positive_frac"] > 0.95
    # the self-excited mode grows: ||u|| rises by orders of magnitude and the last step is not finite
    assert not st["finite"].iloc[-1] and st["finite"].iloc[:-1].all()
    assert st["step"].tolist() == list(range(len(st)))
    assert st["u_norm"].iloc[-2] > 10 * st["u_norm"].iloc[int(s["window_start"])]


def test_toy_is_reproducible_and_never_raises_on_overflow():
    cfg = ToyConfig(max_steps=40, seem_every=10)
    a, b = run_toy(cfg), run_toy(cfg)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    assert not a.summary.iloc[0]["crashed"] and math.isnan(a.summary.iloc[0]["crash_step"])
    other = run_toy(ToyConfig(max_steps=40, seem_every=10, seed=1))
    assert not np.allclose(other.steps["u_norm"], a.steps["u_norm"])
    # a huge step size overflows within a few steps: recorded as the crash step, no exception
    boom = run_toy(ToyConfig(lr=50.0, max_steps=200, seem_every=0))
    s = boom.summary.iloc[0]
    assert s["crashed"] and s["crash_step"] < 200
    assert not boom.steps["finite"].iloc[-1]


def test_singularity_fit_and_window_rule_on_synthetic_curves():
    t = np.arange(300)
    u = 1.0 / (0.9 - 0.003 * t)  # singular at t = 300
    steps = pd.DataFrame({"step": t, "finite": True, "u_norm": u})
    fit = fit_singularity(steps, ToyConfig())
    assert fit["predicted_step"] == pytest.approx(300.0, rel=1e-9)
    # rule: the window ends where 1/||u|| first drops below 5 % of its running max (0.045 -> t = 285)
    assert fit["window_end"] == 286 and fit["window_start"] == 236
    explicit = fit_singularity(steps, ToyConfig(fit_window=(100, 150)))
    assert explicit["window_rule"] == "explicit" and explicit["predicted_step"] == pytest.approx(300.0)
    # L = 3: ||u||^(-4/3) is the linear coordinate
    u3 = (0.9 - 0.003 * t) ** (-3 / 4)
    y = singular_coordinate(u3, 3)
    assert np.allclose(y, 0.9 - 0.003 * t)
    # a curve that never drops gives no window (and no prediction) rather than an error
    assert choose_window(np.ones(50), 0.05, 50) is None
    flat = fit_singularity(pd.DataFrame({"step": np.arange(50), "finite": True, "u_norm": np.ones(50)}), ToyConfig())
    assert math.isnan(flat["predicted_step"])


# ------------------------------------------------------------------ NTK map
def test_ntk_column_matches_explicit_jacobians():
    from torch.func import jacrev

    cfg = NTKMapConfig(hidden=16)
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x0 = torch.tensor(cfg.x0, dtype=torch.float64)
    for ln in (False, True):
        p = ntk_init(cfg, 0, ln)
        k, k00 = ntk_column(p, x, x0, ln, chunk_size=3)
        jac = jacrev(lambda q: ntk_mlp(q, torch.cat([x, x0[None]]), ln))(p)
        phi = torch.cat([jac[name].reshape(8, -1) for name in p], 1)
        assert torch.allclose(k, phi[:7] @ phi[7], rtol=1e-10, atol=1e-12)
        assert k00 == pytest.approx(float(phi[7] @ phi[7]), rel=1e-12)


def test_ntk_map_far_point_dominates_without_layernorm_and_is_local_with_it():
    res = run_ntk_map(NTKMapConfig(hidden=2000, resolution=41, n_inits=2))
    ratios = probe_ratios(res)
    assert ratios["no_layernorm"] > 2.0
    assert ratios["layernorm"] < 1.0
    summ = res.summary.set_index(["layernorm", "init"])
    spacing = 2 * 4.0 / 40
    for i in range(2):
        no_ln, ln = summ.loc[(False, i)], summ.loc[(True, i)]
        # without LN the map peaks on the boundary of the plane, with LN next to x0 = (0.1, 0.2)
        assert max(abs(no_ln["argmax_1"]), abs(no_ln["argmax_2"])) == pytest.approx(4.0)
        assert math.dist((ln["argmax_1"], ln["argmax_2"]), (0.1, 0.2)) < 1.5 * spacing
        assert ln["ratio_max"] <= 1.0 + 1e-9 < no_ln["ratio_max"]
    g = res.grid
    assert len(g) == 2 * 41 * 41 and g["k_norm"].notna().all()


# ------------------------------------------------------------------ Baird
def test_baird_linear_td_diverges_and_layernorm_stays_bounded():
    res = run_baird(BairdConfig())
    s = res.summary.set_index("variant")
    assert s.loc["linear", "diverged"] and s.loc["linear", "final_param_norm"] > 1e6
    assert s.loc["layernorm_noaffine", "diverged"]
    assert not s.loc["layernorm", "diverged"]
    assert s.loc["layernorm", "max_param_norm"] < 20
    assert s.loc["layernorm", "final_max_abs_value"] < 1e-3  # converged to the true values (all 0)
    # SEEM of the model at its initial parameters has the sign of the outcome
    assert s.loc["linear", "seem_init"] > 0 and s.loc["layernorm", "seem_init"] < 0
    tr = res.trajectory[res.trajectory["variant"] == "linear"]
    assert tr["param_norm"].is_monotonic_increasing or tr["param_norm"].iloc[-1] > 1e5 * tr["param_norm"].iloc[0]


def test_baird_sampled_transitions():
    res = run_baird(BairdConfig(update="sampled", step_size=0.003, steps=20_000, variants=("linear", "layernorm"),
                                log_every=100))
    s = res.summary.set_index("variant")
    assert s.loc["linear", "final_param_norm"] > 1e4
    assert not s.loc["layernorm", "diverged"] and s.loc["layernorm", "max_param_norm"] < 20
    again = run_baird(BairdConfig(update="sampled", step_size=0.003, steps=2000, variants=("linear",), seed=5))
    same = run_baird(BairdConfig(update="sampled", step_size=0.003, steps=2000, variants=("linear",), seed=5))
    pd.testing.assert_frame_equal(again.trajectory, same.trajectory)


# ------------------------------------------------------------------ homogeneity
def test_homogeneity_powers_hold_for_a_diverged_like_network():
    res = run_homogeneity(HomogeneityConfig(lambdas=(1, 5, 10, 100), hidden=(64, 64), n_inputs=24))
    t = res.table.set_index("lambda")
    assert res.info["n_layers"] == 3 and res.info["base_scale"] == 1000
    for lam in (5.0, 10.0, 100.0):
        r = t.loc[lam]
        assert r["output_ratio"] == pytest.approx(lam ** 3, rel=1e-3)
        assert r["output_ratio_single"] == pytest.approx(lam ** 3, rel=1e-2)  # one input: f(x) may be small
        assert r["grad_ratio"] == pytest.approx(lam ** 2, rel=1e-3)
        assert r["ntk_ratio"] == pytest.approx(lam ** 4, rel=1e-3)
        assert r["ntk_cos_gap"] < 1e-5
    assert list(res.paper_table.columns) == ["1", "5", "10", "100"]
    assert res.paper_table.loc["f_{lambda theta}(x) / f_theta(x)", "5"].endswith("(5^3)")
    # a fresh network (biases not negligible) is visibly off: the check can fail
    fresh = run_homogeneity(HomogeneityConfig(lambdas=(1, 10), hidden=(64, 64), n_inputs=24, base_scale=1.0))
    assert abs(fresh.table.set_index("lambda").loc[10.0, "output_ratio_rel_err"]) > 1e-2


def test_homogeneity_reads_a_td3_checkpoint(tmp_path):
    from seemrl.algos.td3 import TD3Config, build_nets, save_checkpoint

    cfg = TD3Config(hidden=(32, 32))
    nets = build_nets(cfg, [0, 1], 5, 2)
    with torch.no_grad():
        for p in nets.q1.parameters():
            p.mul_(1000.0)  # a "diverged" critic
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, nets, cfg, [0, 1], 10, [None, None])
    res = run_homogeneity(HomogeneityConfig(checkpoint=str(path), seed_index=1, lambdas=(1, 5), n_inputs=16))
    assert res.info["in_dim"] == 7 and res.info["n_layers"] == 3 and res.info["base_scale"] == 1.0
    assert "seed 1" in res.info["source"]
    r = res.table.set_index("lambda").loc[5.0]
    assert r["output_ratio"] == pytest.approx(125.0, rel=1e-2)
    assert r["ntk_ratio"] == pytest.approx(625.0, rel=1e-2)
    with pytest.raises(ValueError, match="seed index"):
        run_homogeneity(HomogeneityConfig(checkpoint=str(path), seed_index=2))


# ------------------------------------------------------------------ CLI
def _no_temporaries(d: Path) -> None:
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers, leftovers


def test_cli_writes_all_files_atomically(tmp_path, capsys):
    runs = {
        "toy": ["--max-steps", "60", "--seem-every", "20"],
        "ntk-map": ["--hidden", "64", "--resolution", "9"],
        "baird": ["--steps", "300", "--log-every", "50"],
        "homogeneity": ["--hidden", "16", "16", "--n-inputs", "8", "--lambdas", "1", "5"],
    }
    for sub, extra in runs.items():
        out = tmp_path / sub
        assert theory_cli.main([sub, "--out-dir", str(out), *extra]) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(theory_cli.OUTPUTS[sub])
        _no_temporaries(out)
        for p in out.iterdir():
            assert p.stat().st_size > 0
            if p.suffix == ".png":
                assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            elif p.suffix == ".parquet":
                assert len(pd.read_parquet(p)) > 0
            elif p.suffix == ".csv":
                assert len(pd.read_csv(p)) > 0
    printed = capsys.readouterr().out
    assert "crash_step" in printed and "ratio_at_probe_no_layernorm" in printed
    toy_steps = pd.read_parquet(tmp_path / "toy" / "toy_steps.parquet")
    assert len(toy_steps) == 60 and toy_steps["seem"].notna().sum() == 3


def test_cli_runs_as_a_module(tmp_path):
    env = {**os.environ, "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "seemrl.theory.cli", "baird", "--out-dir", str(tmp_path / "b"),
                           "--steps", "50", "--variants", "linear"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "linear" in proc.stdout
    assert (tmp_path / "b" / "baird_summary.csv").exists()
    _no_temporaries(tmp_path / "b")
    bad = subprocess.run([sys.executable, "-m", "seemrl.theory.cli", "nope"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert bad.returncode != 0
