"""SEEM: vectorised Jacobians vs the authors' per-sample loop, the eigenvalue computation against
numpy, the homogeneity law of no-LN ReLU nets, and `analyse_run` over real TD3 checkpoints."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.algos.td3 import TD3Config, build_nets, save_checkpoint
from seemrl.analysis.seem import (analyse_run, divergence_verdict, q1_jacobian, q_value_bound, seem, seem_eigenvalues,
                                  seem_from_jacobians, seem_matrix)
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.resume import checkpoint_name

torch.set_num_threads(1)


def stacked(n_seeds=2, in_dim=5, hidden=(16, 16), layer_norm=()):
    """A stacked critic with LayerNorm on the hidden layers `layer_norm`."""
    norm = dict(norm="layernorm", norm_layers=layer_norm) if layer_norm else {}
    return StackedMLP(seed_generators(range(n_seeds), stream=7), in_dim, 1, hidden, **norm)


def loop_jacobian(net: StackedMLP, seed_index: int, x: torch.Tensor) -> torch.Tensor:
    """The authors' way: one backward pass per sample."""
    params = list(net.parameters())
    n_params = sum(p[seed_index].numel() for p in params)
    rows = []
    for xi in x:
        net.zero_grad(set_to_none=True)
        out = net(xi.reshape(1, 1, -1).expand(net.n_seeds, 1, -1))
        out[seed_index].sum().backward()
        rows.append(torch.cat([p.grad[seed_index].flatten() for p in params]) / math.sqrt(n_params))
    return torch.stack(rows)


@pytest.mark.parametrize("layer_norm", [(), (0, 1)])
@pytest.mark.parametrize("seed_index", [0, 1])
def test_vectorised_jacobian_equals_per_sample_loop(seed_index, layer_norm):
    net = stacked(layer_norm=layer_norm)
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    jac = q1_jacobian(net, seed_index, x, chunk_size=7)  # chunks that do not divide N
    ref = loop_jacobian(net, seed_index, x)
    n_params = sum(p[seed_index].numel() for p in net.parameters())
    assert jac.shape == (32, n_params)
    torch.testing.assert_close(jac, ref, rtol=1e-5, atol=1e-7)
    # the rows are divided by sqrt(P): undoing it gives the raw gradient of sample 0
    net.zero_grad(set_to_none=True)
    net(x[:1].reshape(1, 1, -1).expand(2, 1, -1))[seed_index].sum().backward()
    offset = 0  # column of the output bias, whose raw gradient dQ/db_out is 1
    for name, p in net.named_parameters():
        if name == f"biases.{len(net.weights) - 1}":
            break
        offset += p[seed_index].numel()
    assert net.biases[-1].grad[seed_index].item() == 1.0
    assert jac[0, offset].item() * math.sqrt(n_params) == pytest.approx(1.0)
    # the other seed's Jacobian is different (a wrong slice would make them equal)
    assert not torch.allclose(jac, q1_jacobian(net, 1 - seed_index, x))


def test_seem_matches_numpy_on_hand_built_case():
    rng = np.random.default_rng(3)
    phi_x, phi_xs = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    gamma = 0.9
    a = gamma * phi_xs @ phi_x.T - phi_x @ phi_x.T
    assert not np.allclose(a, a.T)
    ref_eig = np.linalg.eigvals(a)
    t = lambda v: torch.tensor(v, dtype=torch.float32)
    torch.testing.assert_close(seem_matrix(t(phi_x), t(phi_xs), gamma), torch.tensor(a), rtol=1e-5, atol=1e-5)
    eig = seem_eigenvalues(t(phi_x), t(phi_xs), gamma).numpy()
    assert np.iscomplexobj(eig)
    np.testing.assert_allclose(np.sort_complex(eig), np.sort_complex(ref_eig), rtol=1e-4, atol=1e-4)
    result = seem_from_jacobians(t(phi_x), t(phi_xs), gamma)
    assert result["seem"] == pytest.approx(ref_eig.real.max(), rel=1e-5)
    # the non-symmetric eigenvalues, not those of the symmetric part (which differ here)
    sym_max = np.linalg.eigvalsh((a + a.T) / 2).max()
    assert abs(sym_max - result["seem"]) > 1e-2
    assert result["seem_normalized"] == pytest.approx(result["seem"] / np.linalg.norm(a, "fro"), rel=1e-6)
    assert result["a_fro_norm"] == pytest.approx(np.linalg.norm(a, "fro"), rel=1e-5)


def test_seem_sign_on_simple_cases():
    # X* = X: A = (gamma - 1) G, negative semi-definite -> SEEM <= 0 (no self-excitation)
    phi = torch.randn(6, 10, dtype=torch.float64)
    assert seem_from_jacobians(phi, phi, 0.99)["seem"] <= 1e-12
    # X* = 2X with gamma 0.99: A = (2 gamma - 1) G -> positive SEEM (the divergent case)
    assert seem_from_jacobians(phi, 2 * phi, 0.99)["seem"] > 0


def test_repeated_sample_makes_seem_zero():
    """A transition drawn twice (sampling with replacement) makes A singular: SEEM reads ~0."""
    phi = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert seem_from_jacobians(phi, phi, 0.99)["seem_normalized"] < -1e-4  # (gamma - 1) G, G > 0
    repeated = torch.cat([phi, phi[:1]])
    assert abs(seem_from_jacobians(repeated, repeated, 0.99)["seem_normalized"]) < 1e-12


def test_seem_of_network_and_nonfinite_input():
    net = stacked()
    g = torch.Generator().manual_seed(1)
    x, xs = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    out = seem(net, 1, x, xs, 0.99)
    phi_x, phi_xs = loop_jacobian(net, 1, x).double(), loop_jacobian(net, 1, xs).double()
    a = 0.99 * phi_xs @ phi_x.T - phi_x @ phi_x.T
    assert out["seem"] == pytest.approx(np.linalg.eigvals(a.numpy()).real.max(), rel=1e-4, abs=1e-9)
    assert out["ntk_diag_mean"] == pytest.approx(torch.diagonal(phi_x @ phi_x.T).mean().item(), rel=1e-5)
    bad = phi_x.clone()
    bad[0, 0] = math.nan
    nan = seem_from_jacobians(bad, phi_xs, 0.99)
    assert nan.pop("seem_solver") is None and all(math.isnan(v) for v in nan.values())


def test_homogeneity_of_relu_net_without_layernorm():
    """Scaling all weights of an L-layer bias-free ReLU MLP by k scales Q by k^L, its weight
    gradients by k^(L-1) and the NTK by k^(2(L-1)) (paper Table 3: k=5 -> 125, 25, 625)."""
    net, k, L = stacked(hidden=(16, 16)), 5.0, 3
    with torch.no_grad():
        for b in net.biases:
            b.zero_()
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(2))
    n_weights = sum(w[0].numel() for w in net.weights)  # weights come first in parameter order

    def weight_ntk_and_q():
        phi = q1_jacobian(net, 0, x)[:, :n_weights].double()
        return phi @ phi.T, net(x.expand(2, -1, -1))[0].detach().double()

    ntk, q = weight_ntk_and_q()
    with torch.no_grad():
        for w in net.weights:
            w.mul_(k)
    ntk_k, q_k = weight_ntk_and_q()
    torch.testing.assert_close(q_k, q * k**L, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ntk_k, ntk * k ** (2 * (L - 1)), rtol=1e-4, atol=1e-6)
    assert (ntk_k.trace() / ntk.trace()).item() == pytest.approx(625, rel=1e-4)


# ------------------------------------------------------------------ analyse_run on checkpoints
OBS, ACT = 4, 2


def transitions(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(2.0, 3.0, (n, OBS)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
            "next_obs": rng.normal(2.0, 3.0, (n, OBS)).astype(np.float32)}


@pytest.fixture
def run_dir(tmp_path):
    """Three checkpoints of a 2-seed run; seed 1's Q1 weights are NaN at the last one."""
    cfg = TD3Config(hidden=(16, 16), gamma=0.99)
    data = transitions()
    nets = build_nets(cfg, [10, 11], OBS, ACT, data["obs"].mean(0), data["obs"].std(0))
    for step in (0, 100, 200):
        diverged = [None, None]
        if step == 200:
            with torch.no_grad():
                nets.q1.weights[1][1].fill_(math.nan)
            diverged = [None, 150]
        save_checkpoint(tmp_path / checkpoint_name(step), nets, cfg, [10, 11], step, diverged)
        with torch.no_grad():  # "training": perturb all weights between checkpoints
            for p in [*nets.q1.parameters(), *nets.q2.parameters(), *nets.actor.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
    return tmp_path


def test_analyse_run_rows_and_divergence(run_dir):
    data = transitions()
    df = analyse_run(run_dir, data, n_samples=32, sample_seed=5)
    assert list(df[["step", "seed"]].itertuples(index=False, name=None)) == \
        [(0, 10), (0, 11), (100, 10), (100, 11), (200, 10), (200, 11)]
    for col in ("seem", "seem_normalized", "q_data_mean", "q_policy_mean", "critic_param_norm",
                "q1_param_norm", "diverged", "cos_to_final_params"):
        assert col in df.columns
    bad = (df.step == 200) & (df.seed == 11)
    assert df.loc[bad, "diverged"].item() and math.isnan(df.loc[bad, "seem"].item())
    assert not df.loc[~bad, "diverged"].any()
    assert np.isfinite(df.loc[~bad, ["seem", "seem_normalized", "q_data_mean", "q_policy_mean"]]).all().all()
    # the diverged seed's final parameters are NaN, so its cosines are NaN; the other's are 1 at the end
    final_ok = (df.step == 200) & (df.seed == 10)
    assert df.loc[final_ok, "cos_to_final_params"].item() == pytest.approx(1.0)
    assert df.loc[(df.step == 0) & (df.seed == 10), "cos_to_final_params"].item() < 1.0
    assert df.loc[df.seed == 11, "cos_to_final_params"].isna().all()
    assert (df.n_unique_samples <= 32).all()
    # deterministic: the same fixed batch gives the same numbers
    again = analyse_run(run_dir, data, n_samples=32, sample_seed=5)
    np.testing.assert_array_equal(df["seem"].to_numpy(), again["seem"].to_numpy())


def test_analyse_run_matches_direct_seem(run_dir):
    """Row (step 100, seed 10) equals `seem` on X, X* built by hand from the same batch."""
    from seemrl.algos.td3 import load_checkpoint
    from seemrl.analysis.seem import sample_batch
    data = transitions()
    df = analyse_run(run_dir, data, n_samples=32, sample_seed=5)
    ckpt = load_checkpoint(run_dir / checkpoint_name(100))
    b = {k: torch.as_tensor(v) for k, v in sample_batch(data, 32, 5).items()}
    nets = ckpt.nets
    s, s2 = nets.normalize(b["obs"]), nets.normalize(b["next_obs"])
    with torch.no_grad():
        pi2 = nets.policy(s2.expand(2, -1, -1))[0]
        q = nets.q1(torch.cat([s, b["action"]], -1).expand(2, -1, -1))[0]
    ref = seem(nets.q1, 0, torch.cat([s, b["action"]], -1), torch.cat([s2, pi2], -1), 0.99)
    row = df[(df.step == 100) & (df.seed == 10)].iloc[0]
    assert row["seem"] == pytest.approx(ref["seem"], rel=1e-6)
    assert row["q_data_mean"] == pytest.approx(q.mean().item(), rel=1e-6)


def test_divergence_verdict(run_dir):
    df = analyse_run(run_dir, transitions(), n_samples=32, sample_seed=5)
    v = divergence_verdict(df).set_index("seed")
    assert v.loc[11, "diverged"] and v.loc[11, "first_diverged_step"] == 200
    assert not v.loc[10, "diverged"] and math.isnan(v.loc[10, "first_diverged_step"])
    assert v.loc[10, "max_seem"] == pytest.approx(df.loc[df.seed == 10, "seem"].max())
    # a finite but exploding Q counts as divergence through the bound
    v_tight = divergence_verdict(df, q_bound=1e-9).set_index("seed")
    assert v_tight.loc[10, "diverged"] and v_tight.loc[10, "diverged_reason"] == "q-bound"
    assert q_value_bound(np.array([-2.0, 1.0]), 0.99) == pytest.approx(2000.0)
    positive = df[(df.seed == 10) & (df.seem_normalized > 1e-6)]
    expected = positive.step.min() if len(positive) else math.nan
    assert v.loc[10, "first_positive_seem_step"] == pytest.approx(expected, nan_ok=True)


def test_sampling_without_replacement(run_dir):
    df = analyse_run(run_dir, transitions(), n_samples=32, sample_seed=5, replace=False)
    assert (df.n_unique_samples == 32).all()
    # no repeated rows: A is non-singular, SEEM is clearly away from zero
    assert (df.seem_normalized.dropna().abs() > 1e-9).all()
    # with replacement this batch repeats transitions: SEEM is floored at ~0
    with_repeats = analyse_run(run_dir, transitions(), n_samples=32, sample_seed=5)
    assert (with_repeats.n_unique_samples < 32).all()
    assert (with_repeats.seem_normalized.dropna() > -1e-12).all()


def test_jacobian_of_a_batchnorm_critic_uses_each_seeds_running_stats():
    """A multi-seed BatchNorm critic: per-sample gradients in eval mode with the seed's own buffers."""
    import torch

    from seemrl.analysis.seem import q1_jacobian
    from seemrl.training.nets import critic_from_config, seed_generators

    net = critic_from_config(seed_generators([0, 1], 0), 4, 1, (8, 8), {"norm": "batchnorm"})
    net.train()
    for _ in range(3):  # move the running stats away from their initial values, differently per seed
        net(torch.randn(2, 16, 4) * torch.tensor([1.0, 3.0]).view(2, 1, 1))
    x = torch.randn(5, 4)
    jac = q1_jacobian(net, 1, x)
    assert net.training  # mode restored
    net.eval()
    used = [p for k, p in net.named_parameters() if k not in {f"biases.{j}" for j in net.unused_biases}]
    n_params = sum(p[1].numel() for p in used)  # the pre-BatchNorm biases are not parameters of Q
    assert jac.shape == (5, n_params)
    for i in range(5):  # the per-sample backward loop, seed 1 only
        net.zero_grad()
        net(x[i].expand(2, 1, 4))[1].sum().backward()
        row = torch.cat([p.grad[1].flatten() for p in used]) / n_params ** 0.5
        torch.testing.assert_close(jac[i], row)


# ------------------------------------------------------------------ bounded Jacobian memory
@pytest.mark.parametrize("rows", [4, 7, 23, 65])
def test_seem_matrices_with_bounded_jacobian_memory_equal_unbounded(rows):
    from seemrl.analysis.seem import seem_from_matrix, seem_matrices
    net = stacked(layer_norm=(0,))
    g = torch.Generator().manual_seed(8)
    x, xs = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    n_params = sum(p[0].numel() for p in net.parameters())
    full_stats, stats = {}, {}
    a_ref, g_ref, d_ref = seem_matrices(net, 1, x, xs, 0.99, chunk_size=8, stats=full_stats, method="jacobian")
    budget = rows * n_params * 4
    a, gram, d = seem_matrices(net, 1, x, xs, 0.99, chunk_size=8, max_jacobian_bytes=budget, stats=stats,
                               method="jacobian")
    # the unbounded path holds Phi(X), Phi(X*) and one chunk; the bounded one never more than asked
    assert full_stats["peak_jacobian_bytes"] == (2 * 30 + 8) * n_params * 4
    assert stats["peak_jacobian_bytes"] <= budget
    assert stats["panel_rows"] < 30 and stats["jacobian_rows_computed"] > 60  # rows were recomputed
    torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gram, g_ref, rtol=1e-5, atol=1e-8)
    assert d == pytest.approx(d_ref, rel=1e-6)
    # the same as the Jacobians of the per-sample loop
    phi_x, phi_xs = loop_jacobian(net, 1, x), loop_jacobian(net, 1, xs)
    torch.testing.assert_close(gram, phi_x @ phi_x.T, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(a, (0.99 * phi_xs @ phi_x.T - phi_x @ phi_x.T).double(), rtol=1e-4, atol=1e-7)
    # eigenvalues of a non-symmetric matrix move with rounding: compare relative to ||A||_F
    out, ref = seem_from_matrix(a), seem_from_matrix(a_ref)
    assert abs(out["seem"] - ref["seem"]) < 1e-6 * ref["a_fro_norm"]


def test_seem_matrices_unbounded_path_is_bitwise_the_old_computation_and_budget_checks():
    from seemrl.analysis.seem import seem_matrices
    net = stacked()
    g = torch.Generator().manual_seed(9)
    x, xs = torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g)
    phi_x, phi_xs = q1_jacobian(net, 0, x), q1_jacobian(net, 0, xs)
    a, gram, _ = seem_matrices(net, 0, x, xs, 0.9, max_jacobian_bytes=10**12, method="jacobian")
    assert torch.equal(a, seem_matrix(phi_x, phi_xs, 0.9))
    assert torch.equal(gram, phi_x @ phi_x.T)
    n_params = phi_x.shape[1]
    with pytest.raises(ValueError, match="at least 4"):
        seem_matrices(net, 0, x, xs, 0.9, max_jacobian_bytes=3 * n_params * 4, method="jacobian")
    with pytest.raises(ValueError, match="method"):
        seem_matrices(net, 0, x, xs, 0.9, method="fast")
    # `seem` takes the bound too and gives the same SEEM
    bounded, ref = seem(net, 0, x, xs, 0.9, max_jacobian_bytes=5 * n_params * 4), seem(net, 0, x, xs, 0.9)
    assert abs(bounded["seem"] - ref["seem"]) < 1e-6 * ref["a_fro_norm"]


# ------------------------------------------------------------------ structured NTK (no Jacobians)
@pytest.mark.parametrize("spec", [
    {}, {"norm": "layernorm"}, {"norm": "layernorm", "norm_layers": [1], "affine": False},
    {"norm": "batchnorm"}, {"weight_norm_output": True}, {"ofn": True}, {"dropout": 0.3},
    {"norm": "layernorm", "weight_norm_output": True, "ofn": True},
])
@pytest.mark.parametrize("activation", ["relu", "mish"])
def test_structured_grams_equal_the_jacobian_grams(spec, activation):
    """The outer-product Gram of every linear weight plus the Jacobian Gram of the rest equals
    Phi Phi^T of the full per-sample Jacobians, for every critic variant of the paper."""
    from seemrl.analysis.seem import seem_from_matrix, seem_matrices
    from seemrl.training.nets import critic_from_config
    net = critic_from_config(seed_generators([0, 1], 3), 6, 1, (12, 10), spec, activation=activation)
    if spec.get("norm") == "batchnorm":
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 32, 6) * 2 + 1)  # running statistics away from (0, 1)
    net.train()  # must not matter: both methods use eval mode
    g = torch.Generator().manual_seed(4)
    x, xs = torch.randn(24, 6, generator=g), torch.randn(24, 6, generator=g) * 3
    stats, ref_stats = {}, {}
    a, gram, diag = seem_matrices(net, 1, x, xs, 0.99, chunk_size=5, stats=stats, method="structured")
    a_ref, g_ref, d_ref = seem_matrices(net, 1, x, xs, 0.99, chunk_size=5, stats=ref_stats, method="jacobian")
    assert stats["method"] == "structured" and ref_stats["method"] == "jacobian"
    hidden = {"weights.0", "weights.1"}
    assert hidden <= set(stats["structured"])
    assert ("weights.2" in stats["structured"]) == (not spec.get("weight_norm_output"))
    assert stats["peak_jacobian_bytes"] < ref_stats["peak_jacobian_bytes"]
    torch.testing.assert_close(gram, g_ref.double(), rtol=1e-5, atol=1e-6 * g_ref.abs().max().item())
    torch.testing.assert_close(a, a_ref, rtol=1e-4, atol=1e-5 * a_ref.abs().max().item())
    assert diag == pytest.approx(d_ref, rel=1e-5)
    out, ref = seem_from_matrix(a), seem_from_matrix(a_ref)
    assert abs(out["seem"] - ref["seem"]) < 1e-5 * ref["a_fro_norm"]
    assert net.training  # mode restored


class _TwiceUsed(torch.nn.Module):
    """A stacked net q = ((x W0) W0) w1 + b: W0 is used twice, so only w1 is of the form z = x W."""

    n_seeds, unused_biases = 1, ()

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(1, 4, 4, generator=g) / 2),
                                               torch.nn.Parameter(torch.randn(1, 4, 1, generator=g))])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1, 1, 1))])

    def forward(self, x):
        h = torch.tanh(torch.bmm(torch.bmm(x, self.weights[0]), self.weights[0]))
        return torch.baddbmm(self.biases[0], h, self.weights[1])


def test_structured_grams_treat_irregular_weights_by_jacobian_and_fall_back():
    from seemrl.analysis.seem import seem_matrices
    net = _TwiceUsed()
    g = torch.Generator().manual_seed(1)
    x, xs = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    stats = {}
    a, gram, _ = seem_matrices(net, 0, x, xs, 0.9, method="structured", stats=stats)
    assert stats["structured"] == ["weights.1"]  # weights.0 goes through its per-sample Jacobian
    a_ref, g_ref, _ = seem_matrices(net, 0, x, xs, 0.9, method="jacobian")
    torch.testing.assert_close(gram, g_ref.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a, a_ref, rtol=1e-4, atol=1e-6)
    # a weight also used inside a list argument (torch.cat) has another gradient term: not structured
    net.forward = lambda x: torch.baddbmm(net.biases[0], torch.tanh(torch.bmm(x, net.weights[0])), net.weights[1]) \
        + 0.1 * torch.cat([net.weights[0].reshape(1, 1, -1)], -1).sum(-1, keepdim=True)
    stats = {}
    a, gram, _ = seem_matrices(net, 0, x, xs, 0.9, method="structured", stats=stats)
    assert stats["structured"] == ["weights.1"]
    torch.testing.assert_close(gram, seem_matrices(net, 0, x, xs, 0.9, method="jacobian")[1].double(),
                               rtol=1e-5, atol=1e-7)
    del net.forward
    # a bound too small for the structured rows: "auto" uses the (chunked) Jacobian method
    stats = {}
    seem_matrices(net, 0, x, xs, 0.9, max_jacobian_bytes=6 * 25 * 4, stats=stats)
    assert stats["method"] == "jacobian"
    # no weight of the form z = x W at all: "structured" warns and falls back
    net.weights[1].data = net.weights[1].data.expand(1, 4, 1).clone()
    net.forward = lambda x: torch.baddbmm(net.biases[0], torch.bmm(torch.bmm(x, net.weights[0]), net.weights[0]),
                                          net.weights[1] * 1.0)
    with pytest.warns(UserWarning, match="Jacobian method"):
        stats = {}
        seem_matrices(net, 0, x, xs, 0.9, method="structured", stats=stats)
    assert stats["method"] == "jacobian"


# ------------------------------------------------------------------ TD gradient norm, cosines
def test_analyse_run_td_gradient_norm_matches_a_single_seed_backward(run_dir):
    from seemrl.algos.td3 import load_checkpoint
    from seemrl.analysis.seem import sample_batch
    data = {**transitions(), "reward": np.linspace(-1, 1, 200).astype(np.float32),
            "terminal": (np.arange(200) % 7 == 0)}
    df = analyse_run(run_dir, data, n_samples=32, sample_seed=5)
    for col in ("td_loss", "critic_grad_norm", "q1_grad_norm"):
        assert col in df.columns
    ckpt = load_checkpoint(run_dir / checkpoint_name(100))
    b = {k: torch.as_tensor(np.asarray(v, np.float32))
         for k, v in sample_batch(data, 32, 5, keys=("obs", "action", "next_obs", "reward", "terminal")).items()}
    nets = ckpt.nets
    s, s2 = nets.normalize(b["obs"]), nets.normalize(b["next_obs"])
    for i, seed in enumerate((10, 11)):
        expand = lambda t: t.expand(2, -1, -1)
        with torch.no_grad():
            x2 = torch.cat([s2, nets.policy(expand(s2))[i]], -1)
            y = b["reward"] + 0.99 * (1 - b["terminal"]) * torch.minimum(nets.q1(expand(x2))[i], nets.q2(expand(x2))[i]).squeeze(-1)
        x = torch.cat([s, b["action"]], -1)
        params = [*nets.q1.parameters(), *nets.q2.parameters()]
        for p in params:
            p.grad = None
        loss = ((nets.q1(expand(x))[i].squeeze(-1) - y) ** 2).mean() + ((nets.q2(expand(x))[i].squeeze(-1) - y) ** 2).mean()
        loss.backward()
        norm = torch.sqrt(sum(p.grad[i].pow(2).sum() for p in params)).item()
        q1_norm = torch.sqrt(sum(p.grad[i].pow(2).sum() for p in nets.q1.parameters())).item()
        row = df[(df.step == 100) & (df.seed == seed)].iloc[0]
        assert row["td_loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert row["critic_grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert row["q1_grad_norm"] == pytest.approx(q1_norm, rel=1e-5)
    # the NaN seed's gradient is NaN, the other seed's stays finite at the same checkpoint
    last = df[df.step == 200].set_index("seed")
    assert math.isnan(last.loc[11, "critic_grad_norm"]) and math.isfinite(last.loc[10, "critic_grad_norm"])
    # without rewards: NaN columns, no error
    assert df.td_loss.notna().any()
    assert analyse_run(run_dir, transitions(), n_samples=8, sample_seed=5)["td_loss"].isna().all()


def test_analyse_run_cosines_to_final_and_last_finite(run_dir):
    from seemrl.algos.td3 import load_checkpoint
    from seemrl.analysis.seem import sample_batch
    data = transitions()
    df = analyse_run(run_dir, data, n_samples=32, sample_seed=5).set_index(["step", "seed"])
    for kind in ("params", "ntk", "actions"):
        assert df.loc[(200, 10), f"cos_to_final_{kind}"] == pytest.approx(1.0)
        assert df.loc[(0, 10), f"cos_to_final_{kind}"] < 1.0 - 1e-9
        assert df.loc[(0, 10), f"cos_to_final_{kind}"] == pytest.approx(df.loc[(0, 10), f"cos_to_last_finite_{kind}"])
        # seed 11 went NaN at 200: no cosine to its final checkpoint, but to its last finite one (100)
        assert df.loc[(0, 11), f"cos_to_final_{kind}"] != df.loc[(0, 11), f"cos_to_final_{kind}"] or kind == "actions"
        assert df.loc[(100, 11), f"cos_to_last_finite_{kind}"] == pytest.approx(1.0)
        assert math.isnan(df.loc[(200, 11), f"cos_to_last_finite_{kind}"]) or kind == "actions"
    assert df.loc[(0, 11), "last_finite_step"] == 100 and df.loc[(0, 10), "last_finite_step"] == 200
    assert math.isnan(df.loc[(200, 11), "last_finite_step"])
    # the NTK cosine by hand: G(X, X) of Q1 at steps 0 and 200, seed 10
    b = {k: torch.as_tensor(v) for k, v in sample_batch(data, 32, 5).items()}
    grams = []
    for step in (0, 200):
        nets = load_checkpoint(run_dir / checkpoint_name(step)).nets
        phi = q1_jacobian(nets.q1, 0, torch.cat([nets.normalize(b["obs"]), b["action"]], -1)).double()
        grams.append((phi @ phi.T).flatten())
    expected = (grams[0] @ grams[1] / (grams[0].norm() * grams[1].norm())).item()
    assert df.loc[(0, 10), "cos_to_final_ntk"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ diverged checkpoints never crash
def test_analyse_run_records_every_kind_of_divergence_without_raising(tmp_path):
    """Seed 0 healthy; seed 1 inf in Q2 only; seed 2 huge finite Q1 weights (Q overflows to inf);
    seed 3 a NaN actor (X* non-finite); seed 4 weights so large that Q is finite but the fp32
    Jacobian products overflow (the structured method's fp64 Grams do not). A final checkpoint
    where every seed is NaN."""
    cfg = TD3Config(hidden=(8, 8), gamma=0.99)
    data = {**transitions(), "reward": np.ones(200, np.float32)}
    seeds = [0, 1, 2, 3, 4]
    nets = build_nets(cfg, seeds, OBS, ACT)
    save_checkpoint(tmp_path / checkpoint_name(0), nets, cfg, seeds, 0, [None] * 5)
    with torch.no_grad():
        nets.q2.weights[0][1].fill_(math.inf)
        for w in nets.q1.weights:
            w[2].mul_(1e15)
        nets.actor.biases[0][3].fill_(math.nan)
        nets.q1.weights[0][4].mul_(1e21)  # Q ~ 1e21 is finite in fp32, the Gram (~1e40) is not
    save_checkpoint(tmp_path / checkpoint_name(10), nets, cfg, seeds, 10, [None, 10, None, None, None])
    with torch.no_grad():
        for p in nets.q1.parameters():
            p.fill_(math.nan)
    save_checkpoint(tmp_path / checkpoint_name(20), nets, cfg, seeds, 20, [20] * 5)
    structured = analyse_run(tmp_path, data, n_samples=16, sample_seed=1, replace=False).set_index(["step", "seed"])
    assert not structured.loc[(10, 4), "diverged"] and math.isfinite(structured.loc[(10, 4), "seem"])
    assert structured.loc[(10, 4), "q_data_mean"] > 1e15
    df = analyse_run(tmp_path, data, n_samples=16, sample_seed=1, replace=False, method="jacobian")
    d = df.set_index(["step", "seed"])
    for frame in (d, structured):
        for seed in (1, 2, 3):
            assert frame.loc[(10, seed), "diverged"] and math.isnan(frame.loc[(10, seed), "seem"]), seed
        assert frame.loc[20, "diverged"].all()
    assert not d.loc[0, "diverged"].any() and np.isfinite(d.loc[0, "seem"]).all()
    assert d.loc[(10, 0), "diverged"] == False and math.isfinite(d.loc[(10, 0), "seem"])  # noqa: E712
    for seed in (1, 2, 3, 4):
        assert d.loc[(10, seed), "diverged"], seed
        assert math.isnan(d.loc[(10, seed), "seem"]), seed
    assert math.isfinite(d.loc[(10, 4), "q_data_mean"]) and not math.isfinite(d.loc[(10, 2), "q_data_mean"])
    assert math.isfinite(d.loc[(10, 1), "q_data_mean"])  # Q1 is fine, Q2 is not
    assert d.loc[20, "diverged"].all() and d.loc[20, "seem"].isna().all()
    assert d.loc[20, "cos_to_final_params"].isna().all()
    assert (d.loc[(0, 0), "last_finite_step"], d.loc[(0, 1), "last_finite_step"]) == (10, 0)
    # the verdict reads them as diverged
    v = divergence_verdict(df).set_index("seed")
    assert v["diverged"].all() and (v.loc[[1, 2, 3, 4], "first_diverged_step"] == 10).all()


def test_analyse_run_on_a_batchnorm_critic_leaves_running_statistics_alone(tmp_path):
    """Every forward of the analysis is in eval mode: two analyses of the same run agree exactly."""
    cfg = TD3Config(hidden=(8, 8), gamma=0.99, critic={"norm": "batchnorm", "dropout": 0.1})
    data = {**transitions(), "reward": np.ones(200, np.float32)}
    nets = build_nets(cfg, [0, 1], OBS, ACT)
    nets.q1.train()
    with torch.no_grad():
        nets.q1(torch.randn(2, 32, OBS + ACT) * 3 + 1)  # running statistics away from (0, 1)
    save_checkpoint(tmp_path / checkpoint_name(0), nets, cfg, [0, 1], 0, [None, None])
    first = analyse_run(tmp_path, data, n_samples=16, sample_seed=1)
    second = analyse_run(tmp_path, data, n_samples=16, sample_seed=1)
    pd.testing.assert_frame_equal(first, second)
    assert np.isfinite(first[["seem", "td_loss", "critic_grad_norm", "q_data_mean"]].to_numpy()).all()


def test_training_rewards_are_the_algorithms_own(run_dir, tmp_path):
    """The analysis's TD loss uses the rewards the run trained on: raw for TD3, x10 for the
    authors' Diffusion-QL (its prepare_data)."""
    from seemrl.algos import diffql
    from seemrl.analysis.seem import training_rewards
    from seemrl.data.transitions import Transitions

    n = 40
    a = transitions(n)
    reward = np.tile(np.array([0.0, 1.0], np.float32), n // 2)
    t = Transitions(obs=a["obs"], action=a["action"], reward=reward, next_obs=a["next_obs"],
                    terminal=np.zeros(n, bool), timeout=np.arange(n) % 10 == 9, episode_id=np.arange(n) // 10,
                    step=np.arange(n) % 10)
    np.testing.assert_array_equal(training_rewards(t, run_dir), reward)  # TD3 trains on raw rewards
    cfg = diffql.DiffQLConfig(hidden=(8, 8), reward_transform="x10")
    out = tmp_path / "diffql"
    out.mkdir()
    diffql.save_checkpoint(out / checkpoint_name(0), diffql.build_nets(cfg, [0], OBS, ACT), cfg, [0], 0, [None])
    np.testing.assert_array_equal(training_rewards(t, out), 10 * reward)


# ------------------------------------------------------------------ the rightmost eigenvalue (Krylov-Schur)
def _ntk_a(hidden, n, noise, seed=0, scale=1.0):
    """A of a random StackedMLP critic on random X and X* = X + noise (noise 0: A = -(1 - gamma) G,
    every eigenvalue <= 0, the rightmost inside a cluster at 0: the hard case for Krylov)."""
    from seemrl.analysis.seem import seem_matrices

    torch.manual_seed(seed)
    net = StackedMLP(seed_generators([seed], 1), 23, 1, hidden)
    with torch.no_grad():
        for w in net.weights:
            w.mul_(scale)
    x = torch.randn(n, 23)
    a, _, _ = seem_matrices(net, 0, x, x + noise * torch.randn(n, 23), 0.99)
    return a


@pytest.mark.parametrize("hidden,n,noise,scale", [
    ((32, 32), 400, 0.1, 1.0),    # positive SEEM, as at initialisation
    ((64, 64), 600, 0.1, 3.0),    # larger weights: a larger positive SEEM
    ((64, 64), 512, 0.0, 1.0),    # X* = X: SEEM < 0, the rightmost at the edge of a cluster near 0
    ((32, 32), 600, 1e-3, 1.0),   # X* ~ X: SEEM ~ -1e-5 ||A||
])
def test_krylov_matches_the_full_solve(hidden, n, noise, scale):
    from seemrl.analysis.seem import rightmost_eigenvalue, seem_from_matrix

    a = _ntk_a(hidden, n, noise, scale=scale)
    full = torch.linalg.eigvals(a).real.max().item()
    fro = torch.linalg.matrix_norm(a).item()
    value, info = rightmost_eigenvalue(a)
    assert value is not None, info
    assert abs(value - full) <= 1e-9 * fro, (value, full, info)
    assert info["residual"] <= 1e-9
    by_krylov, by_full = seem_from_matrix(a, solver="krylov"), seem_from_matrix(a, solver="full")
    assert by_krylov["seem_solver"] == "krylov" and by_full["seem_solver"] == "full"
    assert abs(by_krylov["seem_normalized"] - by_full["seem_normalized"]) <= 1e-9
    assert (by_krylov["seem_normalized"] > 1e-6) == (by_full["seem_normalized"] > 1e-6)  # the same verdict


def test_krylov_finds_a_rightmost_complex_pair():
    """A real matrix whose rightmost eigenvalues are a conjugate pair 0.5 +- 2i (a rotation block)
    among real ones down to -10: the pair is kept whole and its real part returned."""
    from seemrl.analysis.seem import rightmost_eigenvalue

    rng = np.random.default_rng(0)
    d = np.diag(np.concatenate([[0.0, 0.0], -np.linspace(0.01, 10, 298)]))
    d[:2, :2] = [[0.5, 2.0], [-2.0, 0.5]]
    q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    a = torch.as_tensor(q @ d @ q.T)
    value, info = rightmost_eigenvalue(a)
    assert value == pytest.approx(0.5, abs=1e-8), info


def test_krylov_falls_back_to_the_full_solve(monkeypatch):
    """No convergence (no restart allowed) or a small A: the full solve gives the value, and the
    row says so; a bad solver name is refused."""
    import seemrl.analysis.seem as S

    a = _ntk_a((64, 64), 512, 0.0)
    full = torch.linalg.eigvals(a).real.max().item()
    assert S.rightmost_eigenvalue(a, max_restarts=0)[0] is None
    with monkeypatch.context() as m:
        m.setattr(S, "KRYLOV_RESTARTS", 0)
        result = S.seem_from_matrix(a)
    assert result["seem_solver"] == "full (krylov did not converge)" and result["seem"] == full
    small = _ntk_a((16, 16), 2 * S.KRYLOV_DIM, 0.1)
    assert S.seem_from_matrix(small)["seem_solver"] == "full"
    with pytest.raises(ValueError, match="solver must be one of"):
        S.seem_from_matrix(small, solver="lanczos")
