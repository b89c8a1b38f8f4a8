import math

import algo_checks as checks
import numpy as np
import pandas as pd
import pytest
import torch

from seemrl.algos import td3
from seemrl.data.preparation import state_normalizer
from seemrl.training.draws import OfflineData
from seemrl.training.resume import checkpoint_name, checkpoint_paths

_data = checks.arrays


def _train(cfg, seeds, arrays, tmp_path):
    return checks.train(td3, cfg, seeds, arrays, tmp_path)


def _trainer(cfg, seeds=(0, 1)):
    return checks.make_trainer(td3.TD3Trainer, td3.build_nets, cfg, list(seeds), _data())


def _modules(nets):
    return {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2}


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
    checks.check_seed_alone(lambda seeds, out: _train(cfg, seeds, arrays, out)[0], _modules, tmp_path)


def test_same_seed_same_result(tmp_path):
    cfg = td3.TD3Config(**SMALL)
    run = lambda seeds, out: _train(cfg, seeds, _data(), out)  # noqa: E731
    (_, ra), (_, rb) = checks.check_same_seed_same_result(run, _modules, tmp_path)
    assert ra.metrics["critic_loss"].tolist() == rb.metrics["critic_loss"].tolist()


def test_nan_in_one_seed_is_recorded_and_isolated(tmp_path):
    cfg = td3.TD3Config(**SMALL)
    arrays = _data()
    mean, std = state_normalizer(arrays["obs"], True)
    data = OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    nets = td3.build_nets(cfg, [0, 1], 5, 2, mean, std)
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)  # seed 0's Q1 output layer blows up
    result = td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None)
    checks.check_nan_is_isolated(result, _modules(nets), SMALL["steps"])  # at the step it happened


def test_checkpoints_round_trip(tmp_path):
    cfg = td3.TD3Config(**SMALL, critic={"norm": "layernorm", "norm_layers": [1]})
    nets, _ = _train(cfg, [4, 5], _data(), tmp_path)
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [checkpoint_name(s) for s in (0, 5, 10, 12)]
    ck = td3.load_checkpoint(paths[-1])
    assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg
    assert ck.nets.q1.norm_layers == (1,) and ck.nets.q1.norm == "layernorm"
    x = torch.randn(2, 7, 7)
    torch.testing.assert_close(ck.nets.q1(x), nets.q1(x))
    torch.testing.assert_close(ck.nets.obs_mean, nets.obs_mean)


def test_load_checkpoint_names_a_bad_file(tmp_path):
    checks.check_bad_checkpoint_is_named(td3.load_checkpoint, tmp_path)


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
    data = OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    assert data.not_done.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_critic_grad_norm_is_the_gradient_the_optimiser_applies(tmp_path):
    # with SGD a step moves the parameters by exactly lr * gradient; step 1 has no actor update
    cfg = td3.TD3Config(**SMALL, optimizer="sgd", actor_lr=0.1, critic_lr=0.1)
    trainer = _trainer(cfg)
    critics = (trainer.nets.q1, trainer.nets.q2)
    checks.check_grad_norms_are_applied(trainer, {"critic_grad_norm": (critics, cfg.critic_lr)})


def test_logged_metrics_include_critic_grad_norm(tmp_path):
    _, result = _train(td3.TD3Config(**SMALL), [0, 1], _data(), tmp_path)
    assert result.metrics.critic_grad_norm.gt(0).all()
    assert result.metrics.step.unique().tolist() == [3, 6, 9, 12]


def test_evaluates_every_eval_every_steps_and_at_the_end(tmp_path):
    cfg = td3.TD3Config(**SMALL, eval_every=5)
    arrays = _data()
    data = OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    nets = td3.build_nets(cfg, [0, 1], 5, 2)
    result = checks.check_evaluates_every_eval_every(
        lambda evaluate: (nets, td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None, evaluate=evaluate)))
    ev = result.evaluations
    assert ev.seed.tolist() == [0, 1] * 3
    assert ev.return_mean.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert ev.normalized_score.isna().all()
    with pytest.raises(ValueError, match="evaluate"):
        td3.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None)


def test_eval_from_skips_the_early_evaluations_and_changes_nothing_else(tmp_path):
    """`eval_from` (Table 1 averages only the last 10 evaluations): no evaluation before it but the
    last step's; the evaluations it keeps, the metrics and the weights are those of the run that
    evaluated all along."""
    from types import SimpleNamespace

    arrays = _data()
    data = OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cpu")
    probe = torch.linspace(-1, 1, 10).reshape(1, 2, 5)

    def policy_value(nets):  # a stand-in evaluation that reads the policy it is given
        with torch.no_grad():
            out = nets.policy(probe.expand(2, -1, -1)).sum(dim=(1, 2))
        return [SimpleNamespace(seed=s, return_mean=float(v), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for s, v in zip((0, 1), out)]

    runs = {}
    for eval_from in (0, 7):
        cfg = td3.TD3Config(**{**SMALL, "steps": 13}, eval_every=3, eval_from=eval_from)
        nets = td3.build_nets(cfg, [0, 1], 5, 2)
        runs[eval_from] = (nets, td3.train(cfg, [0, 1], data, nets, tmp_path / str(eval_from), log=lambda m: None,
                                           evaluate=policy_value))
    (nets_all, every), (nets_late, late) = runs[0], runs[7]
    assert sorted(set(every.evaluations.step)) == [3, 6, 9, 12, 13]
    assert sorted(set(late.evaluations.step)) == [9, 12, 13]  # from step 7 on, and the last step
    kept = every.evaluations[every.evaluations.step >= 7].reset_index(drop=True)
    pd.testing.assert_frame_equal(late.evaluations.reset_index(drop=True), kept, check_exact=True)
    assert kept.return_mean.nunique() > 1  # the stand-in does read the policy
    pd.testing.assert_frame_equal(late.metrics, every.metrics, check_exact=True)
    for name in td3.TD3Nets.MODULES:
        for a, b in zip(getattr(nets_all, name).parameters(), getattr(nets_late, name).parameters()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eval_from"):
        td3.TD3Config(eval_every=10, eval_from=-1)


def test_eval_from_zero_keeps_the_run_identity():
    """Runs and resume states made before `eval_from` existed keep their identity; a run that
    sets it is another run."""
    from seemrl.algos.base import run_identity_of

    before = run_identity_of(td3.TD3Config(**SMALL), [0])
    assert "eval_from" not in before["config"]
    assert run_identity_of(td3.TD3Config(**SMALL, eval_from=0), [0]) == before
    assert run_identity_of(td3.TD3Config(**SMALL, eval_from=6), [0])["config"]["eval_from"] == 6


def test_trainer_state_round_trip_continues_identically(tmp_path):
    cfg = td3.TD3Config(**SMALL, tau=0.005, bc_weight=1.0)  # EMA targets are part of the state
    params = lambda t: [p for m in (t.nets.actor, t.nets.q1, *t.targets.values()) for p in m.parameters()]  # noqa: E731
    checks.check_state_round_trip(lambda: _trainer(cfg), 7, 5, tmp_path, params)


def test_ddpg_single_critic_leaves_q2_untouched(tmp_path):
    cfg = td3.TD3Config(**SMALL, twin_q=False, policy_noise=0.0, policy_delay=1)
    arrays = _data()
    mean, std = state_normalizer(arrays["obs"], True)
    nets = td3.build_nets(cfg, [0], 5, 2, mean, std)
    q2_before = [p.detach().clone() for p in nets.q2.parameters()]
    q1_before = [p.detach().clone() for p in nets.q1.parameters()]
    data = OfflineData.from_arrays(**arrays, mean=mean, std=std, device="cpu")
    td3.train(cfg, [0], data, nets, tmp_path, log=lambda msg: None)
    assert all(torch.equal(a, b) for a, b in zip(q2_before, nets.q2.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(q1_before, nets.q1.parameters()))


def test_divergence_step_is_exact_between_logged_steps():
    cfg = td3.TD3Config(**{**SMALL, "log_every": 1000})
    checks.check_divergence_step_is_exact(lambda: _trainer(cfg), before=7, after=5)  # NaN before step 8


def test_matmul_precision_is_scoped_and_validated():
    from seemrl.training.devices import matmul_precision

    backend = torch.backends.cuda.matmul
    before = backend.fp32_precision
    with matmul_precision("tf32"):
        assert backend.fp32_precision == "tf32"
    assert backend.fp32_precision == before
    with pytest.raises(ValueError, match="matmul_precision"):
        td3.TD3Config(matmul_precision="fp16")


def test_matmul_precision_under_the_max_autotune_trial_keeps_the_legacy_reading_working():
    """Inductor's max-autotune (SEEMRL_INDUCTOR_MAX_AUTOTUNE=1) reads torch's legacy matmul
    precision in torch 2.11, which raises once the per-backend switch was written; under that
    trial the block writes the legacy switch, so both readings agree inside and after it. In a
    fresh process: the mixed state, once made, stays for the process."""
    code = """
import os, torch
from seemrl.training.devices import matmul_precision
os.environ["SEEMRL_INDUCTOR_MAX_AUTOTUNE"] = "1"
with matmul_precision("tf32"):
    print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision)
print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision)
del os.environ["SEEMRL_INDUCTOR_MAX_AUTOTUNE"]
with matmul_precision("tf32"):
    try:
        torch.get_float32_matmul_precision()
        print("legacy read works")
    except RuntimeError as exc:
        print("mixed" if "mix of the legacy and new APIs" in str(exc) else exc)
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.split("\n")
    assert lines[:2] == ["high tf32", "highest ieee"], out.stdout + out.stderr
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the per-backend switch
        assert lines[2] == "mixed", out.stdout  # what the trial avoids


def test_matmul_precision_is_shared_by_overlapping_runs_and_never_mixed():
    """Runs in threads of one process overlap their blocks: the first in sets the switch, the
    last out restores it (no run flips it under another), and a different precision meanwhile
    is an error."""
    import threading

    from seemrl.training.devices import matmul_precision

    backend = torch.backends.cuda.matmul
    before = backend.fp32_precision
    inside, release, seen = threading.Event(), threading.Event(), []

    def other_run():
        with matmul_precision("tf32"):
            inside.set()
            release.wait(10)
            seen.append(backend.fp32_precision)

    t = threading.Thread(target=other_run)
    t.start()
    assert inside.wait(10)
    with matmul_precision("tf32"):
        pass  # leaving this block must not switch the other run back
    assert backend.fp32_precision == "tf32"
    with pytest.raises(RuntimeError, match="must share it"):
        with matmul_precision("ieee"):
            pass
    release.set()
    t.join(10)
    assert seen == ["tf32"] and backend.fp32_precision == before


def test_actor_update_computes_no_critic_weight_gradients():
    """The actor loss flows through Q1, but its backward computes the actor's gradients only: Q1's
    gradients after a step with an actor update are those its own loss gave (autograd skips the
    GEMMs of Q1's weight gradients, which the critic optimiser's next zero_grad would drop)."""
    trainer = _trainer(td3.TD3Config(**{**SMALL, "policy_delay": 1}))
    critic_opt, seen = trainer.optimizers["critic"], []
    step = critic_opt.step

    def recording_step(*a, **kw):
        seen.append([p.grad.clone() for p in trainer.nets.q1.parameters()])
        return step(*a, **kw)
    critic_opt.step = recording_step
    trainer.step()
    assert seen and all(torch.equal(a, p.grad) for a, p in zip(seen[0], trainer.nets.q1.parameters()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.nets.actor.parameters())



@pytest.mark.parametrize("extra", [
    dict(), dict(critic={"norm": "layernorm"}), dict(tau=0.005, bc_weight=1.0), dict(critic={"norm": "batchnorm"}),
    dict(critic={"dropout": 0.2}), dict(critic={"weight_norm_output": True, "ofn": True, "weight_decay": 1e-3}),
])
def test_twin_critics_in_one_stack_train_as_two(extra, monkeypatch):
    """The twin critics run as one stack of 2S members (`JoinedStacks`), bit for bit as two."""
    checks.check_twin_critics_joined_train_as_apart(lambda: _trainer(td3.TD3Config(**SMALL, **extra)), td3.TD3Trainer,
                                                    ("actor", "q1", "q2"), monkeypatch)
