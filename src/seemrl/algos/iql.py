"""Implicit Q-Learning (Kostrikov, Nair and Levine 2021), all seeds of a cell trained together.

IQL never queries the critic at actions outside the dataset. Per step, on one minibatch: V is
regressed on min(Q1', Q2') with the expectile loss; the actor by advantage-weighted regression
(exp(beta * (min Q' - V)) clipped, times -log pi(a|s)); both critics on r + gamma V(s'); then the
target critics follow by EMA. The order is the original implementation's (V, actor, Q, targets).
Critics, and V when `value_norm_like_critic`, take the `critic` normalisation spec. Rewards are
prepared before training (`reward_transform`: "iql_locomotion" on MuJoCo, "minus1" on AntMaze).
`docs/algorithms/iql.md` explains the choices and where they come from.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos.base import (CriticTrainer, OfflineConfig, OfflineNets, check_one_of, check_optimizer, check_positive,
                               critic_grad_norm, critic_net, critic_param_norms, critic_params, critic_spec,
                               critic_weight_decay, load_offline_checkpoint, obs_stats, run_identity_of,
                               save_offline_checkpoint, train_offline, twin_critics)
from seemrl.training.draws import Draw, OfflineData
from seemrl.training.loop import Checkpoint, TrainResult
from seemrl.training.nets import StackedMLP, per_seed_norm, seed_generators, stacked_affine
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import cosine_lr, make_optimizer, set_lr

CHECKPOINT_FORMAT = "seemrl.iql.v1"
# Independent random streams per seed (the first seven numbered as in td3.py; 4, TD3's target-policy
# noise, is unused), so that e.g. changing the batch size never changes initialisation.
(STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, _STREAM_UNUSED, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2,
 STREAM_VALUE, STREAM_DROPOUT_VALUE, STREAM_ACTOR_DROPOUT) = range(10)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2

ACTOR_TYPES = ("gaussian", "deterministic")
ACTOR_LR_SCHEDULES = ("cosine", "constant")


@dataclass
class IQLConfig(OfflineConfig):
    """Hyperparameters of IQL (defaults: the paper's MuJoCo setting, CORL's state normalisation)."""

    reward_transform: str = "iql_locomotion"  # data.preparation.REWARD_TRANSFORMS ("minus1" on AntMaze)
    optimizer: str = "adam"  # "adam" or "sgd" for all three networks (paper: Adam)
    actor_lr: float = 3e-4  # actor learning rate at step 0 (paper: 3e-4)
    critic_lr: float = 3e-4  # learning rate of the twin critics (paper: 3e-4)
    value_lr: float = 3e-4  # learning rate of V (paper: 3e-4)
    actor_lr_schedule: str = "cosine"  # "cosine": decay actor_lr to 0 over `steps` (original, CORL); "constant"
    expectile: float = 0.7  # expectile of V's regression on Q (paper: 0.7 MuJoCo, 0.9 AntMaze)
    beta: float = 3.0  # inverse temperature of the advantage weights (paper: 3 MuJoCo, 10 AntMaze)
    exp_adv_max: float = 100.0  # clip of the weights exp(beta * advantage) (original: 100)
    actor_type: str = "gaussian"  # "gaussian" (tanh mean, state-independent log-std) or "deterministic"
    log_std_min: float = -5.0  # lower clamp of the Gaussian actor's log-std (original: -5)
    log_std_max: float = 2.0  # upper clamp of that log-std (original: 2)
    actor_dropout: float = 0.0  # dropout on the actor's hidden activations (original: 0.1 on Kitchen/Adroit only)
    value_norm_like_critic: bool = True  # V gets the critic's normalisation spec and weight decay; False: plain MLP

    MEMBER_SETTINGS = ("expectile", "beta")  # may differ between cells of one stack (a sweep)

    def __post_init__(self):
        check_optimizer(self.optimizer)
        check_positive(self, ("actor_lr", "critic_lr", "value_lr"))
        check_one_of(self, "actor_lr_schedule", ACTOR_LR_SCHEDULES)
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
        super().__post_init__()

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


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: IQLNets, cfg: IQLConfig, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    save_offline_checkpoint(path, CHECKPOINT_FORMAT, nets, cfg, seeds, step, diverged_step,
                            obs_dim=nets.value.dims[0], act_dim=nets.actor.net.dims[-1])


def load_checkpoint(path: str | Path) -> Checkpoint:
    return load_offline_checkpoint(path, CHECKPOINT_FORMAT, IQLConfig, build_nets, IQLNets.MODULES)


# ------------------------------------------------------------------ the update step
def expectile_loss(u: torch.Tensor, expectile: float | torch.Tensor) -> torch.Tensor:
    """Per-seed mean of |expectile - 1[u < 0]| * u^2 over [S, B, 1] -> [S] (expectile: one, or [S, 1, 1])."""
    weight = torch.abs(expectile - (u < 0).to(u.dtype))
    return (weight * u.pow(2)).mean((1, 2))


class IQLTrainer(CriticTrainer):
    """IQL's update for all seeds; the engine (`seemrl.training.trainer.StackedTrainer`) does the rest.

    One kind of step. Draws: the minibatch indices and, with `actor_dropout`, the uniform numbers
    of the actor's dropout masks. Critics (or V) with dropout draw their masks from CPU generators
    inside the forward pass, so such configurations run eagerly.
    """

    def __init__(self, cfg: IQLConfig, seeds: list[int], data: OfflineData, nets: IQLNets, device,
                 settings: dict | None = None):
        super().__init__(cfg, seeds, data, nets, device, settings=settings)
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
        self.join_critics()

    @property
    def draws(self) -> list[Draw]:
        b = self.cfg.batch_size
        out = [self.data.index_draw("idx", b, STREAM_BATCH)]
        if self.cfg.actor_dropout > 0:
            out.append(Draw("actor_dropout", "uniform", (b, sum(self.cfg.hidden)), STREAM_ACTOR_DROPOUT))
        return out

    def dropout_modules(self) -> tuple[nn.Module, ...]:
        return self.nets.q1, self.nets.q2, self.nets.value

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
        with torch.no_grad():  # (both critics in one forward pass where joined: `join_critics`)
            q_target = (self.twin_forward(x, target=True).amin(0) if self.twin is not None
                else torch.minimum(q1_t(x), q2_t(x)))
        nets.value.train(True)
        v = nets.value(s)
        nets.value.train(False)
        value_loss = expectile_loss(q_target - v, self.setting("expectile", 3))
        v_opt.zero_grad(set_to_none=set_to_none)
        value_loss.sum().backward()  # a sum of per-seed losses: per-seed gradients
        if grad_norm:
            out["value_grad_norm"] = per_seed_norm([p.grad for p in nets.value.parameters() if p.grad is not None])
        v_opt.step()

        # 2. actor step: advantage-weighted regression with the updated V and the target critics
        with torch.no_grad():
            weight = torch.exp(self.setting("beta", 3) * (q_target - nets.value(s))).clamp(max=cfg.exp_adv_max)
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
        self._critic_mode(train=True)
        q1, critic_loss = self.critic_td_loss(x, target)
        self._modes(train=False)
        self.critic_grads(critic_loss, set_to_none)
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
        self._critic_mode(train)
        self.nets.value.train(train)


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: IQLConfig, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    return run_identity_of(cfg, seeds, tag={"trainer": "iql"}, data_sha256=data_sha256)


# ------------------------------------------------------------------ training loop
METRIC_KEYS = ("critic_loss", "value_loss", "actor_loss", "q_mean", "v_mean")
GRAD_NORM_KEYS = ("critic_grad_norm", "value_grad_norm")


def train(cfg: IQLConfig, seeds: list[int], data: OfflineData, nets: IQLNets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None, monitor=None, settings: dict | None = None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`. `data`
    is prepared (`seemrl.data.preparation`); `evaluate` and `resume` as in `base.train_offline`;
    `settings`: per-member values of MEMBER_SETTINGS (cells of a sweep in one stack)."""
    return train_offline(IQLTrainer(cfg, seeds, data, nets, device, settings), save_checkpoint, checkpoint_dir,
                         (*METRIC_KEYS, *GRAD_NORM_KEYS), _param_norms, log, evaluate, resume, monitor)


def _param_norms(nets: IQLNets) -> dict[str, torch.Tensor]:
    return {**critic_param_norms(nets), "value_param_norm": per_seed_norm(list(nets.value.parameters()))}
