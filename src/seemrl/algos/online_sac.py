"""Online SAC on Gymnasium MuJoCo environments, all seeds of a run trained together (paper Fig. 11).

The paper's online experiment: SAC on Hopper and Walker2d with EMA target critics (tau = 0.005),
without EMA (tau = 1) and without EMA but with LayerNorm in the critic (`FIG11_VARIANTS`). The
update runs on the training engine (a CUDA graph on a GPU); the environment loop around it
(act, step every seed's environment, store, update) is this module's own and plugs into
`seemrl.training.loop.train_loop`. `docs/algorithms/sac.md` explains the details.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos.base import (CriticTrainer, RunSettings, check_at_least_one, check_critic_spec, critic_grad_norm,
                               critic_param_norms, critic_params, critic_weight_decay, load_nets, loop_settings,
                               run_identity_of, twin_critics)
from seemrl.training import loop
from seemrl.training.draws import Draw
from seemrl.training.loop import train_loop, write_checkpoint
from seemrl.training.devices import matmul_precision
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import capture_graph, make_optimizer, warm_up

if TYPE_CHECKING:  # gymnasium is imported where environments are used: the update runs without it
    import gymnasium as gym

CHECKPOINT_FORMAT = "seemrl.online_sac.v1"
# Independent random streams per seed (the first seven as in td3.py).
(STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, STREAM_NOISE, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2,
 STREAM_EXPLORE, STREAM_WARMUP, STREAM_ENV) = range(10)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2
LOG_2PI = math.log(2 * math.pi)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # as seemrl.generate.behaviour_sac (not imported: the update needs no gymnasium)
# Minibatch positions are drawn as integers in [0, INDEX_RANGE) and taken modulo the buffer size
# on the device: a draw that does not depend on the size (so it can be made ahead, and a captured
# graph stays valid as the buffer grows), with a bias below size / 2^62.
INDEX_RANGE = 2**62
EXPLORE_ROWS = 1000  # environment steps of exploration noise drawn ahead at a time

# The paper's Fig. 11 variants, as config overrides.
FIG11_VARIANTS: dict[str, dict] = {
    "sac_ema": {"tau": 0.005},
    "sac_no_ema": {"tau": 1.0},
    "sac_no_ema_ln": {"tau": 1.0, "critic": {"norm": "layernorm"}},
}


@dataclass
class OnlineSACConfig(RunSettings):
    """Hyperparameters of online SAC (defaults: the usual MuJoCo settings, with EMA targets)."""

    steps: int = 1_000_000  # environment steps per seed, warm-up included
    learning_starts: int = 5_000  # uniformly random actions (and no updates) for this many steps
    updates_per_step: int = 1  # gradient updates per environment step after the warm-up
    buffer_size: int = 1_000_000  # replay capacity per seed; min(buffer_size, steps) is allocated
    batch_size: int = 256  # transitions per seed per update
    gamma: float = 0.99  # discount
    tau: float = 0.005  # EMA rate of the target critics; 1.0 = no EMA: the target is the current critic
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    critic_lr: float = 3e-4  # Adam learning rate of the critics
    alpha_lr: float = 3e-4  # Adam learning rate of log(temperature)
    init_alpha: float = 1.0  # initial entropy temperature
    target_entropy: float | None = None  # entropy target of the temperature; None = -act_dim
    hidden: tuple[int, ...] = (256, 256)  # hidden widths (ReLU) of actor and critics
    critic: dict = field(default_factory=dict)  # critic normalisation: nets.CRITIC_SPEC_DEFAULTS keys + weight_decay
    checkpoint_every: int = 10_000  # environment steps between checkpoints (step 0 and the last included)
    log_every: int = 1_000  # environment steps between logged training metrics
    eval_every: int = 10_000  # environment steps between deterministic evaluations (and at the end); 0 = none
    act_before_update: bool = False  # act for step t+1 with the policy before update t: the env step overlaps the update
    compile_update: bool = True  # on CUDA, the update is torch.compile'd (fused pointwise kernels); ignored on CPU

    def __post_init__(self):
        self.hidden, self.critic = tuple(self.hidden), dict(self.critic)
        check_critic_spec(self.critic)
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        check_at_least_one(self, ("updates_per_step", "buffer_size", "batch_size"))
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if not self.init_alpha > 0:
            raise ValueError(f"init_alpha must be > 0, got {self.init_alpha}")
        super().__post_init__()

    def updates_before(self, env_step: int) -> int:
        """Updates made in environment steps 1..env_step (none in the warm-up)."""
        return max(0, env_step - self.learning_starts) * self.updates_per_step

    def env_step_of_update(self, update: int) -> int:
        """The environment step in which update number `update` (counted from 1) is made."""
        return self.learning_starts + -(-update // self.updates_per_step)


# ------------------------------------------------------------------ networks
@dataclass
class SACNets:
    """Actor (mean and log-std head) and twin critics of S seeds, in the [-1, 1] action space.

    The interface of `seemrl.algos.td3.TD3Nets` where the SEEM analysis needs it: `q1`, `q2` over
    (obs, action) inputs, `actor`, `normalize` (the identity: SAC here sees raw states) and
    `policy` (the deterministic action tanh(mean)).
    """

    actor: StackedMLP
    q1: StackedMLP
    q2: StackedMLP
    action_low: torch.Tensor  # the environment's action bounds [act]
    action_high: torch.Tensor

    MODULES = ("actor", "q1", "q2")  # what a checkpoint holds

    @property
    def act_dim(self) -> int:
        return self.actor.dims[-1] // 2

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [S, B, act] in [-1, 1] for states [S, B, obs]."""
        return torch.tanh(self.actor(obs)[..., :self.act_dim])

    def sample(self, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions tanh(mean + std * eps) [S, B, act] and their log-probabilities [S, B, 1]."""
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        # squash log-std smoothly into [LOG_STD_MIN, LOG_STD_MAX] (as seemrl.generate.behaviour_sac)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        pre_tanh = mean + log_std.exp() * eps
        # log N(pre_tanh; mean, std) - log|d tanh/dx|, with log(1 - tanh(x)^2) written stably
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1, keepdim=True)
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1, keepdim=True)
        return torch.tanh(pre_tanh), log_prob

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1] -> the environment's box."""
        return self.action_low + (action + 1) * (0.5 * (self.action_high - self.action_low))

    def to(self, device) -> "SACNets":
        for name in ("actor", "q1", "q2", "action_low", "action_high"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def build_nets(cfg: OnlineSACConfig, seeds: list[int], obs_dim: int, act_dim: int,
               action_low=None, action_high=None) -> SACNets:
    """Initial networks; seed s's weights come from its own generators (alone or among others)."""
    actor = StackedMLP(seed_generators(seeds, STREAM_ACTOR), obs_dim, 2 * act_dim, cfg.hidden)
    q1, q2 = twin_critics(cfg.critic, seeds, obs_dim + act_dim, cfg.hidden, CRITIC_STREAMS)
    low = -torch.ones(act_dim) if action_low is None else torch.as_tensor(action_low, dtype=torch.float32)
    high = torch.ones(act_dim) if action_high is None else torch.as_tensor(action_high, dtype=torch.float32)
    return SACNets(actor, q1, q2, low.clone(), high.clone())


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: SACNets, cfg: OnlineSACConfig, seeds: list[int], step: int,
                    diverged_step: list[int | None], env_id: str, log_alpha: torch.Tensor) -> None:
    write_checkpoint(path, CHECKPOINT_FORMAT, step=step, seeds=seeds, config=cfg, diverged_step=diverged_step,
                     modules={name: getattr(nets, name) for name in SACNets.MODULES}, env_id=env_id,
                     obs_dim=nets.actor.dims[0], act_dim=nets.act_dim, action_low=nets.action_low.cpu().tolist(),
                     action_high=nets.action_high.cpu().tolist(), log_alpha=log_alpha.detach())


@dataclass
class Checkpoint(loop.Checkpoint):
    env_id: str
    log_alpha: torch.Tensor  # [S]


def load_checkpoint(path: str | Path) -> Checkpoint:
    payload, cfg, nets = load_nets(path, CHECKPOINT_FORMAT, OnlineSACConfig, build_nets, SACNets.MODULES,
                                   stats=("action_low", "action_high"))
    return Checkpoint(payload["step"], payload["seeds"], cfg, nets, payload["diverged_step"],
                      payload["env_id"], payload["log_alpha"])


# ------------------------------------------------------------------ replay
class ReplayBuffers:
    """S ring buffers on the device, filled in lockstep: `data` [S, capacity, width].

    A row is [obs | action (in [-1, 1]) | reward | next_obs | not_done]; not_done is 0 only at a
    true termination (a time-limit truncation bootstraps from next_obs). All seeds hold the same
    number of transitions, kept on the host (`size`) and on the device (`size_t`, int64, read by
    the update, so a captured CUDA graph samples from the whole buffer as it grows).
    """

    def __init__(self, n_seeds: int, capacity: int, obs_dim: int, act_dim: int, device):
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.width = 2 * obs_dim + act_dim + 2
        self.data = torch.zeros(n_seeds, capacity, self.width, device=device)
        self.size = self.pos = 0
        self.size_t = torch.zeros((), dtype=torch.int64, device=device)
        self.pos_t = torch.zeros(1, dtype=torch.int64, device=device)  # the write position, on the device

    def add(self, rows: torch.Tensor) -> None:
        """One transition per seed, rows [S, width]."""
        self.store(rows.to(self.data.device))
        self.count_added()

    def store(self, rows: torch.Tensor) -> None:
        """Write rows [S, width] (on the device) at the device-side position and advance it: no host
        value is read, so a CUDA graph can capture it. `count_added()` keeps the host's count."""
        self.data.index_copy_(1, self.pos_t, rows.unsqueeze(1))
        self.pos_t.add_(1).remainder_(self.capacity)
        self.size_t.add_(1).clamp_(max=self.capacity)

    def count_added(self) -> None:
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """obs, action, reward, next_obs, not_done of rows [..., width]."""
        o, a = self.obs_dim, self.act_dim
        return batch.split([o, a, 1, o, 1], dim=-1)

    def state_dict(self) -> dict:
        return {"data": self.data[:, :self.size].cpu(), "size": self.size, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.pos = state["size"], state["pos"]
        self.data[:, :self.size].copy_(state["data"])
        self.size_t.fill_(self.size)
        self.pos_t.fill_(self.pos)


class NoiseWindow:
    """Exploration noise of up to `rows` environment steps, drawn ahead from each seed's own CPU
    generator into a device buffer [rows, S, act]; `take()` reads the row at a device-side counter,
    so the acting step can be a CUDA graph. The same numbers on every device; a saved state
    re-enters a window mid-way by redrawing it from the generators' states at its start."""

    def __init__(self, generators: list[torch.Generator], act_dim: int, rows: int, device):
        self.gens, self.act_dim, self.rows = generators, act_dim, rows
        self.buf = torch.zeros(rows, len(generators), act_dim, device=device)
        self.ptr = torch.zeros(1, dtype=torch.int64, device=device)
        self.size = self.used = 0
        self.snapshot: list[torch.Tensor] | None = None  # generator states at the window's start

    def refill(self, rows: int | None = None) -> None:
        w = self.rows if rows is None else rows
        self.snapshot = [g.get_state() for g in self.gens]
        draws = torch.stack([torch.randn(w, self.act_dim, generator=g) for g in self.gens], 1)
        self.buf[:w].copy_(draws)
        self.ptr.zero_()
        self.size, self.used = w, 0

    def ensure(self) -> None:
        """Host side, before a `take()`: a fresh window once this one is used up."""
        if self.used == self.size:
            self.refill()

    def take(self) -> torch.Tensor:
        """This step's noise [S, act]; advances the device counter (the caller counts `used`)."""
        out = self.buf.index_select(0, self.ptr)[0]
        self.ptr.add_(1)
        return out

    def state_dict(self) -> dict:
        if self.snapshot is None or self.used == self.size:
            return {"generators": [g.get_state() for g in self.gens]}
        return {"snapshot": self.snapshot, "size": self.size, "used": self.used}

    def load_state_dict(self, state: dict) -> None:
        if "generators" in state:
            for g, g_state in zip(self.gens, state["generators"], strict=True):
                g.set_state(g_state)
            self.size = self.used = 0
            self.snapshot = None
            return
        for g, g_state in zip(self.gens, state["snapshot"], strict=True):
            g.set_state(g_state)
        self.refill(state["size"])
        self.used = state["used"]
        self.ptr.fill_(self.used)


# ------------------------------------------------------------------ the update
class Temperature(nn.Module):
    """Per-seed log entropy temperature [S]; a module, so the engine keeps it with the networks."""

    def __init__(self, n_seeds: int, init_alpha: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_seeds,), math.log(init_alpha)))


class SACTrainer(CriticTrainer):
    """One SAC update for all seeds (`step()`, the engine's), the exploration policy (`explore()`).

    The engine (`seemrl.training.trainer.StackedTrainer`) supplies the rest: the draws ("idx": minibatch
    positions, taken modulo the number of transitions in the buffer, the same for all seeds;
    "noise": policy noise for a' at s' and for the actor loss), each from per-seed generators; the
    optimisers (fused capturable Adam on CUDA, in graphed and eager runs); the CUDA graph on CUDA
    with `cfg.cuda_graph` (not with critic dropout, whose masks come from CPU generators inside the
    forward); the per-update divergence record (critic loss, actor loss or mean Q non-finite);
    and the resumable state. The engine counts updates: its window boundaries are given in updates
    such that windows end at checkpoint environment steps. The exploration noise comes from
    per-seed generators of its own, drawn at every environment step (kept in `extra_state`).
    The replay buffers are the engine's `data`; they are saved by the environment loop.
    """

    def __init__(self, cfg: OnlineSACConfig, seeds: list[int], nets: SACNets, replay: ReplayBuffers, device):
        self.replay = replay
        self.act_dim = nets.act_dim
        # windows of pre-drawn inputs end where the engine's checkpoint_every divides the update
        # count: the update counts at checkpoint env steps c*k, (c*k - learning_starts) * ups, are
        # all multiples of ups * gcd(c, learning_starts)
        super().__init__(cfg, seeds, replay, nets, device, steps=cfg.updates_before(cfg.steps),
                         checkpoint_every=cfg.updates_per_step * math.gcd(cfg.checkpoint_every, cfg.learning_starts))
        self.target_entropy = -float(self.act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.temperature = Temperature(self.S, cfg.init_alpha).to(self.device)
        self.networks = {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2, "temperature": self.temperature}
        if cfg.tau < 1.0:  # (tau = 1: the bootstrap target is the current critic, nothing to copy)
            self.targets = {name: copy.deepcopy(self.networks[name]).eval() for name in ("q1", "q2")}
        self.optimizers = {
            "actor": make_optimizer("adam", nets.actor.parameters(), cfg.actor_lr, self.device),
            # weight decay is the optimiser's (coupled) L2 penalty on the critics only
            "critic": make_optimizer("adam", critic_params(nets), cfg.critic_lr, self.device,
                                     weight_decay=critic_weight_decay(cfg.critic)),
            "alpha": make_optimizer("adam", [self.temperature.log_alpha], cfg.alpha_lr, self.device),
        }
        self.seed_index = torch.arange(self.S, device=self.device)[:, None]
        # acting: exploration noise drawn ahead, static input and output (a CUDA graph when graphed)
        self.noise = NoiseWindow(seed_generators(self.seeds, STREAM_EXPLORE), self.act_dim, EXPLORE_ROWS, self.device)
        self.act_obs = torch.zeros(self.S, 1, nets.actor.dims[0], device=self.device)
        self.act_out = torch.zeros(self.S, self.act_dim, device=self.device)
        self._act_graph: torch.cuda.CUDAGraph | None = None
        self.compile_update = self.device.type == "cuda" and cfg.compile_update  # the engine compiles it, on CUDA only
        self.finish_setup()
        self.join_critics()

    def compile_fallback(self):
        # a compiled update that fails part-way (first call only: the engine's warm-up when
        # graphed) may leave the critics without gradients; the plain update starts from them as they were
        return lambda: [p.requires_grad_(True) for p in critic_params(self.nets)]

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.temperature.log_alpha

    @property
    def draws(self) -> list[Draw]:
        B, A = self.cfg.batch_size, self.act_dim
        return [Draw("idx", "randint", (B,), STREAM_BATCH, high=INDEX_RANGE),
                Draw("noise", "normal", (2, B, A), STREAM_NOISE)]  # [0]: a' at s', [1]: pi(s) of the actor loss

    # ------------------------------------------------------------------ acting
    def act(self) -> None:
        """Sampled actions in [-1, 1] for the states in `act_obs` [S, 1, obs], into `act_out` [S, act];
        one row of each seed's exploration noise. Asynchronous on a GPU (a CUDA graph when graphed)."""
        self.noise.ensure()
        with matmul_precision(self.matmul_precision):
            if self.graphed:
                if self._act_graph is None:
                    with torch.no_grad():  # warm-up on a side stream (no state changes), then capture
                        warm_up(lambda: self.nets.sample(self.act_obs, torch.zeros_like(self.act_out)[:, None]),
                                self.device)
                    self._act_graph = capture_graph(self._act)
                self._act_graph.replay()
            else:
                self._act()
        self.noise.used += 1

    @torch.no_grad()
    def _act(self) -> None:
        action, _ = self.nets.sample(self.act_obs, self.noise.take()[:, None])
        self.act_out.copy_(action[:, 0])

    def explore(self, obs: np.ndarray) -> np.ndarray:
        """Sampled actions [S, act] in [-1, 1] for states [S, obs] (noise: each seed's own stream)."""
        self.act_obs.copy_(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(1))
        self.act()
        return self.act_out.cpu().numpy()

    # ------------------------------------------------------------------ the update
    def _update(self, draws: dict[str, torch.Tensor], kind, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, replay = self.cfg, self.nets, self.replay
        idx = torch.remainder(draws["idx"], replay.size_t.clamp_min(1))
        s, a, r, s2, not_done = replay.split(replay.data[self.seed_index, idx])
        noise = draws["noise"]
        log_alpha = self.temperature.log_alpha
        alpha = log_alpha.detach().exp()
        q1_t, q2_t = (self.targets["q1"], self.targets["q2"]) if self.targets else (nets.q1, nets.q2)
        # BatchNorm and dropout act (batch statistics, masks) only in the critic-loss forward;
        # bootstrap targets and the actor's Q use eval mode. No-ops for other critics.
        self._critic_mode(train=False)
        with torch.no_grad():
            a2, logp2 = nets.sample(s2, noise[:, 0])
            x2 = torch.cat([s2, a2], -1)
            q_min = self.twin_forward(x2, target=True).amin(0) if self.twin is not None else torch.minimum(q1_t(x2), q2_t(x2))
            q_next = q_min - alpha[:, None, None] * logp2
            target = r + cfg.gamma * not_done * q_next
        x = torch.cat([s, a], -1)
        self._critic_mode(train=True)
        q1, critic_loss = self.critic_td_loss(x, target)
        self._critic_mode(train=False)
        critic_opt, actor_opt, alpha_opt = (self.optimizers[k] for k in ("critic", "actor", "alpha"))
        self.critic_grads(critic_loss, set_to_none)  # a sum of per-seed losses: per-seed gradients
        out = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean((1, 2))}
        if grad_norm:  # the gradient the optimiser is about to apply
            out["critic_grad_norm"] = critic_grad_norm(nets)
        critic_opt.step()

        q_params = critic_params(nets) if self.twin is None else list(self.twin.joined.parameters())
        for p in q_params:  # backpropagate through the critics, skip their weight gradients
            p.requires_grad_(False)
        pi, logp = nets.sample(s, noise[:, 1])
        xp = torch.cat([s, pi], -1)
        q_pi = self.twin_forward(xp).amin(0) if self.twin is not None else torch.minimum(nets.q1(xp), nets.q2(xp))
        actor_loss = (alpha[:, None, None] * logp - q_pi).mean((1, 2))
        actor_opt.zero_grad(set_to_none=set_to_none)
        actor_loss.sum().backward()
        actor_opt.step()
        for p in q_params:
            p.requires_grad_(True)

        logp_mean = logp.detach().mean((1, 2))
        alpha_loss = -log_alpha * (logp_mean + self.target_entropy)
        alpha_opt.zero_grad(set_to_none=set_to_none)
        alpha_loss.sum().backward()
        alpha_opt.step()
        if self.targets:  # parameters and (BatchNorm) buffers follow the online critics
            self.update_targets(cfg.tau)
        out.update(actor_loss=actor_loss.detach(), alpha=alpha, entropy=-logp_mean)
        # the first update whose critic loss, actor loss or mean Q is NaN or inf (max propagates NaN)
        self.record_nonfinite(torch.stack([out["critic_loss"], out["actor_loss"], out["q_mean"]]).abs().amax(0))
        return out

    # ------------------------------------------------------------------ state beyond the engine's
    def extra_state(self) -> dict:
        return {"explore_noise": self.noise.state_dict(), **super().extra_state()}

    def load_extra_state(self, state: dict) -> None:
        self.noise.load_state_dict(state["explore_noise"])
        super().load_extra_state(state)


# ------------------------------------------------------------------ environments
def env_seed(seed: int) -> int:
    """The reset seed of training seed `seed`'s environment (its first reset; later ones continue)."""
    return int(np.random.SeedSequence([seed, STREAM_ENV]).generate_state(1)[0])


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    import gymnasium as gym

    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            return e
        e = e.env
    return None


def env_state(env: gym.Env) -> dict:
    """What a MuJoCo environment continues from: its full integration state (time, qpos, qvel,
    actuator state, controls, solver warm start), the time limit's step count and the random
    generator of its resets."""
    import mujoco

    u = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(u.model, spec))
    mujoco.mj_getState(u.model, u.data, state, spec)
    limit = _time_limit(env)
    return {"mujoco": torch.from_numpy(state), "elapsed_steps": None if limit is None else limit._elapsed_steps,
            "np_random": u.np_random.bit_generator.state}


def set_env_state(env: gym.Env, state: dict) -> None:
    """Restore `env_state` into an environment that was reset once."""
    import mujoco

    u = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(u.model, u.data, state["mujoco"].numpy(), spec)
    mujoco.mj_forward(u.model, u.data)  # derived quantities; the integration state is unchanged
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]
    u.np_random.bit_generator.state = state["np_random"]


class _EnvPolicy:
    """The deterministic policy in the environment's action box, shaped for `evaluate_policies`."""

    def __init__(self, nets: SACNets):
        self.nets, self.obs_mean = nets, nets.action_low  # evaluate_policies reads obs_mean.device

    def normalize(self, obs):
        return obs

    def policy(self, obs):
        return self.nets.env_action(self.nets.policy(obs))


def evaluate(nets: SACNets, seeds: list[int], env_id: str, n_episodes: int, eval_seed: int = 0,
             ref_min: float | None = None, ref_max: float | None = None) -> list:
    """Deterministic returns of every seed (`seemrl.training.evaluation.evaluate_policies`, actions rescaled)."""
    from seemrl.training.evaluation import evaluate_policies

    return evaluate_policies(_EnvPolicy(nets), seeds, env_id, n_episodes, eval_seed, ref_min, ref_max)


class TransitionRecord:
    """Every transition of every seed in collection order, on the host: observations in the
    environment's dtype, actions in its box, terminated and truncated apart (`arrays(i)`)."""

    ARRAYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")

    def __init__(self, n_seeds: int, capacity: int, obs_dim: int, act_dim: int, obs_dtype):
        self.obs = np.zeros((n_seeds, capacity, obs_dim), obs_dtype)
        self.action = np.zeros((n_seeds, capacity, act_dim), np.float32)
        self.reward = np.zeros((n_seeds, capacity), np.float32)
        self.next_obs = np.zeros_like(self.obs)
        self.terminated = np.zeros((n_seeds, capacity), bool)
        self.truncated = np.zeros((n_seeds, capacity), bool)
        self.size = np.zeros(n_seeds, np.int64)

    def add(self, i: int, obs, action, reward, next_obs, terminated: bool, truncated: bool) -> None:
        k = self.size[i]
        self.obs[i, k], self.action[i, k], self.reward[i, k], self.next_obs[i, k] = obs, action, reward, next_obs
        self.terminated[i, k], self.truncated[i, k] = terminated, truncated
        self.size[i] = k + 1

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """Seed i's transitions so far (views)."""
        return {name: getattr(self, name)[i, :self.size[i]] for name in self.ARRAYS}

    def state_dict(self) -> dict:
        n = int(self.size.max(initial=0))
        return {"size": torch.from_numpy(self.size.copy()),
                **{name: torch.from_numpy(getattr(self, name)[:, :n].copy()) for name in self.ARRAYS}}

    def load_state_dict(self, state: dict) -> None:
        self.size = state["size"].numpy().copy()
        for name in self.ARRAYS:
            v = state[name].numpy()
            getattr(self, name)[:, :v.shape[1]] = v


# ------------------------------------------------------------------ training loop
@dataclass
class TrainResult:
    metrics: pd.DataFrame  # one row per (log step, seed)
    evaluations: pd.DataFrame  # one row per (evaluation step, seed); seemrl.training.loop.EVALUATION_COLUMNS
    episodes: pd.DataFrame  # one row per finished training episode: step, seed, return, length
    diverged_step: list[int | None]  # per seed: env step of the first non-finite update
    nonfinite_actions: list[int]  # per seed: env steps whose action had non-finite entries (set to 0)
    steps_per_second: float | None  # env steps (of all seeds at once) per second of this process
    wall_seconds: float
    resumed_from_step: int | None = None
    update_mode: str = ""
    transitions: TransitionRecord | None = None  # every transition, when train(record=True)


def run_identity(cfg: OnlineSACConfig, seeds: list[int], env_id: str) -> dict:
    """What makes two runs the same run, as plain JSON values (for `ResumeDir`)."""
    import gymnasium as gym
    import mujoco

    return run_identity_of(cfg, seeds, tag={"algorithm": "online_sac"}, env_id=env_id, gymnasium=gym.__version__,
                           mujoco=mujoco.__version__)


METRIC_COLUMNS = ("step", "seed", "updates", "critic_loss", "actor_loss", "alpha", "entropy", "q_mean",
                  "critic_param_norm", "critic_grad_norm", "last_episode_return", "episodes", "nonfinite_actions")
_INT_METRICS = {"updates": "int64", "episodes": "int64", "nonfinite_actions": "int64"}


class OnlineRun:
    """The online loop's step for `seemrl.training.loop.train_loop`: one environment step of every seed
    (uniform warm-up actions, then the stochastic policy), its transitions stored, then
    `cfg.updates_per_step` updates of the `SACTrainer`, then the action of the next step (or, with
    `cfg.act_before_update`, that action before the updates, so the environment steps on the host
    while the GPU updates).

    On a GPU a step costs the host a few launches: the transitions and next states go through one
    pinned buffer, storing them and acting are CUDA graphs, and the host waits only for the
    action. It offers what `train_loop` asks of a trainer (`seeds`, `mode`, `step(grad_norm)`,
    `first_nonfinite_steps()` in environment steps, `state_dict()` / `load_state_dict()`, here
    with the replay buffers, environments, warm-up generators, the next action and episode
    records) and `log_values()`, the per-seed values of a logged step that are not the update's
    outputs. With `record` it also keeps every seed's transitions on the host, observations in
    the environment's dtype (`transitions()`), for exporting them as a dataset.
    """

    def __init__(self, cfg: OnlineSACConfig, envs: list, trainer: SACTrainer, record: bool = False):
        self.cfg, self.envs, self.trainer = cfg, envs, trainer
        self.seeds, self.mode, self.nets, self.replay = trainer.seeds, trainer.mode, trainer.nets, trainer.replay
        S, device = len(self.seeds), trainer.device
        self.scale = (self.nets.action_high - self.nets.action_low).cpu().double().numpy() / 2
        self.low = self.nets.action_low.cpu().double().numpy()
        self.warmup_gens = seed_generators(self.seeds, STREAM_WARMUP)
        # the first reset seeds each environment; a resumed run restores the states over it
        self.obs = np.stack([env.reset(seed=env_seed(seed))[0] for env, seed in zip(envs, self.seeds)])
        self.env_step = 0
        self.ep_return, self.ep_length = np.zeros(S), np.zeros(S, np.int64)
        self.last_return, self.n_episodes = np.full(S, math.nan), np.zeros(S, np.int64)
        self.nonfinite = np.zeros(S, np.int64)
        self.episode_rows: list[dict] = []
        self.next_action: np.ndarray | None = None  # the policy's action for the next step, once past the warm-up
        # host <-> device: [transition | state to act on] per seed, and the action back
        cuda = device.type == "cuda"
        width, obs_dim = self.replay.width, self.obs.shape[1]
        self.io = torch.zeros(S, width + obs_dim, pin_memory=cuda)
        self.io_np = self.io.numpy()
        self.io_dev = torch.zeros_like(self.io, device=device) if cuda else self.io
        self.action_host = torch.zeros(S, self.nets.act_dim, pin_memory=cuda)
        self.done_event = torch.cuda.Event() if cuda else None
        self._stage_graph: torch.cuda.CUDAGraph | None = None
        self.record = TransitionRecord(S, cfg.steps, obs_dim, self.nets.act_dim, self.obs.dtype) if record else None

    def step(self, grad_norm: bool = False) -> dict[str, torch.Tensor]:
        cfg, trainer, replay = self.cfg, self.trainer, self.replay
        self.env_step = step = self.env_step + 1
        # ---- act: uniform in the warm-up, then the stochastic policy; each seed from its own stream
        if step <= cfg.learning_starts:
            action = torch.stack([torch.rand(self.nets.act_dim, generator=g) for g in self.warmup_gens]).mul_(2).sub_(1).numpy()
        else:
            action = self.next_action
        bad = ~np.isfinite(action)
        if bad.any():
            self.nonfinite += bad.any(1)
            action = np.where(bad, np.float32(0.0), action)
        # ---- step every seed's environment; stage the transitions and the states to act on next
        obs, io, o, a = self.obs, self.io_np, self.obs.shape[1], self.nets.act_dim
        next_obs = np.empty_like(obs)
        for i, env in enumerate(self.envs):
            env_action = self.low + (action[i].astype(np.float64) + 1) * self.scale
            o2, reward, terminated, truncated, _ = env.step(env_action)
            io[i, :o], io[i, o:o + a], io[i, o + a] = obs[i], action[i], reward
            io[i, o + a + 1:2 * o + a + 1], io[i, 2 * o + a + 1] = o2, 0.0 if terminated else 1.0
            if self.record is not None:
                self.record.add(i, obs[i], env_action, reward, o2, terminated, truncated)
            self.ep_return[i] += reward
            self.ep_length[i] += 1
            if terminated or truncated:
                self.episode_rows.append({"step": step, "seed": self.seeds[i], "return": float(self.ep_return[i]),
                                          "length": int(self.ep_length[i])})
                self.last_return[i], self.n_episodes[i] = self.ep_return[i], self.n_episodes[i] + 1
                self.ep_return[i], self.ep_length[i] = 0.0, 0
                o2, _ = env.reset()
            next_obs[i] = o2
        io[:, replay.width:] = next_obs
        self.obs = next_obs
        self._stage()
        # ---- the updates and the next action (the gradient norm, when asked for, of the last update)
        acts = step < cfg.steps and step >= cfg.learning_starts
        if acts and cfg.act_before_update:
            self._act()
        elif not acts:
            self._mark()  # nothing to fetch: wait for the staging copy only
        out = {"alpha": trainer.log_alpha.detach().exp()}
        if step > cfg.learning_starts:
            for k in range(cfg.updates_per_step):
                out = trainer.step(grad_norm=grad_norm and k == cfg.updates_per_step - 1)
        if acts and not cfg.act_before_update:
            self._act()
        self._wait(acts)
        return out

    def _stage(self) -> None:
        """The staged transitions into the replay buffers and the states into the policy's input."""
        if self.io_dev is not self.io:
            self.io_dev.copy_(self.io, non_blocking=True)
        if self.trainer.graphed:
            if self._stage_graph is None:
                self._stage_graph = capture_graph(self._stage_ops)
            self._stage_graph.replay()
        else:
            self._stage_ops()
        self.replay.count_added()

    def _stage_ops(self) -> None:
        width = self.replay.width
        self.replay.store(self.io_dev[:, :width])
        self.trainer.act_obs.copy_(self.io_dev[:, None, width:])

    def _act(self) -> None:
        self.trainer.act()
        self.action_host.copy_(self.trainer.act_out, non_blocking=True)
        self._mark()

    def _mark(self) -> None:
        if self.done_event is not None:
            self.done_event.record()

    def _wait(self, acted: bool) -> None:
        """Wait for the marked point (the action; the staging buffer is then free again), not for
        updates queued after it."""
        if self.done_event is not None:
            self.done_event.synchronize()
        if acted:
            self.next_action = self.action_host.numpy().copy()

    def log_values(self) -> dict[str, torch.Tensor]:
        return {"updates": torch.full((len(self.seeds),), self.trainer.it, dtype=torch.int64),
                **critic_param_norms(self.nets),
                "last_episode_return": torch.from_numpy(self.last_return.copy()),
                "episodes": torch.from_numpy(self.n_episodes.copy()),
                "nonfinite_actions": torch.from_numpy(self.nonfinite.copy())}

    def first_nonfinite_steps(self) -> list[int | None]:
        """Per seed, the environment step of the first update with a non-finite loss or Q."""
        return [None if n is None else self.cfg.env_step_of_update(n) for n in self.trainer.first_nonfinite_steps()]

    def state_dict(self) -> dict:
        arrays = ("obs", "ep_return", "ep_length", "last_return", "n_episodes", "nonfinite")
        return {"trainer": self.trainer.state_dict(), "replay": self.replay.state_dict(),
                "envs": [env_state(env) for env in self.envs], "env_step": self.env_step,
                "warmup_gens": [g.get_state() for g in self.warmup_gens], "episodes": list(self.episode_rows),
                "next_action": None if self.next_action is None else torch.from_numpy(self.next_action.copy()),
                "record": None if self.record is None else self.record.state_dict(),
                **{name: torch.from_numpy(getattr(self, name).copy()) for name in arrays}}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.replay.load_state_dict(state["replay"])
        for env, env_st in zip(self.envs, state["envs"], strict=True):
            set_env_state(env, env_st)
        for g, g_state in zip(self.warmup_gens, state["warmup_gens"], strict=True):
            g.set_state(g_state)
        self.env_step, self.episode_rows = state["env_step"], list(state["episodes"])
        self.next_action = None if state["next_action"] is None else state["next_action"].numpy().copy()
        if self.record is not None:
            self.record.load_state_dict(state["record"])
        for name in ("obs", "ep_return", "ep_length", "last_return", "n_episodes", "nonfinite"):
            setattr(self, name, state[name].numpy().copy())


def train(cfg: OnlineSACConfig, seeds: list[int], env_id: str, checkpoint_dir: str | Path, device="cpu",
          log: Callable[[str], None] = print, resume: ResumeDir | None = None, *,
          nets: SACNets | None = None, ref_min: float | None = None, ref_max: float | None = None,
          monitor=None, record: bool = False, resume_every_s: float = 0.0) -> TrainResult:
    """Train SAC with every seed in its own `env_id` environment for `cfg.steps` environment steps.

    Checkpoints end up in `checkpoint_dir`. Without `resume` they are written straight there (the
    caller makes that atomic). With it they go to the resume directory, each followed by a resume
    state; training continues from a matching state found there; and at the end `checkpoint_dir`
    is replaced, atomically, by a directory of every checkpoint (`seemrl.training.loop.train_loop`).
    `nets` replaces the initial networks (tests); `ref_min` / `ref_max` give normalised scores;
    `record` keeps every transition on the host (`TrainResult.transitions`); with `resume`, a
    state is saved after a checkpoint once `resume_every_s` seconds passed since the last.
    """
    import gymnasium as gym

    seeds = list(seeds)
    S, device = len(seeds), torch.device(device)
    envs = [gym.make(env_id) for _ in seeds]
    try:
        space = envs[0].action_space
        bounded = isinstance(space, gym.spaces.Box) and np.isfinite(space.low).all() and np.isfinite(space.high).all()
        if not bounded:
            raise ValueError(f"{env_id}: online SAC needs a bounded Box action space, got {space}")
        if resume is not None and not hasattr(envs[0].unwrapped, "data"):
            raise ValueError(f"{env_id} is not a MuJoCo environment: its state cannot be saved for resuming")
        obs_dim, act_dim = envs[0].observation_space.shape[0], space.shape[0]
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        if nets is None:
            nets = build_nets(cfg, seeds, obs_dim, act_dim, low, high)
        replay = ReplayBuffers(S, min(cfg.buffer_size, cfg.steps), obs_dim, act_dim, device)
        run = OnlineRun(cfg, envs, SACTrainer(cfg, seeds, nets, replay, device), record=record)
        log(f"online SAC on {env_id}, {S} seeds, device {device}")

        def save(path: Path, step: int, diverged: list) -> None:
            save_checkpoint(path, run.nets, cfg, seeds, step, diverged, env_id, run.trainer.log_alpha)

        def evaluate_run(r: OnlineRun) -> list:
            return evaluate(r.nets, seeds, env_id, cfg.eval_episodes, cfg.eval_seed, ref_min, ref_max)

        settings = dataclasses.replace(loop_settings(cfg), resume_every_s=resume_every_s)
        result = train_loop(run, settings,
                            Path(checkpoint_dir), save, METRIC_COLUMNS[2:], run.log_values, log=log,
                            evaluate=evaluate_run, resume=resume, monitor=monitor)
    finally:
        for env in envs:
            env.close()
    return TrainResult(
        metrics=result.metrics.reindex(columns=list(METRIC_COLUMNS)).astype(_INT_METRICS),
        evaluations=result.evaluations,
        episodes=pd.DataFrame(run.episode_rows, columns=["step", "seed", "return", "length"]),
        diverged_step=result.diverged_step, nonfinite_actions=[int(n) for n in run.nonfinite],
        steps_per_second=result.steps_per_second, wall_seconds=result.wall_seconds,
        resumed_from_step=result.resumed_from_step, update_mode=run.mode, transitions=run.record)
