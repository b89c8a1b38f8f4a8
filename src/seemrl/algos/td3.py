"""Offline TD3 in the SEEM setting (and TD3+BC, DDPG), all seeds of a cell trained together.

The paper's divergence study (Sec. 3) trains offline TD3 with no behaviour-cloning term and no
EMA: the target networks are the current networks (tau = 1). `bc_weight=1, tau=0.005` gives
TD3+BC; `twin_q=False, policy_noise=0, policy_delay=1` gives DDPG, the start of the paper's
ablation chain (Fig. 12). The update step is below; the base (`seemrl.algos.base`) and the
engine (`seemrl.training`) do the rest. `docs/algorithms/td3.md` explains the choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seemrl.algos.base import (CriticTrainer, OfflineConfig, OfflineNets, check_at_least_one, check_optimizer,
                               check_positive, critic_grad_norm, critic_param_norms, critic_params, critic_weight_decay,
                               load_offline_checkpoint, obs_stats, run_identity_of, save_offline_checkpoint,
                               train_offline, twin_critics)
from seemrl.training.draws import Draw, OfflineData
from seemrl.training.loop import Checkpoint, TrainResult
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import make_optimizer

CHECKPOINT_FORMAT = "seemrl.td3.v2"  # v2: critic normalisation as one `critic` spec
# Independent random streams per seed, so that e.g. changing the batch size never changes init.
STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, STREAM_NOISE, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2 = range(7)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2


@dataclass
class TD3Config(OfflineConfig):
    """Hyperparameters of offline TD3 / TD3+BC (defaults: the SEEM-metric setting)."""

    steps: int = 10_000  # gradient steps
    checkpoint_every: int = 1000  # steps between checkpoints (step 0 and the last included)
    log_every: int = 100  # steps between logged training metrics
    tau: float = 1.0  # target update rate; 1.0 copies the network every update (no EMA)
    optimizer: str = "adam"  # "adam" or "sgd" (the paper's SGD study)
    actor_lr: float = 3e-4  # learning rate of the actor
    critic_lr: float = 3e-4  # learning rate of the critics
    policy_noise: float = 0.2  # std of target-policy smoothing noise
    noise_clip: float = 0.5  # clip of that noise
    policy_delay: int = 2  # critic updates per actor update
    twin_q: bool = True  # clipped double Q (min of two critics); False = DDPG's single critic
    alpha: float = 2.5  # actor loss is -(alpha / mean|Q|) * Q
    bc_weight: float = 0.0  # weight of the BC term (pi - a)^2; 0 in the SEEM setting

    RENAMED = {**OfflineConfig.RENAMED, "lr": ("actor_lr", "critic_lr")}
    MEMBER_SETTINGS = ("alpha", "bc_weight")  # may differ between cells of one stack (a TD3+BC alpha sweep)

    def __post_init__(self):
        check_optimizer(self.optimizer)
        check_positive(self, ("actor_lr", "critic_lr"))
        check_at_least_one(self, ("policy_delay",))
        super().__post_init__()


Config = TD3Config  # the name every algorithm module offers (seemrl.algos)


@dataclass
class TD3Nets(OfflineNets):
    """Actor and twin critics of S seeds; the policy is tanh(actor(normalised state))."""

    actor: StackedMLP
    q1: StackedMLP
    q2: StackedMLP
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    MODULES = ("actor", "q1", "q2")

    def policy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [S, B, act] for normalised states [S, B, obs]."""
        return torch.tanh(self.actor(obs_n))


def build_nets(cfg: TD3Config, seeds: list[int], obs_dim: int, act_dim: int,
               obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> TD3Nets:
    actor = StackedMLP(seed_generators(seeds, STREAM_ACTOR), obs_dim, act_dim, cfg.hidden)
    q1, q2 = twin_critics(cfg.critic, seeds, obs_dim + act_dim, cfg.hidden, CRITIC_STREAMS)
    return TD3Nets(actor, q1, q2, *obs_stats(obs_dim, obs_mean, obs_std))


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: TD3Nets, cfg: TD3Config, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    save_offline_checkpoint(path, CHECKPOINT_FORMAT, nets, cfg, seeds, step, diverged_step,
                            obs_dim=nets.actor.dims[0], act_dim=nets.actor.dims[-1])


def load_checkpoint(path: str | Path) -> Checkpoint:
    return load_offline_checkpoint(path, CHECKPOINT_FORMAT, TD3Config, build_nets, TD3Nets.MODULES)


# ------------------------------------------------------------------ the update step
class TD3Trainer(CriticTrainer):
    """TD3's update for all seeds; the engine (`seemrl.training.trainer.StackedTrainer`) does the rest.

    Step kinds: with or without the (delayed) actor update. Critics with dropout draw their masks
    from CPU generators inside the forward pass, so they run eagerly (`CriticTrainer`).
    """

    def __init__(self, cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, device,
                 settings: dict | None = None):
        super().__init__(cfg, seeds, data, nets, device, settings=settings)
        self.networks = {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2}
        self.actor_params = list(nets.actor.parameters())
        if cfg.tau < 1.0:
            import copy
            self.targets = {name: copy.deepcopy(m).eval() for name, m in self.networks.items()}
        # (tau = 1: the target networks are the current ones)
        self.optimizers = {
            "actor": make_optimizer(cfg.optimizer, nets.actor.parameters(), cfg.actor_lr, self.device),
            # weight decay is the optimiser's (coupled) L2 penalty on the critic only
            "critic": make_optimizer(cfg.optimizer, critic_params(nets), cfg.critic_lr, self.device,
                                     weight_decay=critic_weight_decay(cfg.critic)),
        }
        self.finish_setup()
        if cfg.twin_q:
            self.join_critics()

    @property
    def draws(self) -> list[Draw]:
        b, act_dim = self.cfg.batch_size, self.data.action.shape[1]
        return [self.data.index_draw("idx", b, STREAM_BATCH),
                Draw("noise", "normal", (b, act_dim), STREAM_NOISE)]

    def step_kinds(self) -> list[bool]:
        return [False, True] if self.cfg.policy_delay > 1 else [True]

    def step_kind(self, it: int) -> bool:
        return (it + 1) % self.cfg.policy_delay == 0  # whether this step updates the actor

    def _update(self, draws: dict[str, torch.Tensor], actor_update: bool, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, d = self.cfg, self.nets, self.data
        idx, noise = draws["idx"], draws["noise"]
        s, a, r, s2, not_done = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        t = self.targets
        actor_t, q1_t, q2_t = (t["actor"], t["q1"], t["q2"]) if t else (nets.actor, nets.q1, nets.q2)
        # BatchNorm and dropout act (batch statistics, masks) only in the critic-loss forward;
        # bootstrap targets and the actor's Q use eval mode. No-ops for other critics.
        self._critic_mode(train=False)
        with torch.no_grad():
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (torch.tanh(actor_t(s2)) + noise).clamp(-1.0, 1.0)
            x2 = torch.cat([s2, a2], -1)
            if self.twin is not None:  # both critics in one forward pass (`join_critics`)
                q_next = self.twin_forward(x2, target=True).amin(0)
            else:
                q_next = torch.minimum(q1_t(x2), q2_t(x2)) if cfg.twin_q else q1_t(x2)
            target = r + cfg.gamma * not_done * q_next
        x = torch.cat([s, a], -1)
        self._critic_mode(train=True)
        q1, critic_loss = self.critic_td_loss(x, target, cfg.twin_q)  # DDPG: q2 is never used nor updated
        out = self.critic_backward(critic_loss, q1, set_to_none)
        critic_opt, actor_opt = self.optimizers["critic"], self.optimizers["actor"]
        if grad_norm:  # the gradient the optimiser is about to apply
            out["critic_grad_norm"] = critic_grad_norm(nets)
        critic_opt.step()
        if actor_update:
            pi = torch.tanh(nets.actor(s))
            q = nets.q1(torch.cat([s, pi], -1))
            # alpha / mean|Q| as Python computes a float over a tensor (reciprocal, then the product),
            # so that a member's own alpha (`setting`) computes it alike
            lmbda = q.abs().mean((1, 2)).detach().reciprocal() * self.setting("alpha")
            actor_loss = -lmbda * q.mean((1, 2)) + self.setting("bc_weight") * ((pi - a) ** 2).mean((1, 2))
            actor_opt.zero_grad(set_to_none=set_to_none)
            # the actor's gradients only: autograd then skips Q1's weight gradients (GEMMs that the
            # critic optimiser's next zero_grad would drop)
            actor_loss.sum().backward(inputs=self.actor_params)
            actor_opt.step()
            out["actor_loss"] = actor_loss.detach()
            if self.targets:  # parameters and (BatchNorm) buffers follow the online nets
                self.update_targets(cfg.tau)
        return out


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: TD3Config, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    return run_identity_of(cfg, seeds, data_sha256=data_sha256)


# ------------------------------------------------------------------ training loop
METRIC_KEYS = ("critic_loss", "actor_loss", "q_mean")


def train(cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None, monitor=None, settings: dict | None = None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`.
    `evaluate` and `resume` as in `seemrl.algos.base.train_offline`; `settings`: per-member values
    of MEMBER_SETTINGS (cells of a sweep in one stack)."""
    return train_offline(TD3Trainer(cfg, seeds, data, nets, device, settings), save_checkpoint, checkpoint_dir,
                         (*METRIC_KEYS, "critic_grad_norm"), critic_param_norms, log, evaluate, resume, monitor)
