"""SEEM: vectorised Jacobians vs the authors' per-sample loop, the eigenvalue computation against
numpy, the homogeneity law of no-LN ReLU nets, and `analyse_run` over real TD3 checkpoints."""
import math

import numpy as np
import pytest
import torch

from seemrl.algos.td3 import TD3Config, build_nets, checkpoint_name, save_checkpoint
from seemrl.analysis.seem import (analyse_run, divergence_verdict, q1_jacobian, q_value_bound, seem,
                                  seem_eigenvalues, seem_from_jacobians, seem_matrix)
from seemrl.nets import StackedMLP, seed_generators

torch.set_num_threads(1)


def stacked(n_seeds=2, in_dim=5, hidden=(16, 16), layer_norm=()):
    return StackedMLP(seed_generators(range(n_seeds), stream=7), in_dim, 1, hidden, layer_norm=layer_norm)


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
    assert all(math.isnan(v) for v in seem_from_jacobians(bad, phi_xs, 0.99).values())


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
    from seemrl.nets import critic_from_config, seed_generators

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
