"""Implicit Q-Learning (Kostrikov, Nair and Levine 2021, "Offline Reinforcement Learning with
Implicit Q-Learning"), all seeds of a cell trained together on the training engine.

IQL never queries the critic at actions outside the dataset. Per step, on one minibatch (s, a, r, s'):

  1. V step   V(s) is regressed on min(Q1', Q2')(s, a) of the EMA target critics with the
              expectile loss |expectile - 1[u < 0]| * u^2, u = min Q' - V(s) (expectile 0.7
              MuJoCo, 0.9 AntMaze): V approximates an upper expectile of Q over the data's actions.
  2. actor    advantage-weighted regression: loss = mean exp(beta * (min Q' - V(s))) clipped at
              `exp_adv_max` (100) times -log pi(a | s) (Gaussian actor) or ||pi(s) - a||^2
              (deterministic actor); V is the network just updated, the critics the targets, as in
              the original implementation (ikostrikov/implicit_q_learning, `learner.py`).
  3. Q step   both critics regress on r + gamma * not_done * V(s') (the updated V); the critic
              loss is the sum of the two mean squared errors, as in the original.
  4. targets  EMA of the critics, rate tau (0.005).

CORL's PyTorch port differs in the order: its actor and Q step use V before the V update. Here the
order is the original's (the task brief: "V step, actor step, Q step, then target EMA").

Actor: a Gaussian with a tanh mean (an MLP whose output passes through tanh) and a state-independent
log standard deviation per seed and action dimension (initialised 0, clamped to [log_std_min,
log_std_max] = [-5, 2] in the forward pass: original IQL's `NormalTanhPolicy(state_dependent_std=False,
tanh_squash_distribution=False, log_std_min=-5)`); the distribution itself is not squashed, so
dataset actions at +-1 have finite log-likelihood. `actor_type="deterministic"` gives CORL's
deterministic variant (tanh(MLP), squared-error regression). The actor learning rate follows a
cosine decay from `actor_lr` to 0 over the run (original and CORL), set before each step with the
engine's `cosine_lr` / `set_lr`. Optional dropout on the actor's hidden activations
(`actor_dropout`; original IQL uses 0.1 on Kitchen / Adroit only): its masks are a declared `Draw`
(uniform numbers, kept where u >= p, as `StackedMLP`), so the step stays a CUDA graph.

Critics: two `critic_from_config` networks over concat(normalised s, a), so every normalisation of
the SEEM study (LayerNorm, BatchNorm, dropout, WeightNorm, OFN, weight decay) applies. The value
network V(s) is a StackedMLP with the same normalisation spec and weight decay when
`value_norm_like_critic` (default True: "regularise the critics" then covers every network that
bootstraps, and V's targets inherit the critic's scale), or a plain MLP without weight decay when
False. BatchNorm and dropout act only in the forward of each network's own loss (train mode);
targets, V(s) in the actor step and V(s') in the Q target run in eval mode.

Rewards (`prepare_data`, config `reward_mode`): "iql_locomotion" (default; MuJoCo) multiplies the
rewards by 1000 / (max episode return - min episode return) of the training table, as the original
(`normalize` in train_offline.py) and CORL (`modify_reward`). Episode returns come from
`seemrl.engine.episode_returns` over `episode_id`, so on an X% subset they are the sums over the
rows the subset kept (the scale is that of the subset, not of the full dataset). Any name of
`seemrl.engine.REWARD_TRANSFORMS` is also accepted: "minus1" is IQL's AntMaze setting (r - 1),
"none" leaves the rewards alone. `PRESETS` lists the paper's MuJoCo and AntMaze settings.

S seeds train in one process with stacked weights; each seed has its own generators for every
network's initialisation, its minibatches and its dropout masks, and every loss is a sum of per-seed
means, so a seed trained among others trains as it would alone. The critic loss of each seed is
checked for NaN / inf at every step (the first such step is recorded per seed; training goes on).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos.common import (CriticTrainer, OfflineNets, check_at_least_one, check_critic_spec, check_gamma,
                                 check_one_of, check_optimizer, check_run_settings, check_tau, coerce_shared_fields,
                                 critic_grad_norm, critic_net, critic_param_norms, critic_params, critic_spec,
                                 critic_weight_decay, load_offline_checkpoint, obs_stats, offline_data,
                                 run_identity_of, save_offline_checkpoint, train_offline, twin_critics)
from seemrl.algos.common import state_normalizer  # noqa: F401 (re-exported)
from seemrl.engine import (REWARD_TRANSFORMS, Checkpoint, Draw, LoopSettings, OfflineData,  # noqa: F401
                           StackedTrainer, TrainResult, cosine_lr, episode_returns, make_optimizer,
                           read_checkpoint, set_lr, train_loop, transform_reward, write_checkpoint)
from seemrl.nets import StackedMLP, per_seed_norm, seed_generators, stacked_affine
from seemrl.resume import ResumeDir, checkpoint_name, checkpoint_paths  # noqa: F401 (re-exported)

CHECKPOINT_FORMAT = "seemrl.iql.v1"
# Independent random streams per seed (the first seven numbered as in td3.py; 4, TD3's target-policy
# noise, is unused), so that e.g. changing the batch size never changes initialisation.
(STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, _STREAM_UNUSED, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2,
 STREAM_VALUE, STREAM_DROPOUT_VALUE, STREAM_ACTOR_DROPOUT) = range(10)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2

ACTOR_TYPES = ("gaussian", "deterministic")
ACTOR_LR_SCHEDULES = ("cosine", "constant")
REWARD_MODES = ("iql_locomotion", *REWARD_TRANSFORMS)
LOCOMOTION_REWARD_SPAN = 1000.0  # "iql_locomotion": rewards * 1000 / (max return - min return)

# The paper's hyperparameters per domain (IQL paper App. B; original code's configs): apply with
# IQLConfig(**PRESETS["antmaze"], ...). Everything else is shared (lr 3e-4, 256-256, batch 256, ...).
PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": dict(expectile=0.7, beta=3.0, reward_mode="iql_locomotion"),
    "antmaze": dict(expectile=0.9, beta=10.0, reward_mode="minus1"),
}


@dataclass
class IQLConfig:
    """Hyperparameters of IQL (defaults: the paper's MuJoCo setting, CORL's state normalisation)."""

    steps: int = 1_000_000  # gradient steps (paper: 1M)
    batch_size: int = 256  # transitions per seed per step
    optimizer: str = "adam"  # "adam" or "sgd" for all three networks (paper: Adam)
    actor_lr: float = 3e-4  # actor learning rate at step 0 (paper: 3e-4)
    critic_lr: float = 3e-4  # learning rate of the twin critics (paper: 3e-4)
    value_lr: float = 3e-4  # learning rate of V (paper: 3e-4)
    actor_lr_schedule: str = "cosine"  # "cosine": decay actor_lr to 0 over `steps` (original, CORL); "constant"
    gamma: float = 0.99  # discount
    tau: float = 0.005  # EMA rate of the target critics
    expectile: float = 0.7  # expectile of V's regression on Q (paper: 0.7 MuJoCo, 0.9 AntMaze)
    beta: float = 3.0  # inverse temperature of the advantage weights (paper: 3 MuJoCo, 10 AntMaze)
    exp_adv_max: float = 100.0  # clip of the weights exp(beta * advantage) (original: 100)
    actor_type: str = "gaussian"  # "gaussian" (tanh mean, state-independent log-std) or "deterministic"
    log_std_min: float = -5.0  # lower clamp of the Gaussian actor's log-std (original: -5)
    log_std_max: float = 2.0  # upper clamp of that log-std (original: 2)
    actor_dropout: float = 0.0  # dropout on the actor's hidden activations (original: 0.1 on Kitchen/Adroit only)
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of actor, critics and V
    critic: dict = field(default_factory=dict)  # critic normalisation: nets.CRITIC_SPEC_DEFAULTS keys + weight_decay
    value_norm_like_critic: bool = True  # V gets the critic's normalisation spec and weight decay; False: plain MLP
    reward_mode: str = "iql_locomotion"  # "iql_locomotion" (MuJoCo, see prepare_data) or an engine.REWARD_TRANSFORMS name
    normalize_states: bool = True  # standardise states with the dataset mean/std (CORL; the original does not)
    checkpoint_every: int = 10_000  # steps between checkpoints (step 0 and the last included)
    log_every: int = 1000  # steps between logged training metrics
    eval_every: int = 0  # steps between policy evaluations in the environment (and at the end); 0 = none
    eval_episodes: int = 10  # episodes per seed and evaluation
    eval_seed: int = 0  # episode k of seed s resets with a seed derived from (eval_seed, s, k)
    cuda_graph: bool = True  # on CUDA, replay the update step as a captured CUDA graph (ignored on CPU)
    matmul_precision: str = "tf32"  # float32 matmuls on CUDA: "tf32" (tensor cores) or "ieee" (full fp32); CPU: always ieee

    def __post_init__(self):
        coerce_shared_fields(self)
        check_optimizer(self.optimizer)
        check_critic_spec(self.critic)
        check_at_least_one(self, ("steps", "batch_size", "checkpoint_every", "log_every"))
        for name in ("actor_lr", "critic_lr", "value_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        check_one_of(self, "actor_lr_schedule", ACTOR_LR_SCHEDULES)
        check_tau(self.tau)
        check_gamma(self.gamma)
        if not 0 < self.expectile < 1:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not self.exp_adv_max > 0:
            raise ValueError(f"exp_adv_max must be > 0, got {self.exp_adv_max}")
        check_one_of(self, "actor_type", ACTOR_TYPES)
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {self.log_std_min} and {self.log_std_max}")
        if isinstance(self.actor_dropout, bool) or not 0 <= self.actor_dropout < 1:
            raise ValueError(f"actor_dropout must be a probability in [0, 1), got {self.actor_dropout!r}")
        check_one_of(self, "reward_mode", REWARD_MODES)
        check_run_settings(self)

    @property
    def twin_q(self) -> bool:
        """IQL always has two critics (read by the SEEM analysis, like TD3Config.twin_q)."""
        return True


Config = IQLConfig


# ------------------------------------------------------------------ networks
class IQLActor(nn.Module):
    """Actor of S seeds: `net` maps normalised states to the pre-tanh mean; the Gaussian actor also
    has `log_std` [S, 1, act] (state-independent), clamped in use."""

    def __init__(self, net: StackedMLP, gaussian: bool):
        super().__init__()
        self.net = net
        self.log_std = nn.Parameter(torch.zeros(net.n_seeds, 1, net.dims[-1])) if gaussian else None

    @property
    def dims(self) -> list[int]:
        return self.net.dims

    def forward(self, obs_n: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mean) [S, B, act]."""
        return torch.tanh(self.net(obs_n))


@dataclass
class IQLNets(OfflineNets):
    """Actor, twin critics and value network of S seeds; the policy is tanh(mean(normalised state))."""

    actor: IQLActor
    q1: StackedMLP
    q2: StackedMLP
    value: StackedMLP
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    MODULES = ("actor", "q1", "q2", "value")

    def policy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [S, B, act] in [-1, 1] for normalised states [S, B, obs] (the
        Gaussian's mean; no dropout)."""
        return torch.tanh(self.actor.net(obs_n))


def build_nets(cfg: IQLConfig, seeds: list[int], obs_dim: int, act_dim: int,
               obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> IQLNets:
    q1, q2 = twin_critics(cfg.critic, seeds, obs_dim + act_dim, cfg.hidden, CRITIC_STREAMS)
    v_spec = critic_spec(cfg.critic) if cfg.value_norm_like_critic else {}
    value = critic_net(v_spec, seeds, STREAM_VALUE, STREAM_DROPOUT_VALUE, obs_dim, cfg.hidden)
    # the actor's dropout (if any) is applied by the trainer with masks from a Draw
    actor = IQLActor(StackedMLP(seed_generators(seeds, STREAM_ACTOR), obs_dim, act_dim, cfg.hidden),
                     gaussian=cfg.actor_type == "gaussian")
    return IQLNets(actor, q1, q2, value, *obs_stats(obs_dim, obs_mean, obs_std))


# ------------------------------------------------------------------ data
def locomotion_reward_scale(reward: np.ndarray, episode_id: np.ndarray) -> tuple[float, float, float]:
    """IQL's MuJoCo reward scale 1000 / (max - min episode return), with the two returns. Returns
    are sums over the rows present (an X% subset: the rows it kept)."""
    returns = episode_returns(reward, episode_id)
    lo, hi = float(returns.min()), float(returns.max())
    if not hi > lo:
        raise ValueError(f"reward_mode 'iql_locomotion' scales by 1000 / (max - min episode return), but "
                         f"every episode returns {lo}; use another reward_mode")
    return LOCOMOTION_REWARD_SPAN / (hi - lo), lo, hi


def prepare_data(transitions, cfg: IQLConfig, device) -> tuple[OfflineData, dict]:
    """Training tensors from a transition table (`seemrl.data.transitions.read_transitions`):
    rewards per `cfg.reward_mode`, states standardised if `cfg.normalize_states`. Returns the data
    and `extras`: obs_mean, obs_std (for `build_nets`), reward_mode, reward_scale (the
    multiplier of "iql_locomotion", else None), return_min / return_max (of the table's episodes,
    before scaling; None for other modes)."""
    t = transitions
    reward = np.asarray(t.reward, np.float32)
    scale = lo = hi = None
    if cfg.reward_mode == "iql_locomotion":
        scale, lo, hi = locomotion_reward_scale(reward, t.episode_id)
        reward = (reward.astype(np.float64) * scale).astype(np.float32)
    else:
        reward = transform_reward(reward, cfg.reward_mode)
    data, mean, std = offline_data(t, reward, cfg.normalize_states, device, obs=np.asarray(t.obs, np.float32))
    extras = {"obs_mean": mean, "obs_std": std, "reward_mode": cfg.reward_mode, "reward_scale": scale,
              "return_min": lo, "return_max": hi}
    return data, extras


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: IQLNets, cfg: IQLConfig, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    save_offline_checkpoint(path, CHECKPOINT_FORMAT, nets, cfg, seeds, step, diverged_step,
                            obs_dim=nets.value.dims[0], act_dim=nets.actor.dims[-1])


def load_checkpoint(path: str | Path) -> Checkpoint:
    return load_offline_checkpoint(path, CHECKPOINT_FORMAT, IQLConfig, build_nets, IQLNets.MODULES)


# ------------------------------------------------------------------ the update step
def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """Per-seed mean of |expectile - 1[u < 0]| * u^2 over [S, B, 1] -> [S]."""
    weight = torch.abs(expectile - (u < 0).to(u.dtype))
    return (weight * u.pow(2)).mean((1, 2))


class IQLTrainer(CriticTrainer):
    """IQL's update for all seeds; the engine (`seemrl.engine.StackedTrainer`) does the rest.

    One kind of step. Draws: the minibatch indices and, with `actor_dropout`, the uniform numbers
    of the actor's dropout masks. Critics (or V) with dropout draw their masks from CPU generators
    inside the forward pass, so such configurations run eagerly.
    """

    def __init__(self, cfg: IQLConfig, seeds: list[int], data: OfflineData, nets: IQLNets, device):
        super().__init__(cfg, seeds, data, nets, device)
        self.networks = {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2, "value": nets.value}
        self.targets = {name: copy.deepcopy(self.networks[name]).eval() for name in ("q1", "q2")}
        weight_decay = float(critic_weight_decay(cfg.critic))
        self.optimizers = {
            "value": make_optimizer(cfg.optimizer, nets.value.parameters(), cfg.value_lr, self.device,
                                    weight_decay=weight_decay if cfg.value_norm_like_critic else 0.0),
            "actor": make_optimizer(cfg.optimizer, nets.actor.parameters(), cfg.actor_lr, self.device),
            # weight decay is the optimiser's (coupled) L2 penalty
            "critic": make_optimizer(cfg.optimizer, critic_params(nets), cfg.critic_lr, self.device,
                                     weight_decay=weight_decay),
        }
        self.finish_setup()

    @property
    def draws(self) -> list[Draw]:
        b = self.cfg.batch_size
        out = [Draw("idx", "randint", (b,), STREAM_BATCH, high=len(self.data))]
        if self.cfg.actor_dropout > 0:
            out.append(Draw("actor_dropout", "uniform", (b, sum(self.cfg.hidden)), STREAM_ACTOR_DROPOUT))
        return out

    def dropout_modules(self) -> tuple[nn.Module, ...]:
        return self.nets.q1, self.nets.q2, self.nets.value

    @property
    def graphable(self) -> bool:
        return not any(m.dropout > 0 for m in self.dropout_modules())

    def not_graphable_reason(self) -> str:
        return "critic / value dropout draws its masks from CPU generators inside the step"

    def actor_lr(self, it: int) -> float:
        """The actor learning rate of step it + 1."""
        cfg = self.cfg
        return cosine_lr(cfg.actor_lr, it, cfg.steps) if cfg.actor_lr_schedule == "cosine" else cfg.actor_lr

    def step(self, grad_norm: bool = False) -> dict[str, torch.Tensor]:
        set_lr(self.optimizers["actor"], self.actor_lr(self.it))  # before the step (reaches a captured graph)
        return super().step(grad_norm)

    def _actor_mean(self, obs_n: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Pre-tanh actor output [S, B, act]; with dropout uniforms u [S, B, sum(hidden)], the hidden
        activations keep the units with u >= p, scaled by 1 / (1 - p) (StackedMLP's recipe)."""
        net = self.nets.actor.net
        if u is None:
            return net(obs_n)
        p = self.cfg.actor_dropout
        masks = ((u >= p).to(obs_n.dtype) * (1.0 / (1.0 - p))).split(net.dims[1:-1], dim=-1)
        x = obs_n
        for k in range(len(net.weights) - 1):
            x = F.relu(stacked_affine(net.biases[k], x, net.weights[k])) * masks[k]
        return stacked_affine(net.biases[-1], x, net.weights[-1])

    def _update(self, draws: dict[str, torch.Tensor], kind, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, d = self.cfg, self.nets, self.data
        idx = draws["idx"]
        s, a, r, s2, not_done = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        x = torch.cat([s, a], -1)
        q1_t, q2_t = self.targets["q1"], self.targets["q2"]
        v_opt, actor_opt, critic_opt = self.optimizers["value"], self.optimizers["actor"], self.optimizers["critic"]
        # BatchNorm and dropout act (batch statistics, masks) only in the forward of a network's own
        # loss; every other call runs in eval mode. No-ops for other networks.
        self._modes(train=False)
        out: dict[str, torch.Tensor] = {}

        # 1. V step: expectile regression on the target critics' min
        with torch.no_grad():
            q_target = torch.minimum(q1_t(x), q2_t(x))
        nets.value.train(True)
        v = nets.value(s)
        nets.value.train(False)
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        v_opt.zero_grad(set_to_none=set_to_none)
        value_loss.sum().backward()  # a sum of per-seed losses: per-seed gradients
        if grad_norm:
            out["value_grad_norm"] = per_seed_norm([p.grad for p in nets.value.parameters() if p.grad is not None])
        v_opt.step()

        # 2. actor step: advantage-weighted regression with the updated V and the target critics
        with torch.no_grad():
            weight = torch.exp(cfg.beta * (q_target - nets.value(s))).clamp(max=cfg.exp_adv_max)
        mean = torch.tanh(self._actor_mean(s, draws.get("actor_dropout")))
        if nets.actor.log_std is not None:
            log_std = nets.actor.log_std.clamp(cfg.log_std_min, cfg.log_std_max)
            log_prob = (-0.5 * ((a - mean) * torch.exp(-log_std)).pow(2) - log_std
                        - 0.5 * float(np.log(2 * np.pi))).sum(-1, keepdim=True)
            bc = -log_prob
        else:
            bc = (mean - a).pow(2).sum(-1, keepdim=True)
        actor_loss = (weight * bc).mean((1, 2))
        actor_opt.zero_grad(set_to_none=set_to_none)
        actor_loss.sum().backward()
        actor_opt.step()

        # 3. Q step: regression on r + gamma * not_done * V(s') of the updated V
        with torch.no_grad():
            target = r + cfg.gamma * not_done * nets.value(s2)
        nets.q1.train(True)
        nets.q2.train(True)
        q1 = nets.q1(x)
        critic_loss = ((q1 - target) ** 2).mean((1, 2)) + ((nets.q2(x) - target) ** 2).mean((1, 2))
        self._modes(train=False)
        critic_opt.zero_grad(set_to_none=set_to_none)
        critic_loss.sum().backward()
        self.record_nonfinite(critic_loss)
        if grad_norm:  # the gradient the optimiser is about to apply
            out["critic_grad_norm"] = critic_grad_norm(nets)
        critic_opt.step()

        # 4. EMA of the critics (parameters and BatchNorm buffers)
        self.update_targets(cfg.tau)
        out.update(critic_loss=critic_loss.detach(), value_loss=value_loss.detach(),
                   actor_loss=actor_loss.detach(), q_mean=q1.detach().mean((1, 2)), v_mean=v.detach().mean((1, 2)))
        return out

    def _modes(self, train: bool) -> None:
        for m in (self.nets.q1, self.nets.q2, self.nets.value):
            m.train(train)


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: IQLConfig, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    return run_identity_of(cfg, seeds, tag={"trainer": "iql"}, data_sha256=data_sha256)


# ------------------------------------------------------------------ training loop
METRIC_KEYS = ("critic_loss", "value_loss", "actor_loss", "q_mean", "v_mean")
GRAD_NORM_KEYS = ("critic_grad_norm", "value_grad_norm")


def train(cfg: IQLConfig, seeds: list[int], data: OfflineData, nets: IQLNets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None, monitor=None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`.
    `data` as returned by `prepare_data` (rewards already transformed); `evaluate` and `resume`
    as in `seemrl.algos.common.train_offline`."""
    return train_offline(IQLTrainer(cfg, seeds, data, nets, device), save_checkpoint, checkpoint_dir,
                         (*METRIC_KEYS, *GRAD_NORM_KEYS), _param_norms, log, evaluate, resume, monitor)


def _param_norms(nets: IQLNets) -> dict[str, torch.Tensor]:
    return {**critic_param_norms(nets), "value_param_norm": per_seed_norm(list(nets.value.parameters()))}
