"""The update step drawn ahead in windows and replayed as a CUDA graph computes what the eager step does.

CPU: the window's draws are exactly the step-by-step draws, and an eager run that reads its batches
from windows is bitwise the run that draws them step by step (resume states included).
CUDA (skipped without a GPU): graphed and eager runs agree up to float tolerance, and a graphed run
continues identically from a saved state.
"""
import math

import algo_checks as checks
import numpy as np
import pytest
import torch

from seemrl.algos import td3
from seemrl.training.draws import OfflineData, Window

_arrays = checks.arrays


def _trainer(cfg, seeds, arrays, device, use_window=None):
    return checks.make_trainer(td3.TD3Trainer, td3.build_nets, cfg, seeds, arrays, device, use_window)


def _params(t):
    return [p.detach().cpu() for m in (t.nets.actor, t.nets.q1, t.nets.q2, *t.targets.values())
            for p in (*m.parameters(), *m.buffers())]


@pytest.mark.parametrize("batch, act_dim", [(16, 2), (32, 2), (256, 6), (7, 3), (1, 1), (5, 6)])
@pytest.mark.parametrize("rows", [1, 3, 50])
def test_window_draws_are_the_step_by_step_draws(batch, act_dim, rows):
    cfg = td3.TD3Config(batch_size=batch, hidden=(8,), checkpoint_every=1000)
    arrays = _arrays(act_dim=act_dim)
    t = _trainer(cfg, [0, 5], arrays, "cpu")
    ref = _trainer(cfg, [0, 5], arrays, "cpu")
    w = Window(t, rows)
    w.refill(rows)
    for r in range(rows):
        draws = ref.sample_draws()
        assert torch.equal(w.dev["idx"][r], draws["idx"]) and torch.equal(w.dev["noise"][r], draws["noise"]), r
    for name in ("idx", "noise"):
        for g, h in zip(t.generators[name], ref.generators[name]):
            assert torch.equal(g.get_state(), h.get_state())


@pytest.mark.parametrize("extra", [
    dict(), dict(tau=0.005, bc_weight=1.0, critic={"norm": "batchnorm"}), dict(policy_delay=3, critic={"norm": "layernorm"}),
])
@pytest.mark.parametrize("checkpoint_every, rows", [(5, 1000), (7, 3), (4, 8)])
def test_windowed_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch, extra, checkpoint_every, rows):
    # windows of at most `rows` steps, cut at checkpoint steps that need not be multiples of them
    monkeypatch.setattr(td3.TD3Trainer, "_window_rows", lambda self: rows)
    cfg = td3.TD3Config(steps=23, batch_size=16, hidden=(16, 16), checkpoint_every=checkpoint_every, **extra)
    arrays = _arrays()

    def at_step(step, plain, windowed):
        if step in (4, 10, 11):  # at a window's end the generators are where stepping left them;
            # mid-window the state names the window to re-enter instead
            sa, sb = plain.state_dict(), windowed.state_dict()
            if sb["window"] is None:
                for key in ("idx", "noise"):
                    assert checks.same_generators(sa, sb, [key]), (step, key)
            else:
                assert sb["window"]["used"] == (step % checkpoint_every) % rows or sb["window"]["used"] > 0

    # after step 11 a fresh windowed trainer continues from the state
    checks.check_windowed_matches_stepwise(lambda window: _trainer(cfg, [1, 2], arrays, "cpu", use_window=window),
                                           23, 11, tmp_path, _params, at_step)


def test_cuda_graph_is_ignored_on_cpu():
    cfg = td3.TD3Config(batch_size=16, hidden=(8,))
    t = _trainer(cfg, [0], _arrays(), "cpu")
    assert not t.graphed and not t.use_window and t.mode == "eager (CPU)"
    assert td3.run_identity(cfg, [0], "x") == td3.run_identity(td3.TD3Config(batch_size=16, hidden=(8,),
                                                                             cuda_graph=False), [0], "x")


# ------------------------------------------------------------------ CUDA
gpu = checks.gpu
GPU_CASES = [dict(critic={"norm": n}, tau=tau, bc_weight=1.0 if tau < 1 else 0.0)
             for n in ("none", "layernorm", "batchnorm") for tau in (1.0, 0.005)]


@gpu
@pytest.mark.parametrize("extra", GPU_CASES + [dict(optimizer="sgd", actor_lr=1e-3, critic_lr=1e-3),
                                               dict(twin_q=False, policy_noise=0.0, policy_delay=1, tau=0.005)],
                         ids=lambda e: str(e))
def test_graphed_matches_eager_on_cuda(extra, record_property):
    cfg = dict(steps=200, batch_size=256, hidden=(256, 256), checkpoint_every=50, **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)
    drift = {}

    def record_drift(step, eager, graphed):
        if step in (1, 2, 10, 50, 200):
            drift[step] = checks.max_rel_diff(_params(graphed), _params(eager))

    checks.run_graphed_and_eager(lambda graph: _trainer(td3.TD3Config(**cfg, cuda_graph=graph), [0, 1, 2], arrays,
                                                        "cuda"), 200, record_drift)
    print(f"\nGRAPH-VS-EAGER {extra}: max relative parameter difference: "
          + "  ".join(f"step {k}: {v:.1e}" for k, v in drift.items()))
    record_property("drift", drift)
    # the same kernels (fused capturable Adam on CUDA in both modes): equal, bitwise on an H200
    assert drift[200] < 1e-6


@gpu
@pytest.mark.parametrize("extra", [dict(), dict(tau=0.005, bc_weight=1.0, critic={"norm": "batchnorm"})])
def test_graphed_run_resumes_identically_on_cuda(tmp_path, monkeypatch, extra):
    cfg = td3.TD3Config(steps=120, batch_size=256, hidden=(64, 64), checkpoint_every=50, log_every=10, **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def run(out, resume, log):
        data = OfflineData.from_arrays(**arrays, mean=np.zeros(17), std=np.ones(17), device="cuda")
        nets = td3.build_nets(cfg, [0, 1, 2], 17, 6)
        return td3.train(cfg, [0, 1, 2], data, nets, out, device="cuda", log=log, resume=resume), nets

    (reference, ref_nets), (result, nets) = checks.graphed_run_killed_and_resumed(run, monkeypatch, tmp_path)
    a = [p.detach().cpu() for m in (ref_nets.actor, ref_nets.q1, ref_nets.q2) for p in m.parameters()]
    b = [p.detach().cpu() for m in (nets.actor, nets.q1, nets.q2) for p in m.parameters()]
    diff = checks.max_rel_diff(b, a)
    bitwise = all(torch.equal(x, y) for x, y in zip(a, b)) and result.metrics.equals(reference.metrics)
    print(f"\nRESUME {extra}: bitwise={bitwise}, max relative parameter difference {diff:.2e}")
    assert diff < 1e-5


@gpu
def test_nan_in_one_seed_stays_there_on_cuda(tmp_path):
    cfg = td3.TD3Config(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, log_every=3)
    arrays = _arrays()
    data = OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cuda")
    nets = td3.build_nets(cfg, [0, 1], 5, 2)
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)
    result = td3.train(cfg, [0, 1], data, nets, tmp_path, device="cuda", log=lambda m: None)
    assert result.diverged_step == [1, None]
    assert all(torch.isfinite(p[1]).all() for p in nets.q1.parameters())


@gpu
def test_divergence_step_is_exact_inside_the_graph():
    cfg = td3.TD3Config(steps=100, batch_size=32, hidden=(16, 16), checkpoint_every=50)
    arrays = _arrays()
    data = OfflineData.from_arrays(**arrays, mean=np.zeros(5), std=np.ones(5), device="cuda")
    trainer = td3.TD3Trainer(cfg, [0, 1], data, td3.build_nets(cfg, [0, 1], 5, 2), "cuda")
    assert trainer.graphed
    for _ in range(7):
        trainer.step()
    with torch.no_grad():
        trainer.nets.q1.weights[1][0].fill_(math.inf)  # in place: the graph reads the same tensor
    for _ in range(5):
        trainer.step()
    assert trainer.first_nonfinite_steps() == [8, None]


@pytest.mark.parametrize("extra", [dict(tau=0.005, bc_weight=1.0, critic={"norm": "layernorm"})])
def test_compiled_update_matches_eager(extra):
    """`compile_update` (issue 17): the whole step through torch.compile follows the eager step
    to rounding on the CPU (where it only costs compile time)."""
    cfg = dict(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, **extra)
    checks.check_compiled_update_matches_eager(
        lambda compiled: _trainer(td3.TD3Config(**cfg, compile_update=compiled), [0, 1], _arrays(), "cpu"), _params)


@gpu
@pytest.mark.parametrize("extra", [dict(tau=0.005, bc_weight=1.0), dict(tau=0.005, bc_weight=1.0, critic={"norm": "layernorm"})])
def test_compiled_graphed_update_matches_eager_on_cuda(extra, record_property):
    """The compiled step captured as a CUDA graph (the fast path it is for) follows the eager
    step on CUDA (after one step, and in every step's losses over 20); the parameters' drift after
    20 steps is recorded (fused kernels round differently)."""
    cfg = dict(steps=50, batch_size=256, hidden=(256, 256), checkpoint_every=50, **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def make(compiled):
        t = _trainer(td3.TD3Config(**cfg, compile_update=compiled, cuda_graph=compiled), [0, 1, 2], arrays, "cuda")
        assert t.graphed == compiled
        return t

    drift = checks.check_compiled_update_matches_eager(make, _params, steps=20, rtol=1e-4)
    print(f"\nCOMPILED-VS-EAGER {extra}: max relative parameter difference after 20 steps: {drift:.1e}")
    record_property("drift", drift)
