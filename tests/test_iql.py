"""IQL on the training engine: per-seed independence, determinism, divergence records, windows,
checkpoints and resume, reward handling, and the update itself against a plain single-seed IQL."""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import algo_checks as checks
import numpy as np
import pandas as pd
import pytest
import torch
from algo_checks import one_thread  # noqa: F401 (autouse fixture)

import seemrl.algos
from seemrl.algos import iql
from seemrl.data.transitions import Transitions
from seemrl.training.draws import Draw
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.resume import ResumeDir, checkpoint_name, checkpoint_paths
from seemrl.training.trainer import cosine_lr

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, log_every=3)
_arrays = checks.arrays


def _data(arrays, device="cpu"):
    return checks.offline_data(arrays, device)[0]


def _trainer(cfg, seeds, arrays=None, use_window=None):
    return checks.make_trainer(iql.IQLTrainer, iql.build_nets, cfg, seeds, arrays or _arrays(), use_window=use_window)


def _train(cfg, seeds, arrays, out, **kw):
    return checks.train(iql, cfg, seeds, arrays, out, **kw)


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
    checks.check_seed_alone(lambda seeds, out: _train(cfg, seeds, arrays, out)[0], _modules, tmp_path, "value")


def test_same_seed_same_result(tmp_path):
    cfg = iql.IQLConfig(**SMALL, actor_dropout=0.1)
    checks.check_same_seed_same_result(lambda seeds, out: _train(cfg, seeds, _arrays(), out), _modules, tmp_path)


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
    checks.check_nan_is_isolated(result, _modules(nets), SMALL["steps"])  # at the step it happened
    last = result.metrics[result.metrics.step == SMALL["steps"]].set_index("seed")
    assert all(math.isfinite(last.loc[1, k]) for k in (*iql.METRIC_KEYS, *iql.GRAD_NORM_KEYS))


def test_divergence_step_is_exact_between_logged_steps():
    cfg = iql.IQLConfig(**{**SMALL, "log_every": 1000})
    checks.check_divergence_step_is_exact(lambda: _trainer(cfg, [0, 1]), before=7, after=5)


# ------------------------------------------------------------------ windows and state
@pytest.mark.parametrize("extra", [dict(actor_dropout=0.2), dict(critic={"norm": "batchnorm"})], ids=str)
def test_windowed_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch, extra):
    monkeypatch.setattr(iql.IQLTrainer, "_window_rows", lambda self: 3)
    cfg = iql.IQLConfig(steps=17, batch_size=16, hidden=(16, 16), checkpoint_every=7, **extra)
    # after step 8 (mid-window) a fresh windowed trainer continues from the saved state
    plain, windowed = checks.check_windowed_matches_stepwise(lambda window: _trainer(cfg, [1, 2], use_window=window),
                                                             17, 8, tmp_path, _all_tensors)
    assert plain.optimizers["actor"].param_groups[0]["lr"] == windowed.optimizers["actor"].param_groups[0]["lr"]


def test_trainer_state_round_trip_with_dropout_generators(tmp_path):
    cfg = iql.IQLConfig(**SMALL, critic={"dropout": 0.2}, actor_dropout=0.1)
    assert not _trainer(cfg, [0, 1]).graphable  # critic / V dropout draw inside the forward pass
    checks.check_state_round_trip(lambda: _trainer(cfg, [0, 1]), 5, 4, tmp_path, _all_tensors)


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


def test_compiled_update_with_a_schedule_compiles_once_on_the_cpu():
    """`compile_update` on the CPU with the actor's cosine schedule: the step follows the eager
    one, and later steps do not compile again (a Python-number learning rate would be baked into
    the compiled optimiser step and recompile it at every step, 5 s each at these sizes)."""
    from torch._dynamo.utils import counters

    cfg = dict(SMALL, steps=40, actor_lr=1e-3, actor_lr_schedule="cosine")
    make = lambda compiled: _trainer(iql.IQLConfig(**cfg, compile_update=compiled), [0, 1])  # noqa: E731
    checks.check_compiled_update_matches_eager(make, _all_tensors, steps=4)
    eager, compiled = make(False), make(True)
    for _ in range(3):
        eager.step(), compiled.step()
    graphs = counters["stats"]["unique_graphs"]
    for k in range(3, 9):
        eager.step(), compiled.step()
        assert float(compiled.optimizers["actor"].param_groups[0]["lr"]) == cosine_lr(1e-3, k, 40)
    assert counters["stats"]["unique_graphs"] == graphs, "the compiled step compiled again"
    assert compiled._update._compiled not in (None, False)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_tensor_learning_rates_step_bitwise_as_numbers(optimizer):
    """The float64 learning rates `compile_update` uses on the CPU: an eager step (its fallback)
    moves every parameter bit for bit as with Python-number rates, schedule included."""
    cfg = iql.IQLConfig(**SMALL, optimizer=optimizer, actor_lr=1e-3, actor_lr_schedule="cosine")
    plain, tensors = _trainer(cfg, [0, 1]), _trainer(cfg, [0, 1])
    tensors._tensor_learning_rates()
    assert all(isinstance(g["lr"], torch.Tensor) for o in tensors.optimizers.values() for g in o.param_groups)
    for _ in range(5):
        plain.step(), tensors.step()
    for a, b in zip(_all_tensors(plain), _all_tensors(tensors), strict=True):
        assert torch.equal(a, b)


def test_grad_norms_are_the_gradients_the_optimisers_apply():
    cfg = iql.IQLConfig(**SMALL, optimizer="sgd", critic_lr=0.1, value_lr=0.05)
    t = _trainer(cfg, [0, 1])
    assert set(iql.GRAD_NORM_KEYS) == {"critic_grad_norm", "value_grad_norm"}
    checks.check_grad_norms_are_applied(t, {"critic_grad_norm": ((t.nets.q1, t.nets.q2), 0.1),
                                            "value_grad_norm": ((t.nets.value,), 0.05)})


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
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [checkpoint_name(s) for s in (0, 5, 10, 12)]
    assert seemrl.algos.TRAINERS["iql"] == "seemrl.algos.iql"
    assert torch.load(paths[-1], weights_only=True)["format"] == "seemrl.iql.v1" == iql.CHECKPOINT_FORMAT
    for ck in (iql.load_checkpoint(paths[-1]), seemrl.algos.load_checkpoint(paths[-1])):
        assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg and ck.diverged_step == [None, None]
        assert ck.config.twin_q and ck.config.gamma == 0.99  # what the SEEM analysis reads
        n = ck.nets
        assert isinstance(n.q1, StackedMLP) and n.q1.dims[0] == 5 + 2
        assert n.q1.norm_layers == (1,) and n.q1.norm == "layernorm"
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
    checks.check_bad_checkpoint_is_named(iql.load_checkpoint, tmp_path, "step_00000099.pt")


def test_train_resumes_bitwise_through_resume_dir(tmp_path, monkeypatch):
    cfg = iql.IQLConfig(steps=30, batch_size=16, hidden=(8, 8), checkpoint_every=10, log_every=5,
                        actor_dropout=0.1, critic={"norm": "layernorm"})
    arrays = _arrays(n=200, obs_dim=4)
    messages = []

    def run(out, resume):
        nets = iql.build_nets(cfg, [0, 1], 4, 2)
        return iql.train(cfg, [0, 1], _data(arrays), nets, out, log=messages.append, resume=resume), nets

    reference, ref_nets = run(tmp_path / "ref", None)
    resume = ResumeDir(tmp_path / "resume", iql.run_identity(cfg, [0, 1], "sha"))

    def run_fresh_log(resume):  # the second run's messages only
        messages.clear()
        return run(tmp_path / "out", resume)

    result, nets = checks.killed_then_resumed(monkeypatch, run_fresh_log, resume, kill_step=20)
    assert "resuming from step 20" in " ".join(messages) and result.resumed_from_step == 20
    pd.testing.assert_frame_equal(result.metrics, reference.metrics, check_exact=True)
    for name in ("actor", "q1", "q2", "value"):
        for x, y in zip(getattr(ref_nets, name).parameters(), getattr(nets, name).parameters(), strict=True):
            assert torch.equal(x, y), name
    for p, q in zip(checkpoint_paths(tmp_path / "ref"), checkpoint_paths(tmp_path / "out"), strict=True):
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
    checks.check_evaluates_every_eval_every(lambda ev: _train(cfg, [0, 1], _arrays(), tmp_path, evaluate=ev))


def test_evaluate_policies_plays_iql_policies():
    pytest.importorskip("gymnasium")
    from seemrl.training.evaluation import evaluate_policies

    cfg = iql.IQLConfig(**SMALL)
    nets = iql.build_nets(cfg, [0, 1], 11, 3, np.zeros(11), np.ones(11))  # Hopper sizes
    results = evaluate_policies(nets, [0, 1], "Hopper-v5", n_episodes=1)
    assert [r.seed for r in results] == [0, 1] and all(math.isfinite(r.return_mean) for r in results)


# ------------------------------------------------------------------ rewards and data
def _table(n=600, seed=0):
    a = _arrays(n=n, seed=seed)
    return Transitions(**a, timeout=np.zeros(n, bool), episode_id=np.arange(n) // 40, step=np.arange(n) % 40,
                       meta={"name": "t", "env_id": "x", "source": "test"})


def test_config_rejects_bad_values():
    for kwargs, field in [(dict(expectile=1.0), "expectile"), (dict(beta=-1), "beta"), (dict(tau=0), "tau"),
                          (dict(actor_type="tanh_gaussian"), "actor_type"), (dict(actor_dropout=1.0), "actor_dropout"),
                          (dict(log_std_min=3.0), "log_std_min"), (dict(reward_transform="x100"), "reward_transform"),
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
gpu = checks.gpu


@gpu
@pytest.mark.parametrize("extra", [dict(), dict(critic={"norm": "layernorm"}), dict(critic={"norm": "batchnorm"}),
                                   dict(actor_dropout=0.1, actor_type="deterministic")], ids=str)
def test_graphed_matches_eager_on_cuda(extra):
    cfg = dict(steps=200, batch_size=256, hidden=(256, 256), checkpoint_every=50, **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def make(graph):
        c = iql.IQLConfig(**cfg, cuda_graph=graph)
        return iql.IQLTrainer(c, [0, 1, 2], _data(arrays, device="cuda"), iql.build_nets(c, [0, 1, 2], 17, 6), "cuda")

    eager, graphed = checks.run_graphed_and_eager(make, 200)
    drift = checks.max_rel_diff(_all_tensors(graphed), _all_tensors(eager))
    print(f"\nIQL GRAPH-VS-EAGER {extra}: max relative difference after 200 steps {drift:.1e}")
    assert drift < 1e-6  # the same kernels (fused capturable Adam in both modes)


@gpu
def test_graphed_run_resumes_and_isolates_nan_on_cuda(tmp_path, monkeypatch):
    cfg = iql.IQLConfig(steps=120, batch_size=256, hidden=(64, 64), checkpoint_every=50, log_every=10)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def run(out, resume, log):  # seed 2's first critic poisoned
        nets = iql.build_nets(cfg, [0, 1, 2], 17, 6)
        with torch.no_grad():
            nets.q1.weights[-1][2].fill_(math.inf)
        result = iql.train(cfg, [0, 1, 2], _data(arrays, device="cuda"), nets, out, device="cuda", log=log,
                           resume=resume)
        return result, nets

    (reference, ref_nets), (result, nets) = checks.graphed_run_killed_and_resumed(run, monkeypatch, tmp_path)
    assert reference.diverged_step == [None, None, 1]
    assert result.resumed_from_step == 50 and result.diverged_step == [None, None, 1]
    for name in ("actor", "q1", "q2", "value"):
        for x, y in zip(getattr(ref_nets, name).parameters(), getattr(nets, name).parameters()):
            torch.testing.assert_close(x[:2], y[:2], rtol=1e-5, atol=1e-6)
            assert torch.isfinite(y[:2]).all()


@pytest.mark.parametrize("extra", [dict(), dict(critic={"norm": "layernorm"}), dict(critic={"norm": "batchnorm"}),
                                   dict(critic={"dropout": 0.2})])
def test_twin_critics_in_one_stack_train_as_two(extra, monkeypatch):
    """The twin critics (and their targets) run as one stack of 2S members, bit for bit as two."""
    checks.check_twin_critics_joined_train_as_apart(lambda: _trainer(iql.IQLConfig(**SMALL, **extra), [0, 1]),
                                                    iql.IQLTrainer, ("actor", "q1", "q2", "value"), monkeypatch)
