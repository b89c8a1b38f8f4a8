"""IQL on the training engine: per-seed independence, determinism, divergence records, windows,
checkpoints and resume, reward handling, and the update itself against a plain single-seed IQL."""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import seemrl.algos
from seemrl.algos import iql
from seemrl.data.transitions import Transitions
from seemrl.engine import Draw, cosine_lr
from seemrl.nets import StackedMLP, per_seed_norm, seed_generators

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: one CPU thread is faster than several on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, log_every=3)


def _arrays(n=500, obs_dim=5, act_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return dict(obs=obs, action=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
                reward=rng.normal(size=n).astype(np.float32),
                next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
                terminal=rng.random(n) < 0.05)


def _data(arrays, mean=None, std=None, device="cpu"):
    d = arrays["obs"].shape[1]
    return iql.OfflineData.from_arrays(**arrays, mean=np.zeros(d) if mean is None else mean,
                                       std=np.ones(d) if std is None else std, device=device)


def _trainer(cfg, seeds, arrays=None, use_window=None):
    arrays = arrays or _arrays()
    obs_dim, act_dim = arrays["obs"].shape[1], arrays["action"].shape[1]
    t = iql.IQLTrainer(cfg, seeds, _data(arrays), iql.build_nets(cfg, seeds, obs_dim, act_dim), "cpu")
    if use_window is not None:
        t.use_window = use_window
    return t


def _train(cfg, seeds, arrays, out, **kw):
    mean, std = iql.state_normalizer(arrays["obs"], cfg.normalize_states)
    nets = iql.build_nets(cfg, seeds, arrays["obs"].shape[1], arrays["action"].shape[1], mean, std)
    result = iql.train(cfg, seeds, _data(arrays, mean, std), nets, out, log=lambda m: None, **kw)
    return nets, result


def _modules(nets):
    return {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2, "value": nets.value}


def _all_tensors(t):
    return [x.detach() for m in (*t.networks.values(), *t.targets.values()) for x in (*m.parameters(), *m.buffers())]


# ------------------------------------------------------------------ seeds
@pytest.mark.parametrize("extra", [
    dict(),
    dict(critic={"norm": "layernorm"}),
    dict(critic={"norm": "batchnorm"}),
    dict(critic={"dropout": 0.2}),  # V gets it too (value_norm_like_critic)
    dict(critic={"norm": "layernorm", "weight_decay": 1e-3}, value_norm_like_critic=False),
    dict(critic={"weight_norm_output": True, "ofn": True, "weight_decay": 1e-3}),
    dict(actor_type="deterministic", actor_dropout=0.3, optimizer="sgd", actor_lr_schedule="constant"),
    dict(actor_dropout=0.1, expectile=0.9, beta=10.0),
], ids=lambda e: str(e))
def test_seed_in_batch_matches_seed_alone(tmp_path, extra):
    cfg = iql.IQLConfig(**SMALL, **extra)
    arrays = _arrays()
    together, _ = _train(cfg, [3, 7], arrays, tmp_path / "together")
    alone, _ = _train(cfg, [7], arrays, tmp_path / "alone")
    for name, module in _modules(together).items():
        a, b = dict(module.named_parameters()), dict(_modules(alone)[name].named_parameters())
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key][1], b[key][0], rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    assert not torch.allclose(together.value.weights[0][0], together.value.weights[0][1])


def test_same_seed_same_result(tmp_path):
    cfg = iql.IQLConfig(**SMALL, actor_dropout=0.1)
    arrays = _arrays()
    a, ra = _train(cfg, [1, 2], arrays, tmp_path / "a")
    b, rb = _train(cfg, [1, 2], arrays, tmp_path / "b")
    for name in ("actor", "q1", "q2", "value"):
        for pa, pb in zip(getattr(a, name).parameters(), getattr(b, name).parameters()):
            assert torch.equal(pa, pb), name
    pd.testing.assert_frame_equal(ra.metrics, rb.metrics, check_exact=True)


# ------------------------------------------------------------------ the update against plain IQL
def _bench():
    spec = importlib.util.spec_from_file_location("iql_throughput", ROOT / "benchmarks" / "iql_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("extra", [dict(), dict(actor_type="deterministic", critic={"norm": "layernorm"}),
                                   dict(expectile=0.9, beta=10.0, value_norm_like_critic=False,
                                        critic={"norm": "layernorm"})], ids=str)
def test_update_matches_plain_single_seed_iql(extra):
    """The stacked trainer, seed 5 among others, computes what a plain CORL-style IQL computes from
    the same weights and minibatches (the benchmark's baseline), step for step."""
    cfg = iql.IQLConfig(steps=20, batch_size=64, hidden=(16, 16), **extra)
    arrays = _arrays(obs_dim=5, act_dim=3)
    trainer = _trainer(cfg, [2, 5], arrays)
    plain = _bench().PlainIQL(cfg, _data(arrays), "cpu", obs_dim=5, act_dim=3).load_seed(trainer.nets, 1)
    batches = seed_generators([5], iql.STREAM_BATCH)[0]
    draw = Draw("idx", "randint", (cfg.batch_size,), iql.STREAM_BATCH, high=500)
    for step in range(6):
        out = trainer.step()
        ref = plain.step(draw.sample(batches))
        for k in ("critic_loss", "value_loss", "actor_loss"):
            torch.testing.assert_close(out[k][1], ref[k], rtol=1e-5, atol=1e-6, msg=f"step {step + 1} {k}")
    nets = trainer.nets
    linears = lambda seq: [m for m in seq if isinstance(m, torch.nn.Linear)]
    for seq, st in ((plain.actor, nets.actor.net), (plain.q1, nets.q1), (plain.q2, nets.q2), (plain.vf, nets.value),
                    (plain.q1_t, trainer.targets["q1"])):
        for lin, w, b in zip(linears(seq), st.weights, st.biases, strict=True):
            torch.testing.assert_close(w[1].T, lin.weight, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b[1, 0], lin.bias, rtol=1e-4, atol=1e-6)
    if cfg.actor_type == "gaussian":
        torch.testing.assert_close(nets.actor.log_std[1, 0], plain.log_std, rtol=1e-4, atol=1e-6)
        assert not torch.equal(plain.log_std, torch.zeros(3))  # it learned
    else:
        assert nets.actor.log_std is None
    # the learning rate of the next step (the parameters above already agree on those used)
    assert trainer.actor_lr(trainer.it) == pytest.approx(plain.aopt.param_groups[0]["lr"], rel=1e-9)


def test_expectile_loss():
    u = torch.tensor([[[-2.0], [1.0], [3.0]]])
    torch.testing.assert_close(iql.expectile_loss(u, 0.5), (0.5 * u ** 2).mean((1, 2)))
    torch.testing.assert_close(iql.expectile_loss(u, 0.9), torch.tensor([(0.1 * 4 + 0.9 * 1 + 0.9 * 9) / 3]))


def test_policy_is_the_deterministic_tanh_mean_and_the_weights_are_clipped():
    cfg = iql.IQLConfig(**SMALL, beta=1e4)  # huge advantages: every weight hits exp_adv_max
    t = _trainer(cfg, [0, 1])
    obs = torch.randn(2, 9, 5) * 50
    pi = t.nets.policy(obs)
    assert pi.shape == (2, 9, 2) and pi.abs().max() <= 1.0
    torch.testing.assert_close(pi, torch.tanh(t.nets.actor.net(obs)))
    torch.testing.assert_close(pi, t.nets.actor(obs))
    for _ in range(3):
        out = t.step()
        assert torch.isfinite(out["actor_loss"]).all() and torch.isfinite(out["critic_loss"]).all()
    with torch.no_grad():  # the clamp of the log-std acts in the loss
        t.nets.actor.log_std.fill_(-50.0)
    assert torch.isfinite(t.step()["actor_loss"]).all()


# ------------------------------------------------------------------ divergence
def test_nan_in_one_seed_is_recorded_and_isolated(tmp_path):
    cfg = iql.IQLConfig(**SMALL)
    arrays = _arrays()
    nets = iql.build_nets(cfg, [0, 1], 5, 2)
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)  # seed 0's Q1 output layer blows up
    result = iql.train(cfg, [0, 1], _data(arrays), nets, tmp_path, log=lambda m: None)
    assert result.diverged_step == [1, None]  # at the step it happened, not at a logged step
    for m in _modules(nets).values():
        for p in m.parameters():
            assert torch.isfinite(p[1]).all()
    last = result.metrics[result.metrics.step == SMALL["steps"]].set_index("seed")
    assert not math.isfinite(last.loc[0, "critic_loss"])
    assert all(math.isfinite(last.loc[1, k]) for k in (*iql.METRIC_KEYS, *iql.GRAD_NORM_KEYS))


def test_divergence_step_is_exact_between_logged_steps():
    cfg = iql.IQLConfig(**{**SMALL, "log_every": 1000})
    t = _trainer(cfg, [0, 1])
    for _ in range(7):
        t.step()
    assert t.first_nonfinite_steps() == [None, None]
    with torch.no_grad():
        t.nets.q2.weights[0][1].fill_(math.nan)  # seed 1's second critic, before step 8
    for _ in range(5):
        t.step()
    assert t.first_nonfinite_steps() == [None, 8]
    other = _trainer(cfg, [0, 1])
    other.load_state_dict(t.state_dict())  # the record survives a resume
    assert other.first_nonfinite_steps() == [None, 8]


# ------------------------------------------------------------------ windows and state
@pytest.mark.parametrize("extra", [dict(actor_dropout=0.2), dict(critic={"norm": "batchnorm"})], ids=str)
def test_windowed_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch, extra):
    monkeypatch.setattr(iql.IQLTrainer, "_window_rows", lambda self: 3)
    cfg = iql.IQLConfig(steps=17, batch_size=16, hidden=(16, 16), checkpoint_every=7, **extra)
    plain = _trainer(cfg, [1, 2], use_window=False)
    windowed = _trainer(cfg, [1, 2], use_window=True)
    for step in range(1, 18):
        a, b = plain.step(grad_norm=step % 3 == 0), windowed.step(grad_norm=step % 3 == 0)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
        if step == 8:  # mid-window: a fresh windowed trainer continues from the saved state
            torch.save(windowed.state_dict(), tmp_path / "s.pt")
            windowed = _trainer(cfg, [1, 2], use_window=True)
            windowed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert all(torch.equal(x, y) for x, y in zip(_all_tensors(plain), _all_tensors(windowed), strict=True))
    assert plain.optimizers["actor"].param_groups[0]["lr"] == windowed.optimizers["actor"].param_groups[0]["lr"]


def test_trainer_state_round_trip_with_dropout_generators(tmp_path):
    cfg = iql.IQLConfig(**SMALL, critic={"dropout": 0.2}, actor_dropout=0.1)
    straight = _trainer(cfg, [0, 1])
    assert not straight.graphable  # critic / V dropout draw inside the forward pass
    for _ in range(5):
        straight.step()
    torch.save(straight.state_dict(), tmp_path / "state.pt")
    restored = _trainer(cfg, [0, 1])
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(4):
        a, b = straight.step(), restored.step()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(_all_tensors(straight), _all_tensors(restored), strict=True))


def test_graphable_and_draws():
    assert _trainer(iql.IQLConfig(**SMALL, actor_dropout=0.1), [0]).graphable
    t = _trainer(iql.IQLConfig(**SMALL), [0])
    assert [d.name for d in t.draws] == ["idx"] and t.mode == "eager (CPU)" and not t.graphed
    d = _trainer(iql.IQLConfig(**SMALL, actor_dropout=0.1), [0]).draws[1]
    assert d.kind == "uniform" and d.shape == (32, 32) and d.batches_exactly()


# ------------------------------------------------------------------ learning rate and gradients
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_actor_learning_rate_schedule(schedule):
    cfg = iql.IQLConfig(**SMALL, actor_lr=1e-3, actor_lr_schedule=schedule)
    t = _trainer(cfg, [0])
    for k in range(cfg.steps):
        t.step()
        want = cosine_lr(1e-3, k, cfg.steps) if schedule == "cosine" else 1e-3
        assert t.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
    assert t.optimizers["critic"].param_groups[0]["lr"] == 3e-4 and t.optimizers["value"].param_groups[0]["lr"] == 3e-4


def test_grad_norms_are_the_gradients_the_optimisers_apply():
    cfg = iql.IQLConfig(**SMALL, optimizer="sgd", critic_lr=0.1, value_lr=0.05)
    t = _trainer(cfg, [0, 1])
    snap = lambda mods: [p.detach().clone() for m in mods for p in m.parameters()]
    critics, value = (t.nets.q1, t.nets.q2), (t.nets.value,)
    c0, v0 = snap(critics), snap(value)
    out = t.step(grad_norm=True)
    for key, mods, before, lr in (("critic_grad_norm", critics, c0, 0.1), ("value_grad_norm", value, v0, 0.05)):
        moved = per_seed_norm([(a - b) / lr for a, b in zip(snap(mods), before)])
        torch.testing.assert_close(out[key], moved, rtol=1e-4, atol=1e-6)
    assert not set(iql.GRAD_NORM_KEYS) & set(t.step())  # only computed when asked for


def test_logged_metrics(tmp_path):
    _, result = _train(iql.IQLConfig(**SMALL), [0, 1], _arrays(), tmp_path)
    m = result.metrics
    assert m.step.unique().tolist() == [3, 6, 9, 12] and m.seed.tolist() == [0, 1] * 4
    for k in (*iql.METRIC_KEYS, *iql.GRAD_NORM_KEYS, "critic_param_norm", "value_param_norm"):
        assert m[k].notna().all(), k
    assert m.critic_grad_norm.gt(0).all() and m.value_loss.gt(0).all()


# ------------------------------------------------------------------ checkpoints, resume, interface
def test_checkpoints_round_trip_and_dispatch(tmp_path):
    cfg = iql.IQLConfig(**SMALL, critic={"norm": "layernorm", "norm_layers": [1]}, actor_dropout=0.1)
    arrays = _arrays()
    nets, _ = _train(cfg, [4, 5], arrays, tmp_path)
    paths = iql.checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [iql.checkpoint_name(s) for s in (0, 5, 10, 12)]
    assert seemrl.algos.TRAINERS["iql"] == "seemrl.algos.iql"
    assert torch.load(paths[-1], weights_only=True)["format"] == "seemrl.iql.v1" == iql.CHECKPOINT_FORMAT
    for ck in (iql.load_checkpoint(paths[-1]), seemrl.algos.load_checkpoint(paths[-1])):
        assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg and ck.diverged_step == [None, None]
        assert ck.config.twin_q and ck.config.gamma == 0.99  # what the SEEM analysis reads
        n = ck.nets
        assert isinstance(n.q1, StackedMLP) and n.q1.dims[0] == 5 + 2 and n.q1.layer_norm == (1,)
        obs = torch.as_tensor(arrays["obs"][:7]).expand(2, 7, 5)
        obs_n = n.normalize(obs)
        torch.testing.assert_close(obs_n, nets.normalize(obs))
        x = torch.cat([obs_n, n.policy(obs_n)], -1)
        assert n.policy(obs_n).shape == (2, 7, 2) and n.policy(obs_n).abs().max() <= 1
        for name in ("q1", "q2"):
            torch.testing.assert_close(getattr(n, name)(x), getattr(nets, name)(x))
        torch.testing.assert_close(n.value(obs_n), nets.value(obs_n))
        torch.testing.assert_close(n.policy(obs_n), nets.policy(obs_n))
        torch.testing.assert_close(n.actor.log_std, nets.actor.log_std)
    bad = tmp_path / "step_00000099.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="step_00000099.pt"):
        iql.load_checkpoint(bad)


class _Killed(BaseException):
    """Stands in for SIGKILL: raised right after a resume state was saved."""


def test_train_resumes_bitwise_through_resume_dir(tmp_path, monkeypatch):
    cfg = iql.IQLConfig(steps=30, batch_size=16, hidden=(8, 8), checkpoint_every=10, log_every=5,
                        actor_dropout=0.1, critic={"norm": "layernorm"})
    arrays = _arrays(n=200, obs_dim=4)
    messages = []

    def run(out, resume):
        nets = iql.build_nets(cfg, [0, 1], 4, 2)
        return iql.train(cfg, [0, 1], _data(arrays), nets, out, log=messages.append, resume=resume), nets

    reference, ref_nets = run(tmp_path / "ref", None)
    save = iql.ResumeDir.save
    resume = iql.ResumeDir(tmp_path / "resume", iql.run_identity(cfg, [0, 1], "sha"))

    def save_then_die(self, state):
        save(self, state)
        if state["step"] == 20:
            raise _Killed

    monkeypatch.setattr(iql.ResumeDir, "save", save_then_die)
    with pytest.raises(_Killed):
        run(tmp_path / "out", resume)
    monkeypatch.setattr(iql.ResumeDir, "save", save)
    messages.clear()
    result, nets = run(tmp_path / "out", resume)
    assert "resuming from step 20" in " ".join(messages) and result.resumed_from_step == 20
    pd.testing.assert_frame_equal(result.metrics, reference.metrics, check_exact=True)
    for name in ("actor", "q1", "q2", "value"):
        for x, y in zip(getattr(ref_nets, name).parameters(), getattr(nets, name).parameters(), strict=True):
            assert torch.equal(x, y), name
    for p, q in zip(iql.checkpoint_paths(tmp_path / "ref"), iql.checkpoint_paths(tmp_path / "out"), strict=True):
        a, b = iql.load_checkpoint(p), iql.load_checkpoint(q)
        assert all(torch.equal(x, y) for x, y in zip(a.nets.value.parameters(), b.nets.value.parameters()))


def test_run_identity():
    cfg = iql.IQLConfig(**SMALL)
    ident = iql.run_identity(cfg, [0, 1], "abc")
    assert ident == iql.run_identity(iql.IQLConfig(**SMALL, cuda_graph=False), [0, 1], "abc")
    assert ident != iql.run_identity(iql.IQLConfig(**SMALL, expectile=0.9), [0, 1], "abc")
    assert ident["config"]["hidden"] == [16, 16] and "cuda_graph" not in ident["config"]


def test_evaluate_every_eval_every_steps(tmp_path):
    cfg = iql.IQLConfig(**SMALL, eval_every=5)
    calls = []

    def evaluate(nets):
        calls.append(nets)
        return [SimpleNamespace(seed=s, return_mean=float(len(calls)), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for s in (0, 1)]

    nets, result = _train(cfg, [0, 1], _arrays(), tmp_path, evaluate=evaluate)
    assert result.evaluations.step.tolist() == [5, 5, 10, 10, 12, 12] and calls[0] is nets


def test_evaluate_policies_plays_iql_policies():
    pytest.importorskip("gymnasium")
    from seemrl.evaluation import evaluate_policies

    cfg = iql.IQLConfig(**SMALL)
    nets = iql.build_nets(cfg, [0, 1], 11, 3, np.zeros(11), np.ones(11))  # Hopper sizes
    results = evaluate_policies(nets, [0, 1], "Hopper-v5", n_episodes=1)
    assert [r.seed for r in results] == [0, 1] and all(math.isfinite(r.return_mean) for r in results)


# ------------------------------------------------------------------ rewards and data
def _table(n=600, seed=0):
    a = _arrays(n=n, seed=seed)
    return Transitions(**a, timeout=np.zeros(n, bool), episode_id=np.arange(n) // 40, step=np.arange(n) % 40,
                       meta={"name": "t", "env_id": "x", "source": "test"})


def test_prepare_data_iql_locomotion_rewards():
    t = _table()
    data, extras = iql.prepare_data(t, iql.IQLConfig(), "cpu")
    returns = np.array([t.reward[t.episode_id == e].astype(np.float64).sum() for e in np.unique(t.episode_id)])
    scale = 1000.0 / (returns.max() - returns.min())
    assert extras["reward_mode"] == "iql_locomotion" and extras["reward_scale"] == pytest.approx(scale)
    assert extras["return_min"] == pytest.approx(returns.min()) and extras["return_max"] == pytest.approx(returns.max())
    np.testing.assert_allclose(data.reward.flatten().numpy(), t.reward * scale, rtol=1e-6)
    # on a subset the returns are those of the rows kept
    sub = t.take(np.random.default_rng(1).choice(len(t), 60, replace=False))
    _, sub_extras = iql.prepare_data(sub, iql.IQLConfig(), "cpu")
    kept = np.array([sub.reward[sub.episode_id == e].astype(np.float64).sum() for e in np.unique(sub.episode_id)])
    assert sub_extras["reward_scale"] == pytest.approx(1000.0 / (kept.max() - kept.min()))
    # states standardised, next states with the same statistics, terminals stop the bootstrap
    mean, std = extras["obs_mean"], extras["obs_std"]
    np.testing.assert_allclose(mean, t.obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.next_obs.numpy(), (t.next_obs - mean) / std, rtol=1e-5, atol=1e-5)
    assert data.not_done.flatten().tolist() == (1.0 - t.terminal).tolist()
    flat = t.take(np.arange(len(t)))
    flat.reward[:] = 1.0
    flat.episode_id[:] = np.arange(len(t)) % 2  # every episode returns 300
    with pytest.raises(ValueError, match="iql_locomotion"):
        iql.prepare_data(flat, iql.IQLConfig(), "cpu")


@pytest.mark.parametrize("mode", ["minus1", "none", "x10"])
def test_prepare_data_other_reward_modes(mode):
    t = _table()
    data, extras = iql.prepare_data(t, iql.IQLConfig(reward_mode=mode, normalize_states=False), "cpu")
    want = {"minus1": t.reward - 1, "none": t.reward, "x10": t.reward * 10}[mode]
    np.testing.assert_allclose(data.reward.flatten().numpy(), want, rtol=1e-6)
    assert extras["reward_scale"] is None and extras["obs_mean"].tolist() == [0.0] * 5
    np.testing.assert_array_equal(data.obs.numpy(), t.obs)
    assert iql.IQLConfig(**iql.PRESETS["antmaze"]).reward_mode == "minus1"


def test_config_rejects_bad_values():
    for kwargs, field in [(dict(expectile=1.0), "expectile"), (dict(beta=-1), "beta"), (dict(tau=0), "tau"),
                          (dict(actor_type="tanh_gaussian"), "actor_type"), (dict(actor_dropout=1.0), "actor_dropout"),
                          (dict(log_std_min=3.0), "log_std_min"), (dict(reward_mode="x100"), "reward_mode"),
                          (dict(actor_lr_schedule="linear"), "actor_lr_schedule"), (dict(value_lr=0), "value_lr"),
                          (dict(critic={"layer_norm": True}), "layer_norm"), (dict(critic={"weight_decay": -1}), "weight_decay"),
                          (dict(optimizer="rmsprop"), "optimizer"), (dict(matmul_precision="fp16"), "matmul_precision"),
                          (dict(eval_every=-1), "eval_every"), (dict(batch_size=0), "batch_size"),
                          (dict(exp_adv_max=0), "exp_adv_max")]:
        with pytest.raises(ValueError, match=field):
            iql.IQLConfig(**kwargs)
    with pytest.raises(TypeError):
        iql.IQLConfig(stpes=10)
    assert iql.Config is iql.IQLConfig


# ------------------------------------------------------------------ benchmark
def test_benchmark_runs_at_tiny_size():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "iql_throughput.py"), "--tiny", "--iters", "2",
                           "--seeds", "1", "2", "--norms", "layernorm"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |" in lines
    assert any(line.startswith("| layernorm | plain PyTorch | ieee | 1 |") for line in lines)
    rows = [line for line in lines if line.startswith("| layernorm | seemrl stacked | ieee | ")]
    assert [r.split("|")[4].strip() for r in rows] == ["1", "2"] and all(r.rstrip().endswith("| - |") for r in rows)


# ------------------------------------------------------------------ CUDA (skipped without a GPU)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
@pytest.mark.parametrize("extra", [dict(), dict(critic={"norm": "layernorm"}), dict(critic={"norm": "batchnorm"}),
                                   dict(actor_dropout=0.1, actor_type="deterministic")], ids=str)
def test_graphed_matches_eager_on_cuda(extra):
    cfg = dict(steps=200, batch_size=256, hidden=(256, 256), checkpoint_every=50, **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def make(graph):
        c = iql.IQLConfig(**cfg, cuda_graph=graph)
        return iql.IQLTrainer(c, [0, 1, 2], _data(arrays, device="cuda"), iql.build_nets(c, [0, 1, 2], 17, 6), "cuda")

    eager, graphed = make(False), make(True)
    assert graphed.graphed and not eager.graphed
    for step in range(1, 201):
        a, b = eager.step(grad_norm=step % 10 == 0), graphed.step(grad_norm=step % 10 == 0)
        assert a.keys() == b.keys(), step
    drift = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))
                for x, y in zip(_all_tensors(graphed), _all_tensors(eager)))
    print(f"\nIQL GRAPH-VS-EAGER {extra}: max relative difference after 200 steps {drift:.1e}")
    assert drift < 1e-6  # the same kernels (fused capturable Adam in both modes)


@gpu
def test_graphed_run_resumes_and_isolates_nan_on_cuda(tmp_path, monkeypatch):
    cfg = iql.IQLConfig(steps=120, batch_size=256, hidden=(64, 64), checkpoint_every=50, log_every=10)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)
    messages = []

    def run(out, resume, poison=False):
        nets = iql.build_nets(cfg, [0, 1, 2], 17, 6)
        if poison:
            with torch.no_grad():
                nets.q1.weights[-1][2].fill_(math.inf)
        result = iql.train(cfg, [0, 1, 2], _data(arrays, device="cuda"), nets, out, device="cuda",
                           log=messages.append, resume=resume)
        return result, nets

    reference, ref_nets = run(tmp_path / "ref", None, poison=True)
    assert "update step: CUDA graph" in messages and reference.diverged_step == [None, None, 1]
    save = iql.ResumeDir.save

    def save_then_die(self, state):
        save(self, state)
        if state["step"] == 50:
            raise _Killed

    resume = iql.ResumeDir(tmp_path / "resume", {"test": 1})
    monkeypatch.setattr(iql.ResumeDir, "save", save_then_die)
    with pytest.raises(_Killed):
        run(tmp_path / "out", resume, poison=True)
    monkeypatch.setattr(iql.ResumeDir, "save", save)
    result, nets = run(tmp_path / "out", resume, poison=True)
    assert result.resumed_from_step == 50 and result.diverged_step == [None, None, 1]
    for name in ("actor", "q1", "q2", "value"):
        for x, y in zip(getattr(ref_nets, name).parameters(), getattr(nets, name).parameters()):
            torch.testing.assert_close(x[:2], y[:2], rtol=1e-5, atol=1e-6)
            assert torch.isfinite(y[:2]).all()
