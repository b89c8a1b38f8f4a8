"""CQL on the engine: seeds independent, losses as CORL's reference computes them, windows and
resume bitwise, checkpoints loadable by the SEEM analysis, the benchmark script runs."""
import copy
import math
import subprocess
import sys
from pathlib import Path

import algo_checks as checks
import numpy as np
import pytest
import torch
from algo_checks import one_thread  # noqa: F401 (autouse fixture)
from torch.distributions import Normal, TanhTransform, TransformedDistribution

import seemrl.algos
from seemrl.algos import cql
from seemrl.training.nets import StackedMLP
from seemrl.training.resume import ResumeDir, checkpoint_name, checkpoint_paths

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "cql_throughput.py"
_arrays, _data = checks.arrays, checks.offline_data


def _trainer(cfg, seeds, arrays, device="cpu", use_window=None):
    return checks.make_trainer(cql.CQLTrainer, cql.build_nets, cfg, seeds, arrays, device, use_window)


def _train(cfg, seeds, arrays, out, **kw):
    return checks.train(cql, cfg, seeds, arrays, out, normalize=True, **kw)


def _modules(nets):
    return {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2, "temperatures": nets.temperatures}


def _params(t):
    return [p.detach().cpu() for m in (*t.networks.values(), *t.targets.values())
            for p in (*m.parameters(), *m.buffers())]


SMALL = dict(steps=12, batch_size=32, hidden=(16, 16), checkpoint_every=5, log_every=3, cql_n_actions=4)
VARIANTS = [
    dict(),
    dict(critic={"norm": "layernorm"}),
    dict(critic={"norm": "batchnorm"}),
    dict(critic={"dropout": 0.2}),
    dict(critic={"weight_norm_output": True, "ofn": True, "weight_decay": 1e-3}),
    dict(cql_lagrange=True, cql_target_action_gap=0.5, max_target_backup=True, backup_entropy=True),
    dict(bc_steps=4, cql_importance_sample=False, cql_clip_diff_min=-2.0, cql_clip_diff_max=50.0),
    dict(auto_alpha=False, alpha_multiplier=0.2, critic={"norm": "layernorm", "norm_layers": [1], "affine": False}),
]


# ------------------------------------------------------------------ seeds are independent runs
@pytest.mark.parametrize("extra", VARIANTS, ids=str)
def test_seed_in_batch_matches_seed_alone(tmp_path, extra):
    cfg = cql.CQLConfig(**SMALL, **extra)
    arrays = _arrays()
    checks.check_seed_alone(lambda seeds, out: _train(cfg, seeds, arrays, out)[0], _modules, tmp_path)


def test_same_seed_same_result(tmp_path):
    cfg = cql.CQLConfig(**SMALL)
    run = lambda seeds, out: _train(cfg, seeds, _arrays(), out)  # noqa: E731
    (_, ra), (_, rb) = checks.check_same_seed_same_result(run, _modules, tmp_path)
    assert ra.metrics.equals(rb.metrics)
    assert {"critic_loss", "td_loss", "cql_loss", "actor_loss", "alpha", "q_mean", "entropy", "critic_grad_norm",
            "critic_param_norm"} <= set(ra.metrics.columns)
    assert "alpha_prime" not in ra.metrics.columns


# ------------------------------------------------------------------ the losses are CORL's
def _corl_losses(cfg, nets, targets, data, draws, kind):
    """CORL's ContinuousCQL losses (algorithms/offline/cql.py) for seed 0, written as CORL writes
    them: repeated observations, one critic call per action set, torch.distributions for the
    tanh-Gaussian, the noise taken from the trainer's draws."""
    n, A = cfg.cql_n_actions, data.action.shape[1]
    idx = draws["idx"][0]
    s, a, r, s2, done = data.obs[idx], data.action[idx], data.reward[idx, 0], data.next_obs[idx], 1 - data.not_done[idx, 0]
    act = nets.actor

    def dist(obs):
        out = act.mlp(obs.reshape(1, -1, obs.shape[-1]))[0].reshape(*obs.shape[:-1], 2 * A)
        mean, log_std = torch.split(out, A, dim=-1)
        log_std = (act.log_std_multiplier[0, 0, 0] * log_std + act.log_std_offset[0, 0, 0]).clamp(-20.0, 2.0)
        tanh = TanhTransform(cache_size=1)
        return mean, log_std, TransformedDistribution(Normal(mean, log_std.exp()), tanh), tanh

    def actor(obs, eps, repeat=None):
        if repeat is not None:
            obs = obs.unsqueeze(1).repeat_interleave(repeat, dim=1)
        mean, log_std, d, tanh = dist(obs)
        sample = tanh(mean + log_std.exp() * eps)  # rsample with the given noise; cached for log_prob
        return sample, d.log_prob(sample).sum(-1)

    def critic(net, obs, actions):
        if actions.dim() == 3:
            obs = obs.unsqueeze(1).repeat_interleave(actions.shape[1], dim=1).reshape(-1, obs.shape[-1])
            return net(torch.cat([obs, actions.reshape(-1, A)], -1)[None])[0, :, 0].reshape(actions.shape[0], -1)
        return net(torch.cat([obs, actions], -1)[None])[0, :, 0]

    temps = nets.temperatures
    log_alpha = temps.log_alpha[0]
    new_actions, log_pi = actor(s, draws["actor_noise"][0])
    target_entropy = -float(A)
    if cfg.auto_alpha:
        alpha_loss = -(log_alpha * (log_pi + target_entropy).detach()).mean()
        alpha = log_alpha.exp() * cfg.alpha_multiplier
    else:
        alpha_loss, alpha = torch.zeros(()), torch.tensor(cfg.alpha_multiplier)
    if kind == "bc":
        mean, log_std, d, _ = dist(s)
        policy_loss = (alpha * log_pi - d.log_prob(a).sum(-1)).mean()
    else:
        q_new = torch.min(critic(nets.q1, s, new_actions), critic(nets.q2, s, new_actions))
        policy_loss = (alpha * log_pi - q_new).mean()

    q1_pred, q2_pred = critic(nets.q1, s, a), critic(nets.q2, s, a)
    with torch.no_grad():
        if cfg.max_target_backup:
            nna, next_log_pi = actor(s2, draws["next_noise"][0], repeat=n)
            target_q, best = torch.max(torch.min(critic(targets["q1"], s2, nna), critic(targets["q2"], s2, nna)), dim=-1)
            next_log_pi = torch.gather(next_log_pi, -1, best.unsqueeze(-1)).squeeze(-1)
        else:
            nna, next_log_pi = actor(s2, draws["next_noise"][0])
            target_q = torch.min(critic(targets["q1"], s2, nna), critic(targets["q2"], s2, nna))
        if cfg.backup_entropy:
            target_q = target_q - alpha * next_log_pi
        td_target = r + (1.0 - done) * cfg.gamma * target_q
    qf1_loss = ((q1_pred - td_target) ** 2).mean()
    qf2_loss = ((q2_pred - td_target) ** 2).mean()

    random_actions = draws["cql_random"][0] * 2 - 1
    cur, cur_logp = (x.detach() for x in actor(s, draws["cql_current_noise"][0], repeat=n))
    nxt, nxt_logp = (x.detach() for x in actor(s2, draws["cql_next_noise"][0], repeat=n))
    q1_rand, q2_rand = critic(nets.q1, s, random_actions), critic(nets.q2, s, random_actions)
    q1_cur, q2_cur = critic(nets.q1, s, cur), critic(nets.q2, s, cur)
    q1_next, q2_next = critic(nets.q1, s, nxt), critic(nets.q2, s, nxt)
    if cfg.cql_importance_sample:
        density = np.log(0.5 ** A)
        cat1 = torch.cat([q1_rand - density, q1_next - nxt_logp, q1_cur - cur_logp], 1)
        cat2 = torch.cat([q2_rand - density, q2_next - nxt_logp, q2_cur - cur_logp], 1)
    else:
        cat1 = torch.cat([q1_rand, q1_pred.unsqueeze(1), q1_next, q1_cur], 1)
        cat2 = torch.cat([q2_rand, q2_pred.unsqueeze(1), q2_next, q2_cur], 1)
    ood1 = torch.logsumexp(cat1 / cfg.cql_temp, 1) * cfg.cql_temp
    ood2 = torch.logsumexp(cat2 / cfg.cql_temp, 1) * cfg.cql_temp
    lo = -np.inf if cfg.cql_clip_diff_min is None else cfg.cql_clip_diff_min
    hi = np.inf if cfg.cql_clip_diff_max is None else cfg.cql_clip_diff_max
    diff1 = torch.clamp(ood1 - q1_pred, lo, hi).mean()
    diff2 = torch.clamp(ood2 - q2_pred, lo, hi).mean()
    alpha_prime_loss = torch.zeros(())
    if cfg.cql_lagrange:
        alpha_prime = torch.clamp(torch.exp(temps.log_alpha_prime[0]), 0.0, 1e6)
        c1 = alpha_prime * cfg.cql_alpha * (diff1 - cfg.cql_target_action_gap)
        c2 = alpha_prime * cfg.cql_alpha * (diff2 - cfg.cql_target_action_gap)
        alpha_prime_loss = (-c1 - c2) * 0.5
    else:
        c1, c2 = diff1 * cfg.cql_alpha, diff2 * cfg.cql_alpha
    qf_loss = qf1_loss + qf2_loss + c1 + c2
    return dict(policy_loss=policy_loss, alpha_loss=alpha_loss, qf_loss=qf_loss, cql=c1 + c2,
                td=qf1_loss + qf2_loss, alpha_prime_loss=alpha_prime_loss)


REFERENCE_CASES = [
    dict(),
    dict(bc_steps=1),
    # (a small cql_alpha: SGD at lr 0.05 with alpha' * cql_alpha ~ 14 diverges in the warm-up steps)
    dict(cql_lagrange=True, cql_alpha=0.5, cql_target_action_gap=0.5, max_target_backup=True, backup_entropy=True),
    dict(cql_importance_sample=False, cql_clip_diff_min=-0.5, cql_clip_diff_max=2.0, cql_temp=2.0),
    dict(auto_alpha=False, alpha_multiplier=0.3, critic={"norm": "layernorm"}),
]


@pytest.mark.parametrize("extra", REFERENCE_CASES, ids=str)
def test_losses_and_gradients_match_a_corl_style_reference(extra):
    # SGD moves each parameter by exactly lr * (its gradient): the step's gradients are compared
    lr = 0.05
    cfg = cql.CQLConfig(**{**SMALL, "cql_n_actions": 3}, optimizer="sgd", actor_lr=lr, critic_lr=lr, alpha_lr=lr,
                        alpha_prime_lr=lr, **extra)
    arrays = _arrays()
    t = _trainer(cfg, [4], arrays)
    for _ in range(2):  # let the targets and temperatures move away from their initial values
        t.step()
    kind = t.step_kind(t.it)
    assert kind == ("bc" if cfg.bc_steps > t.it else "rl")
    nets, targets = copy.deepcopy(t.nets), copy.deepcopy(t.targets)
    draws = t.sample_draws()
    ref = _corl_losses(cfg, nets, targets, t.data, draws, kind)
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in t.networks.items()}
    out = t._update(draws, kind, grad_norm=False, set_to_none=True)
    for key, ref_key in (("actor_loss", "policy_loss"), ("critic_loss", "qf_loss"), ("cql_loss", "cql"),
                         ("td_loss", "td")):
        torch.testing.assert_close(out[key][0], ref[ref_key].detach(), rtol=1e-5, atol=1e-5, msg=key)

    # gradients of the reference losses with respect to the copied parameters, compared with how
    # far the trainer's parameters moved
    pairs = [("actor", "policy_loss", nets.actor, t.nets.actor), ("q1", "qf_loss", nets.q1, t.nets.q1),
             ("q2", "qf_loss", nets.q2, t.nets.q2)]
    if cfg.auto_alpha:
        pairs.append(("log_alpha", "alpha_loss", [nets.temperatures.log_alpha], [t.nets.temperatures.log_alpha]))
    if cfg.cql_lagrange:
        pairs.append(("log_alpha_prime", "alpha_prime_loss", [nets.temperatures.log_alpha_prime],
                      [t.nets.temperatures.log_alpha_prime]))
    old_by_param = {id(p): v for name, m in t.networks.items() for p, v in zip(m.parameters(), before[name])}
    for label, loss_key, ref_params, live_params in pairs:
        ref_params = list(ref_params.parameters()) if isinstance(ref_params, torch.nn.Module) else ref_params
        live_params = list(live_params.parameters()) if isinstance(live_params, torch.nn.Module) else live_params
        grads = torch.autograd.grad(ref[loss_key], ref_params, retain_graph=True, allow_unused=True)
        for p, g in zip(live_params, grads):
            moved = (old_by_param[id(p)] - p.detach()) / lr
            expected = torch.zeros_like(moved) if g is None else g
            torch.testing.assert_close(moved, expected, rtol=1e-4, atol=2e-5, msg=lambda m: f"{label}: {m}")
    if not cfg.auto_alpha:  # a fixed temperature does not move
        assert torch.equal(t.nets.temperatures.log_alpha, before["temperatures"][0])
    if not cfg.cql_lagrange:
        assert torch.equal(t.nets.temperatures.log_alpha_prime, before["temperatures"][1])


# ------------------------------------------------------------------ divergence
def test_nan_in_one_seed_is_recorded_and_isolated(tmp_path):
    cfg = cql.CQLConfig(**SMALL)
    arrays = _arrays()
    data, mean, std = _data(arrays, normalize=True)
    nets = cql.build_nets(cfg, [0, 1], 5, 2, mean, std)
    with torch.no_grad():
        nets.q1.weights[-1][0].fill_(math.inf)  # seed 0's Q1 output layer blows up
    result = cql.train(cfg, [0, 1], data, nets, tmp_path, log=lambda msg: None)
    checks.check_nan_is_isolated(result, _modules(nets), SMALL["steps"])  # detected at the step it happened
    last = result.metrics[result.metrics.step == SMALL["steps"]].set_index("seed")
    assert math.isfinite(last.loc[1, "actor_loss"])


def test_divergence_step_is_exact_between_logged_steps():
    cfg = cql.CQLConfig(**{**SMALL, "log_every": 1000})
    checks.check_divergence_step_is_exact(lambda: _trainer(cfg, [0, 1], _arrays()), before=7, after=3)


# ------------------------------------------------------------------ windows, state, resume
@pytest.mark.parametrize("extra", [dict(bc_steps=6), dict(max_target_backup=True, cql_lagrange=True,
                                                          critic={"norm": "batchnorm"})], ids=str)
@pytest.mark.parametrize("checkpoint_every, rows", [(5, 1000), (7, 3)])
def test_windowed_run_is_bitwise_the_step_by_step_run(tmp_path, monkeypatch, extra, checkpoint_every, rows):
    monkeypatch.setattr(cql.CQLTrainer, "_window_rows", lambda self: rows)
    cfg = cql.CQLConfig(**{**SMALL, "steps": 17, "checkpoint_every": checkpoint_every}, **extra)
    arrays = _arrays()

    def at_step(step, plain, windowed):
        if step == 8:
            sa, sb = plain.state_dict(), windowed.state_dict()
            if sb["window"] is None:  # mid-window, the state names the window to re-enter instead
                assert checks.same_generators(sa, sb)

    # after step 8 (mid-window) a fresh windowed trainer continues from the saved state
    checks.check_windowed_matches_stepwise(lambda window: _trainer(cfg, [1, 2], arrays, use_window=window),
                                           17, 8, tmp_path, _params, at_step)


def test_trainer_state_round_trip_continues_identically(tmp_path):
    cfg = cql.CQLConfig(**SMALL, cql_lagrange=True, bc_steps=9, critic={"dropout": 0.1})
    arrays = _arrays()
    # saved after step 7, continued across the end of the BC warm start
    checks.check_state_round_trip(lambda: _trainer(cfg, [0, 1], arrays), 7, 5, tmp_path, _params)


def test_resume_after_a_kill_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = cql.CQLConfig(**{**SMALL, "steps": 14}, bc_steps=3, cql_lagrange=True)
    arrays = _arrays()
    reference_nets, reference = _train(cfg, [0, 1], arrays, tmp_path / "ref")
    resume = ResumeDir(tmp_path / "resume", cql.run_identity(cfg, [0, 1], "sha"))
    # the restarted run gets a ResumeDir of its own, as a restarted process would
    run = lambda r: _train(cfg, [0, 1], arrays, tmp_path / "out",  # noqa: E731
                           resume=ResumeDir(r.path, cql.run_identity(cfg, [0, 1], "sha")))
    nets, result = checks.killed_then_resumed(monkeypatch, run, resume, kill_step=10)
    assert result.resumed_from_step == 10
    for name, m in _modules(nets).items():
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), _modules(reference_nets)[name].parameters()))
    assert result.metrics.equals(reference.metrics)
    assert [p.name for p in checkpoint_paths(tmp_path / "out")] == \
        [p.name for p in checkpoint_paths(tmp_path / "ref")]


# ------------------------------------------------------------------ checkpoints and the SEEM interface
def test_checkpoints_round_trip_and_dispatch(tmp_path):
    cfg = cql.CQLConfig(**SMALL, critic={"norm": "layernorm", "norm_layers": [1]}, cql_lagrange=True)
    nets, _ = _train(cfg, [4, 5], _arrays(), tmp_path)
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == [checkpoint_name(s) for s in (0, 5, 10, 12)]
    for ck in (cql.load_checkpoint(paths[-1]), seemrl.algos.load_checkpoint(paths[-1])):
        assert ck.step == 12 and ck.seeds == [4, 5] and ck.config == cfg and ck.config.twin_q
        assert isinstance(ck.nets, cql.CQLNets) and isinstance(ck.nets.q1, StackedMLP)
        assert ck.nets.q1.dims[0] == 5 + 2 and ck.nets.q1.norm_layers == (1,) and ck.nets.q1.norm == "layernorm"
        x = torch.randn(2, 7, 7)
        torch.testing.assert_close(ck.nets.q1(x), nets.q1(x))
        for name, m in _modules(ck.nets).items():
            assert all(torch.equal(p, q) for p, q in zip(m.parameters(), _modules(nets)[name].parameters())), name
        obs = torch.randn(2, 9, 5) * 10
        pi = ck.nets.policy(ck.nets.normalize(obs))
        assert pi.shape == (2, 9, 2) and pi.abs().le(1).all()
        torch.testing.assert_close(pi, torch.tanh(nets.actor(nets.normalize(obs))[0]))
    checks.check_bad_checkpoint_is_named(cql.load_checkpoint, tmp_path, "step_00000099.pt")


def test_seem_analysis_runs_on_cql_checkpoints(tmp_path, monkeypatch):
    from seemrl.analysis import seem

    cfg = cql.CQLConfig(**{**SMALL, "hidden": (8, 8)})
    arrays = _arrays()
    _train(cfg, [0, 1], arrays, tmp_path)
    # analyse_run loads with td3.load_checkpoint; the algorithm-independent loader reads CQL's
    monkeypatch.setattr(seem, "load_checkpoint", seemrl.algos.load_checkpoint)
    df = seem.analyse_run(tmp_path, {**arrays, "terminal": arrays["terminal"]}, n_samples=16, sample_seed=0)
    assert len(df) == 4 * 2 and np.isfinite(df.seem).all() and np.isfinite(df.td_loss).all()


# ------------------------------------------------------------------ BC warm start, Lagrange, metrics
def test_bc_warm_start_steps_ignore_the_critics():
    cfg = cql.CQLConfig(**SMALL, bc_steps=2)
    t = _trainer(cfg, [0, 1], _arrays())
    assert t.step_kinds() == ["bc", "rl"] and [t.step_kind(i) for i in range(4)] == ["bc", "bc", "rl", "rl"]
    assert cql.CQLTrainer.step_kinds(_trainer(cql.CQLConfig(**SMALL), [0], _arrays())) == ["rl"]
    other = _trainer(cfg, [0, 1], _arrays())
    with torch.no_grad():  # very different critics
        for p in (*other.nets.q1.parameters(), *other.nets.q2.parameters()):
            p.mul_(-3.0)
    for _ in range(2):  # the BC steps: same actor whatever the critics
        t.step(), other.step()
    assert all(torch.equal(p, q) for p, q in zip(t.nets.actor.parameters(), other.nets.actor.parameters()))
    t.step(), other.step()  # the first SAC step: the critics matter
    assert not all(torch.equal(p, q) for p, q in zip(t.nets.actor.parameters(), other.nets.actor.parameters()))


@pytest.mark.parametrize("gap, direction", [(1e3, -1), (-1e3, 1)])
def test_lagrange_multiplier_moves_towards_the_target_gap(gap, direction):
    cfg = cql.CQLConfig(**SMALL, cql_lagrange=True, cql_target_action_gap=gap)
    t = _trainer(cfg, [0, 1], _arrays())
    before = t.nets.temperatures.log_alpha_prime.detach().clone()
    out = t.step()
    change = t.nets.temperatures.log_alpha_prime.detach() - before
    assert (torch.sign(change) == direction).all()
    torch.testing.assert_close(out["alpha_prime"], before.exp())


def test_critic_grad_norm_is_the_gradient_the_optimiser_applies():
    cfg = cql.CQLConfig(**SMALL, optimizer="sgd", critic_lr=0.1)
    t = _trainer(cfg, [0, 1], _arrays())
    checks.check_grad_norms_are_applied(t, {"critic_grad_norm": ((t.nets.q1, t.nets.q2), 0.1)})


def test_evaluates_every_eval_every_steps_and_at_the_end(tmp_path):
    cfg = cql.CQLConfig(**SMALL, eval_every=5)
    checks.check_evaluates_every_eval_every(lambda ev: _train(cfg, [0, 1], _arrays(), tmp_path, evaluate=ev))


def test_config_rejects_bad_values():
    for kw, field in [(dict(optimizer="rmsprop"), "optimizer"), (dict(critic={"layer_norm": True}), "critic"),
                      (dict(critic={"weight_decay": -1.0}), "weight_decay"), (dict(tau=0.0), "tau"),
                      (dict(cql_n_actions=0), "cql_n_actions"), (dict(bc_steps=-1), "bc_steps"),
                      (dict(actor_lr=0.0), "actor_lr"), (dict(alpha_lr=-1.0), "alpha_lr"),
                      (dict(cql_alpha=-1.0), "cql_alpha"), (dict(cql_temp=0.0), "cql_temp"),
                      (dict(cql_clip_diff_min=1.0, cql_clip_diff_max=0.0), "cql_clip_diff_min"),
                      (dict(reward_transform="x100"), "reward_transform"),
                      (dict(matmul_precision="fp16"), "matmul_precision"), (dict(eval_every=-1), "eval_every")]:
        with pytest.raises(ValueError, match=field):
            cql.CQLConfig(**kw)
    with pytest.raises(TypeError):
        cql.CQLConfig(stpes=10)
    assert cql.Config is cql.CQLConfig
    assert cql.run_identity(cql.CQLConfig(), [0], "x") == cql.run_identity(cql.CQLConfig(cuda_graph=False), [0], "x")
    # the compiled step rounds differently: another run; off, it leaves the identity as it was before it existed
    assert cql.run_identity(cql.CQLConfig(), [0], "x") != cql.run_identity(cql.CQLConfig(compile_update=True), [0], "x")
    assert "compile_update" not in cql.run_identity(cql.CQLConfig(), [0], "x")["config"]


def test_cuda_graph_is_ignored_on_cpu():
    t = _trainer(cql.CQLConfig(**SMALL), [0], _arrays())
    assert not t.graphed and not t.use_window and t.mode == "eager (CPU)"


def test_benchmark_runs_at_tiny_size():
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--iters", "2", "--seeds", "1", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "| critic | implementation | matmul | seeds | steps/s per seed | seed-steps/s | speed-up | peak GPU MiB |" in lines
    assert any(line.startswith("| none | plain PyTorch (CORL-style) | ieee | 1 |") for line in lines)
    assert any(line.startswith("| none | seemrl stacked | ieee | 2 |") for line in lines)


# ------------------------------------------------------------------ CUDA (skipped without a GPU)
gpu = checks.gpu


@gpu
@pytest.mark.parametrize("extra", [dict(), dict(critic={"norm": "layernorm"}), dict(critic={"norm": "batchnorm"}),
                                   dict(bc_steps=50, cql_lagrange=True, max_target_backup=True)], ids=str)
def test_graphed_matches_eager_on_cuda(extra):
    cfg = dict(steps=200, batch_size=256, hidden=(256, 256), checkpoint_every=50, matmul_precision="ieee", **extra)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)
    eager, graphed = checks.run_graphed_and_eager(
        lambda graph: _trainer(cql.CQLConfig(**cfg, cuda_graph=graph), [0, 1, 2], arrays, "cuda"), 200)
    drift = checks.max_rel_diff(_params(graphed), _params(eager))
    print(f"\nCQL GRAPH-VS-EAGER {extra}: max relative parameter difference after 200 steps {drift:.1e}")
    assert drift < 1e-5


@gpu
def test_graphed_run_resumes_and_isolates_nan_on_cuda(tmp_path, monkeypatch):
    cfg = cql.CQLConfig(steps=120, batch_size=256, hidden=(64, 64), checkpoint_every=50, log_every=10, bc_steps=20)
    arrays = _arrays(n=5000, obs_dim=17, act_dim=6)

    def run(out, resume, log=lambda m: None, poison=False):
        data, _, _ = _data(arrays, "cuda")
        nets = cql.build_nets(cfg, [0, 1, 2], 17, 6)
        if poison:
            with torch.no_grad():
                nets.q1.weights[-1][0].fill_(math.inf)
        return cql.train(cfg, [0, 1, 2], data, nets, out, device="cuda", log=log, resume=resume), nets

    (reference, ref_nets), (result, nets) = checks.graphed_run_killed_and_resumed(run, monkeypatch, tmp_path)
    a = [p.detach().cpu() for m in _modules(ref_nets).values() for p in m.parameters()]
    b = [p.detach().cpu() for m in _modules(nets).values() for p in m.parameters()]
    assert checks.max_rel_diff(b, a) < 1e-5
    poisoned, pnets = run(tmp_path / "nan", None, poison=True)
    assert poisoned.diverged_step == [1, None, None]
    assert all(torch.isfinite(p[1:]).all() for m in _modules(pnets).values() for p in m.parameters())


@pytest.mark.parametrize("extra", VARIANTS, ids=str)
def test_twin_critics_in_one_stack_train_as_two(extra, monkeypatch):
    """The twin critics (and their targets) run as one stack of 2S members, bit for bit as two."""
    checks.check_twin_critics_joined_train_as_apart(
        lambda: _trainer(cql.CQLConfig(**SMALL, **extra), [0, 1], checks.arrays()), cql.CQLTrainer,
        ("actor", "q1", "q2", "temperatures"), monkeypatch)
