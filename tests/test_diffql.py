"""Diffusion-QL (the SEEM authors' EDP-style settings) on the seemrl engine: tiny CPU runs.

Engine contract (a seed among others = the seed alone, determinism, per-seed divergence record,
windowed = step-by-step bitwise with a mid-window state round trip, checkpoints, resume), the
algorithm's pieces (DPM-Solver and DDPM samplers on analytic models, EDP's one-step action,
max-Q backup, EMA actor schedule, cosine learning rate, per-network gradient clipping, OPER-R
actor batches, data preparation), the SEEM-analysis interface of loaded checkpoints, and the
benchmark script at tiny size.
"""
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import algo_checks as checks
import numpy as np
import pandas as pd
import pytest
import torch
from algo_checks import one_thread  # noqa: F401 (autouse fixture)

import seemrl.algos
from seemrl.algos import diffql
from seemrl.data.transitions import Transitions
from seemrl.training.draws import OfflineData
from seemrl.training.nets import StackedMLP
from seemrl.training.resume import ResumeDir, checkpoint_name, checkpoint_paths
from seemrl.training.trainer import cosine_lr

SMALL = dict(steps=12, batch_size=16, hidden=(16, 16), time_embed=4, diffusion_steps=10, sample_steps=2,
             backup_samples=3, eval_samples=4, actor_ema_start=3, actor_ema_every=2, checkpoint_every=5,
             log_every=3)
OBS, ACT = 5, 2


def _cfg(**kw):
    return diffql.DiffQLConfig(**{**SMALL, **kw})


def _transitions(n=300, seed=0, sparse=False):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    episode = np.repeat(np.arange(n // 30), 30)[:n]
    reward = (rng.random(n) < 0.1).astype(np.float32) if sparse else rng.normal(size=n).astype(np.float32)
    return Transitions(obs=obs, action=rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32), reward=reward,
                       next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
                       terminal=rng.random(n) < 0.05, timeout=np.zeros(n, bool), episode_id=episode,
                       step=np.tile(np.arange(30), n // 30 + 1)[:n], meta={"name": "toy"})


def _setup(cfg, seeds, t=None, device="cpu"):
    t = t or _transitions()
    data, p = checks.prepared(t, cfg, device)
    nets = diffql.build_nets(cfg, seeds, OBS, ACT, p.obs_mean, p.obs_std)
    return data, nets


def _train(cfg, seeds, out, t=None, **kw):
    data, nets = _setup(cfg, seeds, t)
    return nets, diffql.train(cfg, seeds, data, nets, out, log=lambda m: None, **kw)


def _trainer(cfg, seeds, use_window=None):
    data, nets = _setup(cfg, seeds)
    tr = diffql.DiffQLTrainer(cfg, seeds, data, nets, "cpu")
    if use_window is not None:
        tr.use_window = use_window
    return tr


def _modules(nets):
    return {name: getattr(nets, name) for name in diffql.DiffQLNets.MODULES}


def _tensors(nets):
    return [t.detach() for m in _modules(nets).values() for t in (*m.parameters(), *m.buffers())]


# ------------------------------------------------------------------ engine contract
@pytest.mark.parametrize("extra", [
    dict(),
    dict(critic={"norm": "layernorm"}, oper_r=True, grad_clip=0.5, lr_decay="actor"),
    dict(sampler="ddpm", beta_schedule="vp", diffusion_steps=5, sample_steps=5, reward_transform="diffql",
         max_q_backup=False, guide_q="min", eval_actor="ema"),
    dict(critic={"norm": "batchnorm"}, dpm_order=1, normalize_states=True),
    dict(critic={"dropout": 0.2}, dpm_order=2, sample_steps=3),
    dict(critic={"weight_norm_output": True, "ofn": True, "weight_decay": 1e-3}, guide_q="q1"),
], ids=["authors", "ln-oper-clip", "ddpm-vp", "batchnorm", "dropout", "wn-ofn-wd"])
def test_seed_in_batch_matches_seed_alone(tmp_path, extra):
    cfg = _cfg(**extra)
    t = _transitions(sparse=cfg.oper_r)
    together, alone = checks.check_seed_alone(lambda seeds, out: _train(cfg, seeds, out, t)[0], _modules, tmp_path)
    # the (stochastic) evaluation policy of seed 7 does not depend on seed 3 either
    obs = torch.randn(1, 6, OBS)
    pa = together.policy_greedy(obs.expand(2, 6, OBS))
    pb = alone.policy_greedy(obs)
    checks.assert_same_run(pa[1], pb[0], "greedy policy", rtol=1e-4, atol=1e-5)


def test_same_seed_same_result(tmp_path):
    cfg = _cfg(oper_r=True)
    t = _transitions(sparse=True)
    (a, ra), (b, rb) = checks.check_same_seed_same_result(lambda seeds, out: _train(cfg, seeds, out, t), _modules,
                                                          tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(_tensors(a), _tensors(b)))  # buffers too
    assert ra.metrics.equals(rb.metrics)


def test_nan_in_one_seed_is_recorded_and_isolated(tmp_path):
    cfg = _cfg(critic={"norm": "layernorm"}, grad_clip=1.0)
    data, nets = _setup(cfg, [0, 1])
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)  # seed 0's Q1 output layer blows up
    result = diffql.train(cfg, [0, 1], data, nets, tmp_path, log=lambda m: None)
    checks.check_nan_is_isolated(result, _modules(nets), SMALL["steps"])  # at the step it happened
    last = result.metrics[result.metrics.step == SMALL["steps"]].set_index("seed")
    assert math.isfinite(last.loc[1, "actor_loss"])


def test_divergence_step_is_exact_between_logged_steps():
    checks.check_divergence_step_is_exact(lambda: _trainer(_cfg(), [0, 1]), before=6, after=3)


@pytest.mark.parametrize("extra", [
    dict(oper_r=True, grad_clip=0.3, critic={"norm": "layernorm"}),
    dict(sampler="ddpm", diffusion_steps=4, sample_steps=4, critic={"norm": "batchnorm"}),
], ids=["dpm-oper", "ddpm-bn"])
def test_windowed_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch, extra):
    monkeypatch.setattr(diffql.DiffQLTrainer, "_window_rows", lambda self: 3)  # windows cut mid-checkpoint
    cfg = _cfg(**{"steps": 14, **extra})

    def at_step(step, plain, windowed):
        if step == 1:
            assert plain.generators.keys() == windowed.generators.keys()
        if step == 5:  # a window's end (windows: steps 1-3, 4-5, 6-8, ...): generators where stepping left them
            sa, sb = plain.state_dict(), windowed.state_dict()
            assert sb["window"] is None and checks.same_generators(sa, sb)
        if step == 7:  # mid-window: the state names the window to re-enter (a fresh trainer continues from it)
            sb = windowed.state_dict()
            assert sb["window"] is not None and sb["window"]["used"] == 2 and sb["window"]["size"] == 3

    checks.check_windowed_matches_stepwise(lambda window: _trainer(cfg, [1, 2], use_window=window), 14, 7, tmp_path,
                                           lambda t: _tensors(t.nets), at_step)


def test_cuda_graph_flag_is_ignored_on_cpu_and_not_part_of_the_identity():
    cfg = _cfg()
    tr = _trainer(cfg, [0])
    assert not tr.graphed and tr.mode == "eager (CPU)"
    other = _cfg(cuda_graph=False)
    assert diffql.run_identity(cfg, [0], "x") == diffql.run_identity(other, [0], "x")
    assert diffql.run_identity(cfg, [0], "x") != diffql.run_identity(_cfg(oper_r=True), [0], "x")


# ------------------------------------------------------------------ checkpoints and resume
def test_checkpoints_round_trip_and_the_analysis_interface(tmp_path):
    cfg = _cfg(critic={"norm": "layernorm", "norm_layers": [1]})
    nets, _ = _train(cfg, [4, 5], tmp_path)
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [checkpoint_name(s) for s in (0, 5, 10, 12)]
    ck = seemrl.algos.load_checkpoint(paths[-1])  # dispatched on the format tag
    assert diffql.CHECKPOINT_FORMAT == "seemrl.diffql.v1" and "diffql" in seemrl.algos.TRAINERS
    assert isinstance(ck.nets, diffql.DiffQLNets)
    assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg and ck.diverged_step == [None, None]
    for name, module in _modules(nets).items():
        for p, q in zip(module.state_dict().values(), getattr(ck.nets, name).state_dict().values()):
            assert torch.equal(p, q), name
    # the SEEM analysis reads q1 over concat(normalised obs, action), normalize and policy
    q1 = ck.nets.q1
    assert isinstance(q1, StackedMLP) and q1.dims[0] == OBS + ACT and q1.norm_layers == (1,) and q1.norm == "layernorm"
    obs = torch.randn(2, 9, OBS)
    torch.testing.assert_close(ck.nets.normalize(obs), obs)  # normalize_states is off by default
    pi = ck.nets.policy(ck.nets.normalize(obs))
    assert pi.shape == (2, 9, ACT) and pi.abs().max() <= 1.0 and torch.isfinite(pi).all()
    again = seemrl.algos.load_checkpoint(paths[-1]).nets.policy(obs)
    assert torch.equal(pi, again)  # a loaded checkpoint's policy draws from generators seeded by eval_seed
    assert not torch.equal(pi, ck.nets.policy(obs))  # ... which advance: it is a stochastic policy


def test_load_checkpoint_names_a_bad_file(tmp_path):
    checks.check_bad_checkpoint_is_named(diffql.load_checkpoint, tmp_path)


def test_resume_continues_as_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg(eval_every=4, oper_r=True, critic={"norm": "layernorm"})
    t = _transitions(sparse=True)

    def evaluate(nets):  # uses the stochastic evaluation policy: its generators are resumed too
        a = nets.policy(torch.ones(2, 3, OBS))
        return [SimpleNamespace(seed=s, return_mean=float(a[i].sum()), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for i, s in enumerate((0, 1))]

    def run(out, resume):
        data, nets = _setup(cfg, [0, 1], t)
        return diffql.train(cfg, [0, 1], data, nets, out, log=lambda m: None, evaluate=evaluate, resume=resume), nets

    reference, ref_nets = run(tmp_path / "ref", None)
    resume = ResumeDir(tmp_path / "resume", diffql.run_identity(cfg, [0, 1], "data-sha"))
    result, nets = checks.killed_then_resumed(monkeypatch, lambda r: run(tmp_path / "out", r), resume, kill_step=5)
    assert result.resumed_from_step == 5
    assert all(torch.equal(x, y) for x, y in zip(_tensors(ref_nets), _tensors(nets)))
    assert result.metrics.equals(reference.metrics)
    assert result.evaluations.equals(reference.evaluations) and len(result.evaluations) == 6  # steps 4, 8, 12
    assert [p.name for p in checkpoint_paths(tmp_path / "out")] == \
           [p.name for p in checkpoint_paths(tmp_path / "ref")]


def test_an_evaluation_draws_the_same_noise_whichever_evaluations_came_before(tmp_path):
    """The stochastic evaluation policy's noise after step t comes from (eval_seed, seed, t): a run
    evaluated only from `eval_from` on keeps the evaluations of a run evaluated all along, and
    trains the same; an evaluation's noise differs from one step to the next."""
    t = _transitions(sparse=True)
    probe = torch.ones(2, 3, OBS)

    def evaluate(nets):
        a = nets.policy(probe)
        return [SimpleNamespace(seed=s, return_mean=float(a[i].sum()), return_std=0.0, normalized_score=None,
                                nonfinite_actions=False) for i, s in enumerate((0, 1))]

    runs = {}
    for eval_from in (0, 6):
        cfg = _cfg(eval_every=2, eval_from=eval_from)
        data, nets = _setup(cfg, [0, 1], t)
        runs[eval_from] = diffql.train(cfg, [0, 1], data, nets, tmp_path / str(eval_from), log=lambda m: None,
                                       evaluate=evaluate), nets
    (every, nets_every), (late, nets_late) = runs[0], runs[6]
    assert sorted(set(late.evaluations.step)) == [s for s in sorted(set(every.evaluations.step)) if s >= 6]
    kept = every.evaluations[every.evaluations.step >= 6].reset_index(drop=True)
    pd.testing.assert_frame_equal(late.evaluations.reset_index(drop=True), kept, check_exact=True)
    assert every.metrics.equals(late.metrics)
    assert all(torch.equal(x, y) for x, y in zip(_tensors(nets_every), _tensors(nets_late)))
    # the noise is not the same at every evaluation: the same policy evaluated at two steps differs
    a, b = (diffql.eval_generators([0, 1], 0, step) for step in (2, 4))
    assert not torch.equal(torch.randn(3, generator=a[0]), torch.randn(3, generator=b[0]))


# ------------------------------------------------------------------ samplers
@pytest.mark.parametrize("T, steps", [(1000, 15), (1000, 7), (10, 2)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_is_exact_for_a_point_mass(T, steps, order):
    # data = one point c: x0(x_t) is constant along the ODE, which every DPM-Solver order then
    # integrates exactly (no clipping for |c| < 1): x_{t0} = alpha_0 c + sigma_0 (x_T - alpha_T c) / sigma_T
    sched = diffql.DiffusionSchedule("linear", T)
    ns = diffql._DiscreteVP(sched.abar)
    c = torch.tensor([0.3, -0.7], dtype=torch.float64)

    def coefs(t_cont):
        a = math.exp(ns.log_alpha(t_cont))
        return a, math.sqrt(1 - a * a)

    def eps(x, t_in):
        a, s = coefs((t_in + 1) / T)
        return (x - a * c) / s

    x_T = torch.randn(1, 50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)
    plan = diffql.dpm_solver_plan(sched, steps, order)
    assert sum(st.order for st in plan) == steps  # function evaluations
    out = diffql.dpm_solver_sample(eps, x_T, plan)
    (a0, s0), (a1, s1) = coefs(1 / T), coefs(1.0)
    torch.testing.assert_close(out, a0 * c + s0 * (x_T - a1 * c) / s1, rtol=0, atol=1e-9)


def test_dpm_solver_converges_at_its_order_for_gaussian_data():
    # data N(0, s^2): the probability-flow ODE is linear, x_t = x_T * scale(t) / scale(1)
    T, sd = 1000, 0.5
    sched = diffql.DiffusionSchedule("linear", T)
    ns = diffql._DiscreteVP(sched.abar)
    scale = lambda t: math.sqrt(math.exp(2 * ns.log_alpha(t)) * sd ** 2 + 1 - math.exp(2 * ns.log_alpha(t)))

    def eps(x, t_in):
        a = math.exp(ns.log_alpha((t_in + 1) / T))
        s = math.sqrt(1 - a * a)
        return s * x / (a * a * sd ** 2 + s * s)

    x = torch.ones(1, 1, 1, dtype=torch.float64)
    exact = scale(1 / T) / scale(1.0)
    err = {(o, n): abs(float(diffql.dpm_solver_sample(eps, x, diffql.dpm_solver_plan(sched, n, o), noise_clip=False))
                       - exact) for o in (1, 2, 3) for n in (24, 48)}
    assert err[1, 24] / err[1, 48] == pytest.approx(2, rel=0.15)  # first order
    assert err[2, 24] / err[2, 48] > 3.5  # second order
    assert err[3, 48] < 1e-3 < err[1, 48]  # third order is far ahead
    assert diffql.singlestep_orders(15, 3) == [3, 3, 3, 3, 2, 1]  # the authors' 15-step DPM-Solver-fast
    assert diffql.singlestep_orders(15, 2) == [2] * 7 + [1] and diffql.singlestep_orders(4, 1) == [1] * 4


@pytest.mark.parametrize("schedule, T", [("vp", 5), ("linear", 10)])
def test_ddpm_sampler_returns_the_point_mass(schedule, T):
    sched = diffql.DiffusionSchedule(schedule, T)
    c = torch.tensor([0.25, -0.5])

    def eps(x, t_in):  # the exact noise for data = c at integer step t_in
        t = int(t_in)
        return (x - math.sqrt(sched.abar[t]) * c) / math.sqrt(1 - sched.abar[t])

    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(1, 20, 2, generator=g)
    noise = [torch.randn(1, 20, 2, generator=g) for _ in range(T - 1)]
    torch.testing.assert_close(diffql.ddpm_sample(eps, x_T, noise, sched), c.expand(1, 20, 2), rtol=0, atol=1e-5)


def test_schedules():
    lin = diffql.DiffusionSchedule("linear", 1000)
    assert lin.betas[0] == pytest.approx(1e-4) and lin.betas[-1] == pytest.approx(0.02)
    assert lin.abar[-1] == pytest.approx(4.04e-5, rel=0.01)
    vp = diffql.DiffusionSchedule("vp", 5)  # Diffusion-QL's T = 5 schedule ends near pure noise
    assert 0 < vp.abar[-1] < 0.01 and np.all(np.diff(vp.abar) < 0)


# ------------------------------------------------------------------ the update step
def test_one_step_action_recovers_the_data_action():
    tr = _trainer(_cfg(), [0, 1])
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, ACT, generator=g) * 1.8 - 0.9
    s = torch.randn(2, 8, OBS, generator=g)
    t = torch.randint(0, SMALL["diffusion_steps"], (2, 8), generator=g)
    eps = torch.randn(2, 8, ACT, generator=g)
    oracle = lambda x_t, t_f, s_: (x_t - tr.nets.schedule.sqrt_abar_t[t_f.long()].unsqueeze(-1) * a) \
        / tr.nets.schedule.sqrt_1m_abar_t[t_f.long()].unsqueeze(-1)  # the true noise
    loss, a0 = tr.diffusion_terms(s, a, t, eps, actor=oracle)
    torch.testing.assert_close(a0, a, rtol=0, atol=1e-4)
    assert loss.shape == (2,) and loss.max() < 1e-8
    _, a0_net = tr.diffusion_terms(s, a, t, eps)  # the real network: clipped to [-1, 1]
    assert a0_net.abs().max() <= 1.0


@pytest.mark.parametrize("extra", [dict(), dict(max_q_backup=False), dict(sampler="ddpm", sample_steps=10)])
def test_max_q_backup_is_max_over_samples_per_head_then_min(extra):
    cfg = _cfg(**extra)
    tr = _trainer(cfg, [0, 1])
    draws = tr.sample_draws()
    idx = draws["idx"]
    d, nets = tr.data, tr.nets
    got = tr.backup_target(d.reward[idx], d.next_obs[idx], d.not_done[idx], draws)
    n = cfg.backup_samples if cfg.max_q_backup else 1
    assert draws["backup_xT"].shape == (2, cfg.batch_size, n, ACT)
    with torch.no_grad():
        per_sample = []
        for k in range(n):  # one sample at a time through the EMA actor and the target critics
            steps = draws["backup_steps"][:, :, :, k:k + 1] if "backup_steps" in draws else None
            a2 = nets.sample_actions(nets.actor_ema, d.next_obs[idx], draws["backup_xT"][:, :, k:k + 1], steps)[:, :, 0]
            x2 = torch.cat([d.next_obs[idx], a2], -1)
            per_sample.append((nets.q1_target(x2), nets.q2_target(x2)))
        q1 = torch.stack([p[0] for p in per_sample]).amax(0)
        q2 = torch.stack([p[1] for p in per_sample]).amax(0)
        want = d.reward[idx] + cfg.gamma * d.not_done[idx] * torch.minimum(q1, q2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)



def test_bfloat16_backup_is_close_to_float32_and_a_run_of_its_own():
    """`backup_dtype: bfloat16` (a speed trial, off by default) runs the max-Q backup's sampler and
    target critics under bfloat16 autocast: float32 targets near the float32 ones (bfloat16 keeps 8
    bits of mantissa), not equal to them; a run of its own, while the default adds nothing to the
    run identity (runs made before the setting keep theirs); other dtypes are refused."""
    cfg = _cfg()
    tr32 = _trainer(cfg, [0, 1])
    tr16 = _trainer(_cfg(backup_dtype="bfloat16"), [0, 1])
    draws = tr32.sample_draws()
    idx = draws["idx"]
    d = tr32.data
    args = (d.reward[idx] * 0 + 5.0, d.next_obs[idx], d.not_done[idx] * 0 + 1, draws)  # the Q term matters
    t32, t16 = tr32.backup_target(*args), tr16.backup_target(*args)
    assert t16.dtype == t32.dtype == torch.float32
    assert not torch.equal(t16, t32)
    q32, q16 = t32 - 5.0, t16 - 5.0  # gamma * min over heads of max over samples
    assert (q16 - q32).abs().max() <= 0.05 * q32.abs().max()
    ident = diffql.run_identity(cfg, [0], "x")
    assert "backup_dtype" not in ident["config"]
    assert diffql.run_identity(_cfg(backup_dtype="bfloat16"), [0], "x")["config"]["backup_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="backup_dtype"):
        _cfg(backup_dtype="float16")

def test_ema_actor_follows_edp_schedule():
    cfg = _cfg()  # EMA actor at step numbers n > 3 with n % 2 == 0
    tr = _trainer(cfg, [0])
    assert [tr.step_kind(i) for i in range(8)] == [False, False, False, True, False, True, False, True]
    initial = [p.detach().clone() for p in tr.nets.actor.parameters()]
    for _ in range(3):
        tr.step()
    assert all(torch.equal(p, q) for p, q in zip(tr.nets.actor_ema.parameters(), initial))  # not yet
    tr.step()  # step 4: ema = lerp(initial, actor, tau)
    for p, e, q in zip(tr.nets.actor.parameters(), tr.nets.actor_ema.parameters(), initial):
        torch.testing.assert_close(e, q + cfg.tau * (p - q))
    before = [p.detach().clone() for p in tr.nets.actor_ema.parameters()]
    critic_target_before = [p.detach().clone() for p in tr.nets.q1_target.parameters()]
    tr.step()  # step 5: no EMA actor update; the critic targets move every step
    assert all(torch.equal(p, q) for p, q in zip(tr.nets.actor_ema.parameters(), before))
    assert not all(torch.equal(p, q) for p, q in zip(tr.nets.q1_target.parameters(), critic_target_before))


@pytest.mark.parametrize("lr_decay", ["both", "actor", "none"])
def test_cosine_learning_rates(lr_decay):
    cfg = _cfg(**{"steps": 8}, lr_decay=lr_decay, critic_lr=1e-3)  # two rates: each decays its own
    tr = _trainer(cfg, [0])
    for it in range(5):
        tr.step()
        actor_lr = tr.optimizers["actor"].param_groups[0]["lr"]
        critic_lr = tr.optimizers["critic"].param_groups[0]["lr"]  # each set before step it + 1:
        assert actor_lr == pytest.approx(cfg.actor_lr if lr_decay == "none" else cosine_lr(cfg.actor_lr, it, cfg.steps))
        critic_want = cosine_lr(cfg.critic_lr, it, cfg.steps) if lr_decay == "both" else cfg.critic_lr
        assert critic_lr == pytest.approx(critic_want)


def test_gradients_are_clipped_per_seed_and_per_network(monkeypatch):
    calls = []
    clip = diffql.clip_grad_norm_per_seed

    def recording(params, max_norm):
        norms = clip(params, max_norm)
        after = torch.sqrt(sum(p.grad.flatten(1).pow(2).sum(1) for p in params if p.grad is not None))
        calls.append((len(params), max_norm, norms, after))
        return norms

    monkeypatch.setattr(diffql, "clip_grad_norm_per_seed", recording)
    cfg = _cfg(grad_clip=0.05)
    tr = _trainer(cfg, [0, 1])
    out = tr.step(grad_norm=True)
    n_q, n_actor = len(list(tr.nets.q1.parameters())), len(list(tr.nets.actor.parameters()))
    assert [c[0] for c in calls] == [n_q, n_q, n_actor] and all(c[1] == 0.05 for c in calls)
    assert all(bool((c[3] <= 0.05 + 1e-6).all()) for c in calls)
    torch.testing.assert_close(out["critic_grad_norm"], torch.sqrt(calls[0][2] ** 2 + calls[1][2] ** 2))
    torch.testing.assert_close(out["actor_grad_norm"], calls[2][2])
    calls.clear()
    _trainer(_cfg(), [0]).step()  # grad_clip 0: no clipping
    assert calls == []


def test_oper_r_draws_the_actor_batch_by_return_and_the_critic_batch_uniformly():
    t = _transitions(n=300)
    t.reward[:] = 0.0
    t.reward[t.episode_id == 4] = 1.0  # one successful episode; base 0: the others are never drawn
    cfg = _cfg(**{"batch_size": 64}, oper_r=True)
    data, p = checks.prepared(t, cfg)
    assert p.policy_probabilities[t.episode_id == 4].sum() == pytest.approx(1.0)
    tr = diffql.DiffQLTrainer(cfg, [0, 1], data, diffql.build_nets(cfg, [0, 1], OBS, ACT), "cpu")
    critic_idx, actor_idx = tr.batch_indices(tr.sample_draws())
    assert (t.episode_id[actor_idx.numpy()] == 4).all()
    assert len(np.unique(t.episode_id[critic_idx.numpy()])) > 3
    plain = _cfg()
    tr = _trainer(plain, [0])
    c, a = tr.batch_indices(tr.sample_draws())
    assert c is a and "policy_u" not in tr.generators
    with pytest.raises(ValueError, match="seemrl.data.preparation.prepare"):
        data_plain = OfflineData.from_arrays(t.obs, t.action, t.reward, t.next_obs, t.terminal,
                                                   np.zeros(OBS), np.ones(OBS), "cpu")
        diffql.DiffQLTrainer(cfg, [0], data_plain, diffql.build_nets(cfg, [0], OBS, ACT), "cpu")


def test_logged_metrics(tmp_path):
    _, result = _train(_cfg(grad_clip=1.0), [0, 1], tmp_path)
    m = result.metrics
    assert m.step.unique().tolist() == [3, 6, 9, 12]
    for key in ("critic_loss", "actor_loss", "bc_loss", "q_loss", "q_mean", "critic_grad_norm", "actor_grad_norm",
                "critic_param_norm", "actor_param_norm"):
        assert m[key].notna().all(), key
    assert m.critic_grad_norm.gt(0).all() and m.bc_loss.gt(0).all()
    assert m.q_loss.abs().le(2.0 + 1e-5).all()  # -alpha * mean Q / mean|Q| lies in [-alpha, alpha]


def test_evaluation_policy_picks_by_target_q():
    cfg = _cfg(**{"eval_samples": 16})
    nets = diffql.build_nets(cfg, [0, 1], OBS, ACT)
    obs = torch.randn(2, 5, OBS)
    greedy = nets.policy_greedy(obs)
    # the same noise again: the best of the 16 candidates by min(Q1_target, Q2_target)
    nets.eval_gens = diffql.eval_generators([0, 1], cfg.eval_seed)
    x_T, _, _ = nets._eval_noise(5, "cpu")
    cands = nets.sample_actions(nets.actor, obs, x_T)
    q = nets.target_q_min(obs, cands)
    best = cands.gather(2, q.argmax(-1)[..., None, None].expand(2, 5, 1, ACT)).squeeze(2)
    torch.testing.assert_close(greedy, best)
    nets.eval_gens = diffql.eval_generators([0, 1], cfg.eval_seed)
    soft = nets.policy(obs)  # the same candidates, one drawn by softmax over their target Q
    assert soft.shape == (2, 5, ACT) and ((cands - soft[:, :, None]).abs().amax(-1) == 0).any(-1).all()
    with torch.no_grad():
        nets.q1_target.weights[-1][0].fill_(math.nan)  # a broken seed gives NaN for itself only
    out = nets.policy(obs)
    assert torch.isfinite(out[1]).all()


def test_config_rejects_bad_values():
    for bad, field in [(dict(sampler="euler"), "sampler"), (dict(beta_schedule="cosine"), "beta_schedule"),
                       (dict(sampler="ddpm", sample_steps=15), "sample_steps"), (dict(dpm_order=4), "dpm_order"),
                       (dict(critic={"layer_norm": True}), "critic"), (dict(reward_transform="x100"), "reward_transform"),
                       (dict(lr_decay="linear"), "lr_decay"), (dict(time_embed=15), "time_embed"),
                       (dict(guide_q="q2"), "guide_q"), (dict(grad_clip=-1.0), "grad_clip"),
                       (dict(diffusion_steps=1), "diffusion_steps"), (dict(eval_every=-1), "eval_every"),
                       (dict(action_clip=0.0), "action_clip"), (dict(matmul_precision="fp16"), "matmul_precision"),
                       (dict(critic={"weight_decay": -1.0}), "weight_decay"), (dict(eval_select="max"), "eval_select")]:
        with pytest.raises(ValueError, match=field):
            diffql.DiffQLConfig(**bad)
    with pytest.raises(TypeError):
        diffql.DiffQLConfig(stpes=10)
    cfg = diffql.DiffQLConfig(hidden=[8, 8])
    assert cfg.hidden == (8, 8) and diffql.Config is diffql.DiffQLConfig


def test_defaults_are_the_authors_antmaze_setting():
    c = diffql.DiffQLConfig()
    assert (c.steps, c.batch_size, c.actor_lr, c.gamma, c.tau, c.hidden, c.activation) == \
           (1_000_000, 256, 3e-4, 0.99, 0.005, (256, 256, 256), "mish")
    assert (c.diffusion_steps, c.beta_schedule, c.sampler, c.sample_steps, c.time_embed) == (1000, "linear", "dpm_solver", 15, 16)
    assert (c.bc_weight, c.alpha, c.max_q_backup, c.backup_samples) == (0.5, 2.0, True, 10)
    assert (c.actor_ema_every, c.actor_ema_start, c.reward_transform, c.action_clip) == (5, 1000, "x10", 0.999)
    assert (c.normalize_states, c.eval_samples, c.eval_select) == (False, 50, "softmax")


# ------------------------------------------------------------------ benchmark
def test_benchmark_runs_at_tiny_size():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "diffql_throughput.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--iters", "2", "--seeds", "1", "2",
                           "--sample-steps", "3", "--variants", "default", "bf16-backup"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| none | plain PyTorch | ieee | 1 |" in proc.stdout
    assert "| layernorm | seemrl stacked | ieee | 2 |" in proc.stdout
    # the variants side by side, each against the first
    assert "variant: bf16-backup ({'backup_dtype': 'bfloat16'})" in proc.stdout
    assert "| critic | step | seeds | default | bf16-backup |" in proc.stdout
    assert "| layernorm | eager | 2 | " in proc.stdout.split("seed-steps/s against default")[1]


# ------------------------------------------------------------------ CUDA (skipped without a GPU)
gpu = checks.gpu


@gpu
@pytest.mark.parametrize("extra", [dict(critic={"norm": "layernorm"}, oper_r=True, grad_clip=1.0),
                                   dict(sampler="ddpm", diffusion_steps=5, sample_steps=5, beta_schedule="vp")])
def test_graphed_matches_eager_on_cuda(extra):
    cfg = {**SMALL, "steps": 60, "batch_size": 64, "hidden": (64, 64, 64), **extra}
    t = _transitions(n=3000, sparse=True)

    def trainer(graph):
        c = diffql.DiffQLConfig(**cfg, cuda_graph=graph, matmul_precision="ieee")
        data, nets = _setup(c, [0, 1, 2], t, device="cuda")
        return diffql.DiffQLTrainer(c, [0, 1, 2], data, nets, "cuda")

    eager, graphed = checks.run_graphed_and_eager(trainer, 60)
    for x, y in zip(_tensors(eager.nets), _tensors(graphed.nets)):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


@gpu
@pytest.mark.parametrize("extra", [dict(grad_clip=1.0), dict(critic={"norm": "layernorm"}, oper_r=True, grad_clip=1.0)])
def test_compiled_graphed_update_matches_eager_on_cuda(extra, record_property):
    """`compile_update` as it would train (the compiled step captured as a CUDA graph, TF32 as
    runs default to) follows the eager step on CUDA, after one step and in every reported number
    over 20 (the EMA actor steps every second step after step 4): the check a paper config needs before it turns the
    switch on. The parameters' drift after 20 steps is recorded (fused kernels round differently)."""
    cfg = {**SMALL, "steps": 50, "batch_size": 64, "hidden": (64, 64, 64), "time_embed": 16,
           "diffusion_steps": 1000, "sample_steps": 15, "backup_samples": 10, "actor_ema_start": 4, **extra}
    t = _transitions(n=3000, sparse=True)

    def make(compiled):
        c = diffql.DiffQLConfig(**cfg, compile_update=compiled, cuda_graph=compiled)
        data, nets = _setup(c, [0, 1, 2], t, device="cuda")
        trainer = diffql.DiffQLTrainer(c, [0, 1, 2], data, nets, "cuda")
        assert trainer.graphed == compiled
        return trainer

    drift = checks.check_compiled_update_matches_eager(make, lambda tr: _tensors(tr.nets), steps=20, rtol=1e-3)
    print(f"\nCOMPILED-VS-EAGER diffql {extra}: max relative parameter difference after 20 steps: {drift:.1e}")
    record_property("drift", drift)


def test_sampling_eps_equals_the_actor_on_concatenated_inputs():
    import torch

    from seemrl.algos.diffql import DiffusionActor

    actor = DiffusionActor([0, 3], obs_dim=5, act_dim=2, hidden=(16, 16), time_embed=8, activation="mish")
    x, s = torch.randn(2, 7, 2), torch.randn(2, 7, 5)
    times = (0.0, 3.5, 999.0)
    t_proj = actor.time_projection(torch.tensor(times))
    for k, t in enumerate(times):
        full = actor(x, x.new_full((2, 7), t), s)
        torch.testing.assert_close(actor.sampling_eps(x, t_proj[:, k:k + 1], actor.state_projection(s)), full,
                                   rtol=1e-5, atol=1e-6)



def test_compiled_update_matches_eager_on_the_cpu():
    """`compile_update` (the whole Diffusion-QL step through torch.compile, 1.12x faster on an H100
    at S = 10) compiles and follows the eager step to rounding: max-Q backup, EMA actor steps and
    gradient clipping included."""
    make = lambda compiled: _trainer(_cfg(compile_update=compiled, grad_clip=1.0), [0, 1])  # noqa: E731
    checks.check_compiled_update_matches_eager(make, lambda t: _tensors(t.nets), steps=5)


def test_the_sampler_compiled_equals_the_sampler_eager():
    """Inside a compiled region the sampler's first layer is a bmm plus the state-and-time term,
    fused into the activation's kernel, instead of a `baddbmm` that first copies that full-size
    term into its output (`DiffusionActor.sampling_eps`): the same actions to rounding. (Through
    a whole training step the backup's actions barely move the losses at these sizes; this
    compares them directly.)"""
    cfg = _cfg(sample_steps=3)
    _, nets = _setup(cfg, [0, 1])
    g = torch.Generator().manual_seed(0)
    obs, x_T = torch.randn(2, 6, OBS, generator=g), torch.randn(2, 6, 3, ACT, generator=g)
    sample = lambda o, x: nets.sample_actions(nets.actor, o, x)  # noqa: E731
    eager = sample(obs, x_T)
    compiled = torch.compile(sample, dynamic=False)(obs, x_T)
    assert not torch.equal(eager, x_T.clamp(-1, 1))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [dict(), dict(critic={"norm": "layernorm"}, grad_clip=1.0, oper_r=True),
                                   dict(max_q_backup=False, guide_q="min"), dict(critic={"norm": "batchnorm"}),
                                   dict(backup_dtype="bfloat16"), dict(critic={"dropout": 0.2}, dpm_order=2)])
def test_twin_critics_in_one_stack_train_as_two(extra, monkeypatch):
    """The twin critics (and their targets) run as one stack of 2S members, bit for bit as two."""
    checks.check_twin_critics_joined_train_as_apart(lambda: _trainer(_cfg(**extra), [0, 1]), diffql.DiffQLTrainer,
                                                    diffql.DiffQLNets.MODULES, monkeypatch)
