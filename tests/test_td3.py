import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seemrl.algos import td3
from seemrl.nets import per_seed_norm


def _data(n=500, obs_dim=5, act_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return dict(
        obs=obs,
        action=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        reward=rng.normal(size=n).astype(np.float32),
        next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
        terminal=rng.random(n) < 0.05,
    )


def _train(cfg, seeds, arrays, tmp_path):
    mean, std = td3.state_normalizer(arrays["obs"], cfg.normalize_states)
    data = td3.OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    nets = td3.build_nets(cfg, seeds, arrays["obs"].shape[1], arrays["action"].shape[1], mean, std)
    result = td3.train(cfg, seeds, data, nets, tmp_path, log=lambda msg: None)
    return nets, result


SMALL = dict(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, log_every=3)


@pytest.mark.parametrize("extra", [
    dict(), dict(critic={"norm": "layernorm"}), dict(tau=0.005, bc_weight=1.0),
    dict(critic={"norm": "batchnorm"}), dict(critic={"dropout": 0.2}), dict(tau=0.005, critic={"norm": "batchnorm"}),
    dict(critic={"weight_norm_output": True, "ofn": True, "weight_decay": 1e-3}),
    dict(twin_q=False, policy_noise=0.0, policy_delay=1, tau=0.005),
])
def test_seed_in_batch_matches_seed_alone(tmp_path, extra):
    cfg = td3.TD3Config(**SMALL, **extra)
    arrays = _data()
    together, _ = _train(cfg, [3, 7], arrays, tmp_path / "together")
    alone, _ = _train(cfg, [7], arrays, tmp_path / "alone")
    for name in ("actor", "q1", "q2"):
        a = dict(getattr(together, name).named_parameters())
        b = dict(getattr(alone, name).named_parameters())
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key][1], b[key][0], rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    # and the two seeds of the batch really are different runs
    assert not torch.allclose(together.q1.weights[0][0], together.q1.weights[0][1])


def test_same_seed_same_result(tmp_path):
    cfg = td3.TD3Config(**SMALL)
    arrays = _data()
    a, ra = _train(cfg, [1, 2], arrays, tmp_path / "a")
    b, rb = _train(cfg, [1, 2], arrays, tmp_path / "b")
    for pa, pb in zip(a.q1.parameters(), b.q1.parameters()):
        assert torch.equal(pa, pb)
    assert ra.metrics["critic_loss"].tolist() == rb.metrics["critic_loss"].tolist()


def test_nan_in_one_seed_is_recorded_and_isolated(tmp_path):
    cfg = td3.TD3Config(**SMALL)
    arrays = _data()
    mean, std = td3.state_normalizer(arrays["obs"], True)
    data = td3.OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    nets = td3.build_nets(cfg, [0, 1], 5, 2, mean, std)
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)  # seed 0's Q1 output layer blows up
    result = td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None)
    assert result.diverged_step[0] == 1  # detected at the step it happened, not at a logged step
    assert result.diverged_step[1] is None
    for p in nets.q1.parameters():
        assert torch.isfinite(p[1]).all()
    last = result.metrics[result.metrics.step == SMALL["steps"]].set_index("seed")
    assert not math.isfinite(last.loc[0, "critic_loss"])
    assert math.isfinite(last.loc[1, "critic_loss"])


def test_checkpoints_round_trip(tmp_path):
    cfg = td3.TD3Config(**SMALL, critic={"norm": "layernorm", "norm_layers": [1]})
    nets, _ = _train(cfg, [4, 5], _data(), tmp_path)
    paths = td3.checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [td3.checkpoint_name(s) for s in (0, 5, 10, 12)]
    ck = td3.load_checkpoint(paths[-1])
    assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg
    assert ck.nets.q1.layer_norm == (1,)
    x = torch.randn(2, 7, 7)
    torch.testing.assert_close(ck.nets.q1(x), nets.q1(x))
    torch.testing.assert_close(ck.nets.obs_mean, nets.obs_mean)


def test_load_checkpoint_names_a_bad_file(tmp_path):
    bad = tmp_path / "step_00000010.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="step_00000010.pt"):
        td3.load_checkpoint(bad)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer"):
        td3.TD3Config(optimizer="rmsprop")
    with pytest.raises(ValueError, match="layer_norm"):
        td3.TD3Config(critic={"layer_norm": True})
    with pytest.raises(ValueError, match="weight_decay"):
        td3.TD3Config(critic={"weight_decay": -1.0})
    with pytest.raises(TypeError):
        td3.TD3Config(stpes=10)
    with pytest.raises(ValueError, match="eval_episodes"):
        td3.TD3Config(eval_every=10, eval_episodes=0)
    with pytest.raises(ValueError, match="eval_every"):
        td3.TD3Config(eval_every=-1)


def test_terminals_stop_bootstrap():
    arrays = _data(n=4)
    arrays["terminal"] = np.array([True, False, True, False])
    data = td3.OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    assert data.not_done.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_critic_grad_norm_is_the_gradient_the_optimiser_applies(tmp_path):
    # with SGD a step moves the parameters by exactly lr * gradient; step 1 has no actor update
    cfg = td3.TD3Config(**SMALL, optimizer="sgd", lr=0.1)
    arrays = _data()
    data = td3.OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    trainer = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cpu")
    critic = lambda: [p.detach().clone() for m in (trainer.nets.q1, trainer.nets.q2) for p in m.parameters()]
    before = critic()
    out = trainer.step(grad_norm=True)
    moved = per_seed_norm([(a - b) / cfg.lr for a, b in zip(critic(), before)])
    torch.testing.assert_close(out["critic_grad_norm"], moved, rtol=1e-4, atol=1e-6)
    assert "critic_grad_norm" not in trainer.step()  # only computed when asked for


def test_logged_metrics_include_critic_grad_norm(tmp_path):
    _, result = _train(td3.TD3Config(**SMALL), [0, 1], _data(), tmp_path)
    assert result.metrics.critic_grad_norm.gt(0).all()
    assert result.metrics.step.unique().tolist() == [3, 6, 9, 12]


def test_evaluates_every_eval_every_steps_and_at_the_end(tmp_path):
    cfg = td3.TD3Config(**SMALL, eval_every=5)
    arrays = _data()
    data = td3.OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    nets = td3.build_nets(cfg, [0, 1], 5, 2)
    calls = []

    def evaluate(nets):
        calls.append(nets)
        return [SimpleNamespace(seed=s, return_mean=float(len(calls)), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for s in (0, 1)]

    result = td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None, evaluate=evaluate)
    ev = result.evaluations
    assert ev.step.tolist() == [5, 5, 10, 10, 12, 12] and ev.seed.tolist() == [0, 1] * 3
    assert ev.return_mean.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert ev.normalized_score.isna().all() and calls[0] is nets
    with pytest.raises(ValueError, match="evaluate"):
        td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None)


def test_trainer_state_round_trip_continues_identically(tmp_path):
    cfg = td3.TD3Config(**SMALL, tau=0.005, bc_weight=1.0)  # EMA targets are part of the state
    arrays = _data()
    data = td3.OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    straight = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cpu")
    for _ in range(7):
        straight.step()
    torch.save(straight.state_dict(), tmp_path / "state.pt")
    restored = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cpu")
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(5):
        a, b = straight.step(), restored.step()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for m, n in zip((straight.nets.actor, straight.nets.q1, *straight.targets.values()),
                    (restored.nets.actor, restored.nets.q1, *restored.targets.values())):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), n.parameters()))


def test_ddpg_single_critic_leaves_q2_untouched(tmp_path):
    cfg = td3.TD3Config(**SMALL, twin_q=False, policy_noise=0.0, policy_delay=1)
    arrays = _data()
    mean, std = td3.state_normalizer(arrays["obs"], True)
    nets = td3.build_nets(cfg, [0], 5, 2, mean, std)
    q2_before = [p.detach().clone() for p in nets.q2.parameters()]
    q1_before = [p.detach().clone() for p in nets.q1.parameters()]
    data = td3.OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    td3.train(cfg, [0], data, nets, tmp_path, log=lambda msg: None)
    assert all(torch.equal(a, b) for a, b in zip(q2_before, nets.q2.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(q1_before, nets.q1.parameters()))


def test_divergence_step_is_exact_between_logged_steps():
    cfg = td3.TD3Config(**{**SMALL, "log_every": 1000})
    arrays = _data()
    data = td3.OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    trainer = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cpu")
    for _ in range(7):
        trainer.step()
    assert trainer.first_nonfinite_steps() == [None, None]
    with torch.no_grad():
        trainer.nets.q2.weights[0][1].fill_(math.nan)  # seed 1's second critic, before step 8
    for _ in range(5):
        trainer.step()
    assert trainer.first_nonfinite_steps() == [None, 8]
    state = trainer.state_dict()  # the record survives a resume
    other = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cpu")
    other.load_state_dict(state)
    assert other.first_nonfinite_steps() == [None, 8]


def test_matmul_precision_is_scoped_and_validated():
    from seemrl.devices import matmul_precision

    backend = torch.backends.cuda.matmul
    before = backend.fp32_precision
    with matmul_precision("tf32"):
        assert backend.fp32_precision == "tf32"
    assert backend.fp32_precision == before
    with pytest.raises(ValueError, match="matmul_precision"):
        td3.TD3Config(matmul_precision="fp16")
