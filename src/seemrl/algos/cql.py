"""Conservative Q-Learning (CQL(H), Kumar et al. 2020), all seeds of a cell trained together.

CQL is SAC with a conservative critic: besides the TD error each critic minimises
cql_alpha * E_s[logsumexp_a Q(s, a) - Q(s, a_data)], the logsumexp estimated by importance
sampling over uniform actions and actions of the current policy at s and s'. The update follows
CORL's port of JaxCQL (the lineage of the JAX CQL the SEEM authors used): every loss of a step is
computed from the parameters at its start, then every optimiser steps. The critic-loss forward
evaluates (s, a) and all CQL actions in one call per critic, so BatchNorm sees one batch.
`docs/algorithms/cql.md` lists what is kept from each reference.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.algos.base import (CriticTrainer, OfflineConfig, OfflineNets, check_at_least_one, check_optimizer,
                               check_positive, critic_grad_norm, critic_param_norms, critic_params, critic_weight_decay,
                               load_offline_checkpoint, obs_stats, run_identity_of, save_offline_checkpoint,
                               train_offline, twin_critics)
from seemrl.training.draws import Draw, OfflineData
from seemrl.training.loop import Checkpoint, TrainResult
from seemrl.training.nets import StackedMLP, seed_generators
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import make_optimizer

CHECKPOINT_FORMAT = "seemrl.cql.v1"
# Independent random streams per seed: network initialisation (0-2, 5, 6 as in td3.py) and one
# per random input of the update step.
(STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, STREAM_NEXT_NOISE, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2,
 STREAM_ACTOR_NOISE, STREAM_CQL_RANDOM, STREAM_CQL_CURRENT, STREAM_CQL_NEXT) = range(11)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL's ReparameterizedTanhGaussian clamp
LOG_STD_MULTIPLIER_INIT, LOG_STD_OFFSET_INIT = 1.0, -1.0  # CORL / JaxCQL TanhGaussianPolicy
ACTOR_LAST_LAYER_SCALE = math.sqrt(3 * 0.01)  # variance_scaling(0.01, fan_in, uniform) / PyTorch's default bound
ALPHA_PRIME_MAX = 1e6  # clamp of exp(log_alpha') (CORL, JaxCQL, original CQL)
ATANH_CLAMP = 1.0 - 1e-6  # dataset actions of the BC log-likelihood are clamped to +-this before atanh
LOG_2PI = math.log(2 * math.pi)


@dataclass
class CQLConfig(OfflineConfig):
    """Hyperparameters of CQL(H) (defaults: the MuJoCo setting of the SEEM authors' CQL, offbench,
    where it differs from CORL's; each comment names the source)."""

    optimizer: str = "adam"  # "adam" or "sgd", for every parameter (all references: Adam)
    actor_lr: float = 1e-4  # actor learning rate (offbench 1e-4; CORL MuJoCo 3e-5; JaxCQL 3e-4)
    critic_lr: float = 3e-4  # critic learning rate (all references)
    alpha_lr: float | None = None  # entropy-temperature learning rate; None = actor_lr (all references)
    alpha_prime_lr: float | None = None  # Lagrange multiplier learning rate; None = critic_lr (all references)
    steps: int = 1_000_000  # gradient steps (CORL max_timesteps 1M)
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of actor and critics (offbench/JaxCQL 256-256; CORL 3x256)
    normalize_states: bool = True  # standardise states with the dataset mean/std (CORL normalize=True)
    reward_transform: str = "none"  # data.preparation.REWARD_TRANSFORMS ("minus1" for AntMaze)
    auto_alpha: bool = True  # tune the entropy temperature (use_automatic_entropy_tuning, all references)
    alpha_multiplier: float = 1.0  # alpha = alpha_multiplier * exp(log_alpha), or the fixed alpha without tuning
    init_log_alpha: float = 0.0  # initial log temperature (Scalar(0.0), all references)
    target_entropy: float | None = None  # entropy target of the temperature; None = -act_dim (all references)
    backup_entropy: bool = False  # subtract alpha * log pi(a'|s') in the TD target (False in all references)
    max_target_backup: bool = False  # target = max over cql_n_actions sampled a' (CORL AntMaze: True)
    cql_n_actions: int = 10  # sampled actions per proposal and state (CORL, JaxCQL; offbench 50)
    cql_alpha: float = 5.0  # weight of the CQL term (offbench/JaxCQL min_q_weight 5.0; CORL MuJoCo 10.0)
    cql_temp: float = 1.0  # logsumexp temperature (all references)
    cql_importance_sample: bool = True  # importance-sampled logsumexp (CQL(H)); False = the plain one with Q(s, a)
    cql_lagrange: bool = False  # tune cql_alpha's multiplier alpha' by dual descent (False for MuJoCo)
    cql_target_action_gap: float = 1.0  # Lagrange threshold on the CQL gap (offbench/JaxCQL 1.0; CORL AntMaze 0.8)
    init_log_alpha_prime: float = 1.0  # initial log alpha' (Scalar(1.0), CORL and JaxCQL)
    cql_clip_diff_min: float | None = None  # lower clip of logsumexp - Q(s, a) per sample; None = none (CORL AntMaze -200)
    cql_clip_diff_max: float | None = None  # upper clip of the same; None = none
    bc_steps: int = 0  # first steps with the BC actor loss alpha log pi - log pi(a_data|s) (CORL MuJoCo 0)

    RENAMED = {**OfflineConfig.RENAMED, "policy_lr": ("actor_lr",)}
    MEMBER_SETTINGS = ("cql_alpha",)  # may differ between cells of one stack (a sweep of the CQL weight)

    def __post_init__(self):
        check_optimizer(self.optimizer)
        check_at_least_one(self, ("cql_n_actions",))
        if self.bc_steps < 0:
            raise ValueError(f"bc_steps must be >= 0, got {self.bc_steps}")
        check_positive(self, ("actor_lr", "critic_lr", "alpha_lr", "alpha_prime_lr"))
        if not self.cql_alpha >= 0:
            raise ValueError(f"cql_alpha must be >= 0, got {self.cql_alpha}")
        if not self.cql_temp > 0:
            raise ValueError(f"cql_temp must be > 0, got {self.cql_temp}")
        if not self.alpha_multiplier >= 0:
            raise ValueError(f"alpha_multiplier must be >= 0, got {self.alpha_multiplier}")
        lo, hi = self.cql_clip_diff_min, self.cql_clip_diff_max
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"cql_clip_diff_min must be < cql_clip_diff_max, got {lo} and {hi}")
        super().__post_init__()

    @property
    def twin_q(self) -> bool:
        """CQL always has twin critics (what the SEEM analysis reads from a checkpoint's config)."""
        return True


Config = CQLConfig


# ------------------------------------------------------------------ networks
class TanhGaussianActor(nn.Module):
    """S tanh-squashed Gaussian policies: one StackedMLP head gives mean and raw log-std;
    log_std = clamp(multiplier * raw + offset, LOG_STD_MIN, LOG_STD_MAX) with a trainable
    multiplier and offset per seed (CORL's TanhGaussianPolicy)."""

    def __init__(self, seeds: list[int], obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.act_dim = act_dim
        self.mlp = StackedMLP(seed_generators(seeds, STREAM_ACTOR), obs_dim, 2 * act_dim, hidden)
        with torch.no_grad():  # small output layer (offbench/JaxCQL last_layer_init=0.01), zero bias
            self.mlp.weights[-1].mul_(ACTOR_LAST_LAYER_SCALE)
            self.mlp.biases[-1].zero_()
        S = len(seeds)
        self.log_std_multiplier = nn.Parameter(torch.full((S, 1, 1), LOG_STD_MULTIPLIER_INIT))
        self.log_std_offset = nn.Parameter(torch.full((S, 1, 1), LOG_STD_OFFSET_INIT))

    @property
    def dims(self) -> list[int]:
        return self.mlp.dims

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std [S, B, act] of the pre-tanh Gaussian for states [S, B, obs]."""
        mean, raw = self.mlp(obs).chunk(2, dim=-1)
        log_std = (self.log_std_multiplier * raw + self.log_std_offset).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


def squashed_log_prob(pre_tanh: torch.Tensor, eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(pre_tanh)) for pre_tanh = mean + exp(log_std) * eps, summed over the last dim:
    the Gaussian log-density minus log|d tanh / dx| = 2 (log 2 - x - softplus(-2x)) (stable form,
    as torch's TanhTransform)."""
    gauss = (-0.5 * eps.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)
    return gauss - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)


def sample_actions(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions tanh(mean + std * eps) and their log-probabilities (eps may carry extra sample
    dims between the batch and the action dim: mean [S, B, act] with eps [S, B, n, act])."""
    if eps.dim() == mean.dim() + 1:
        mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
    pre_tanh = mean + log_std.exp() * eps
    return torch.tanh(pre_tanh), squashed_log_prob(pre_tanh, eps, log_std)


def action_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(action | s) [S, B] of given actions in [-1, 1] (clamped to +-ATANH_CLAMP first)."""
    pre_tanh = torch.atanh(action.clamp(-ATANH_CLAMP, ATANH_CLAMP))
    eps = (pre_tanh - mean) / log_std.exp()
    return squashed_log_prob(pre_tanh, eps, log_std)


class Temperatures(nn.Module):
    """Per-seed log entropy temperature and log Lagrange multiplier of the CQL term, [S] each."""

    def __init__(self, n_seeds: int, init_log_alpha: float, init_log_alpha_prime: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_seeds,), float(init_log_alpha)))
        self.log_alpha_prime = nn.Parameter(torch.full((n_seeds,), float(init_log_alpha_prime)))


@dataclass
class CQLNets(OfflineNets):
    """Actor, twin critics and temperatures of S seeds. The SEEM interface: `q1` (a StackedMLP
    over [normalised state, action]), `q2`, `actor`, `normalize`, `policy` (deterministic tanh(mean))."""

    actor: TanhGaussianActor
    q1: StackedMLP
    q2: StackedMLP
    temperatures: Temperatures
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    MODULES = ("actor", "q1", "q2", "temperatures")

    def policy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Deterministic actions tanh(mean) [S, B, act] in [-1, 1] for normalised states [S, B, obs]."""
        return torch.tanh(self.actor(obs_n)[0])


def build_nets(cfg: CQLConfig, seeds: list[int], obs_dim: int, act_dim: int,
               obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> CQLNets:
    """Initial networks; seed s's weights come from its own generators (alone or among others)."""
    actor = TanhGaussianActor(seeds, obs_dim, act_dim, cfg.hidden)
    q1, q2 = twin_critics(cfg.critic, seeds, obs_dim + act_dim, cfg.hidden, CRITIC_STREAMS)
    temps = Temperatures(len(seeds), cfg.init_log_alpha, cfg.init_log_alpha_prime)
    return CQLNets(actor, q1, q2, temps, *obs_stats(obs_dim, obs_mean, obs_std))


# ------------------------------------------------------------------ data
# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: CQLNets, cfg: CQLConfig, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    save_offline_checkpoint(path, CHECKPOINT_FORMAT, nets, cfg, seeds, step, diverged_step,
                            obs_dim=nets.actor.dims[0], act_dim=nets.actor.act_dim)


def load_checkpoint(path: str | Path) -> Checkpoint:
    return load_offline_checkpoint(path, CHECKPOINT_FORMAT, CQLConfig, build_nets, CQLNets.MODULES)


# ------------------------------------------------------------------ the update step
class CQLTrainer(CriticTrainer):
    """CQL's update for all seeds; the engine (`seemrl.training.trainer.StackedTrainer`) does the rest.

    Step kinds: "bc" (the first `bc_steps` steps: BC actor loss) and "rl" (the SAC actor loss).
    Critics with dropout draw their masks from CPU generators inside the forward pass, so they
    run eagerly (`CriticTrainer`).
    """

    def __init__(self, cfg: CQLConfig, seeds: list[int], data: OfflineData, nets: CQLNets, device,
                 settings: dict | None = None):
        self.act_dim = nets.actor.act_dim
        super().__init__(cfg, seeds, data, nets, device, settings=settings)
        self.target_entropy = -float(self.act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.networks = {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2, "temperatures": nets.temperatures}
        self.targets = {name: copy.deepcopy(self.networks[name]).eval() for name in ("q1", "q2")}
        for m in self.targets.values():
            m.requires_grad_(False)
        opt = lambda params, lr, **kw: make_optimizer(cfg.optimizer, params, lr, self.device, **kw)
        temps = nets.temperatures
        self.optimizers = {
            "actor": opt(nets.actor.parameters(), cfg.actor_lr),
            # weight decay is the optimiser's (coupled) L2 penalty on the critics only
            "critic": opt(critic_params(nets), cfg.critic_lr, weight_decay=critic_weight_decay(cfg.critic)),
        }
        if cfg.auto_alpha:
            self.optimizers["alpha"] = opt([temps.log_alpha], cfg.alpha_lr or cfg.actor_lr)
        if cfg.cql_lagrange:
            self.optimizers["alpha_prime"] = opt([temps.log_alpha_prime], cfg.alpha_prime_lr or cfg.critic_lr)
        self.finish_setup()
        self.join_critics()

    def _q_min(self, x: torch.Tensor, q1, q2, target: bool = False) -> torch.Tensor:
        """min(Q1, Q2)(x) [S, N, 1]: in one forward pass where the critics are joined."""
        if self.twin is not None:
            return self.twin_forward(x, target=target).amin(0)
        return torch.minimum(q1(x), q2(x))

    @property
    def draws(self) -> list[Draw]:
        cfg, b, n, A = self.cfg, self.cfg.batch_size, self.cfg.cql_n_actions, self.data.action.shape[1]
        return [self.data.index_draw("idx", b, STREAM_BATCH),
                # a' ~ pi(s') of the TD target: n of them per state for the max backup
                Draw("next_noise", "normal", (b, n, A) if cfg.max_target_backup else (b, A), STREAM_NEXT_NOISE),
                Draw("actor_noise", "normal", (b, A), STREAM_ACTOR_NOISE),  # pi(s) of actor and alpha losses
                Draw("cql_random", "uniform", (b, n, A), STREAM_CQL_RANDOM),  # U[0,1) -> U[-1,1) actions
                Draw("cql_current_noise", "normal", (b, n, A), STREAM_CQL_CURRENT),  # CQL actions ~ pi(s)
                Draw("cql_next_noise", "normal", (b, n, A), STREAM_CQL_NEXT)]  # CQL actions ~ pi(s')

    def step_kinds(self) -> list[str]:
        return ["bc", "rl"] if self.cfg.bc_steps > 0 else ["rl"]

    def step_kind(self, it: int) -> str:
        return "bc" if it < self.cfg.bc_steps else "rl"  # step it + 1 <= bc_steps (CORL: total_it <= bc_steps)

    def _update(self, draws: dict[str, torch.Tensor], kind: str, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, d = self.cfg, self.nets, self.data
        idx = draws["idx"]
        s, a, r, s2, not_done = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        S, B, n, A = idx.shape[0], idx.shape[1], cfg.cql_n_actions, self.act_dim
        temps = nets.temperatures
        alpha = (temps.log_alpha.exp() * cfg.alpha_multiplier).detach() if cfg.auto_alpha else \
            torch.full((S,), cfg.alpha_multiplier, device=self.device)
        q1_t, q2_t = self.targets["q1"], self.targets["q2"]
        # BatchNorm and dropout act (batch statistics, masks) only in the critic-loss forward;
        # bootstrap targets and the actor's Q use eval mode. No-ops for other critics.
        self._critic_mode(train=False)

        # ---- the policy at s' (no gradient): TD-target actions and CQL actions
        with torch.no_grad():
            mean2, log_std2 = nets.actor(s2)
            a2, logp2 = sample_actions(mean2, log_std2, draws["next_noise"])  # [S,B,(n,)A], [S,B(,n)]
            if cfg.max_target_backup:
                x2 = torch.cat([s2.unsqueeze(2).expand(S, B, n, s2.shape[-1]), a2], -1).reshape(S, B * n, -1)
                q_next = self._q_min(x2, q1_t, q2_t, target=True).reshape(S, B, n)
                q_next, best = q_next.max(-1)
                logp2 = logp2.gather(-1, best.unsqueeze(-1)).squeeze(-1)
            else:
                x2 = torch.cat([s2, a2], -1)
                q_next = self._q_min(x2, q1_t, q2_t, target=True).squeeze(-1)
            if cfg.backup_entropy:
                q_next = q_next - alpha[:, None] * logp2
            td_target = r.squeeze(-1) + cfg.gamma * not_done.squeeze(-1) * q_next  # [S, B]
            cql_next, cql_next_logp = sample_actions(mean2, log_std2, draws["cql_next_noise"])  # [S,B,n,A]

        # ---- the policy at s (with gradient for the actor and temperature losses)
        mean, log_std = nets.actor(s)
        pi, logp = sample_actions(mean, log_std, draws["actor_noise"])  # [S, B, A], [S, B]
        with torch.no_grad():
            cql_cur, cql_cur_logp = sample_actions(mean.detach(), log_std.detach(), draws["cql_current_noise"])
        if kind == "bc":  # CORL's warm start: maximise the likelihood of the dataset actions
            actor_loss = (alpha[:, None] * logp - action_log_prob(mean, log_std, a)).mean(-1)
        else:
            q_params = critic_params(nets) if self.twin is None else list(self.twin.joined.parameters())
            for p in q_params:  # backpropagate through the critics, skip their weight gradients
                p.requires_grad_(False)
            xp = torch.cat([s, pi], -1)
            q_pi = self._q_min(xp, nets.q1, nets.q2).squeeze(-1)
            for p in q_params:
                p.requires_grad_(True)
            actor_loss = (alpha[:, None] * logp - q_pi).mean(-1)
        losses = actor_loss.sum()
        if cfg.auto_alpha:
            alpha_loss = -temps.log_alpha * (logp.detach() + self.target_entropy).mean(-1)
            losses = losses + alpha_loss.sum()

        # ---- critics: TD error and the CQL term, (s, a) and all 3n CQL actions in one forward
        uniform = draws["cql_random"] * 2.0 - 1.0  # [S, B, n, A] in [-1, 1)
        s_rep = s.unsqueeze(2).expand(S, B, n, s.shape[-1])
        ood = torch.cat([uniform, cql_cur, cql_next], 2)  # [S, B, 3n, A]
        s_ood = torch.cat([s_rep, s_rep, s_rep], 2)
        x = torch.cat([torch.cat([s, a], -1), torch.cat([s_ood, ood], -1).reshape(S, B * 3 * n, -1)], 1)
        self._critic_mode(train=True)
        if self.twin is not None:  # both critics in one forward pass (`join_critics`)
            q1_all, q2_all = self.twin_forward(x).squeeze(-1)  # [S, B * (1 + 3n)] each
        else:
            q1_all, q2_all = nets.q1(x).squeeze(-1), nets.q2(x).squeeze(-1)
        self._critic_mode(train=False)
        if cfg.cql_importance_sample:
            log_density = torch.cat([torch.full_like(cql_cur_logp, A * math.log(0.5)), cql_cur_logp, cql_next_logp], 2)
        td_losses, cql_diffs = [], []
        for q_all in (q1_all, q2_all):
            q_pred, q_ood = q_all[:, :B], q_all[:, B:].reshape(S, B, 3 * n)
            # the references concatenate [random, next, current]; logsumexp does not care about the order
            cat = q_ood - log_density if cfg.cql_importance_sample else torch.cat([q_ood, q_pred.unsqueeze(-1)], -1)
            lse = torch.logsumexp(cat / cfg.cql_temp, -1) * cfg.cql_temp
            diff = lse - q_pred
            if cfg.cql_clip_diff_min is not None or cfg.cql_clip_diff_max is not None:
                diff = diff.clamp(cfg.cql_clip_diff_min, cfg.cql_clip_diff_max)
            td_losses.append(((q_pred - td_target) ** 2).mean(-1))
            cql_diffs.append(diff.mean(-1))  # [S]
        out, cql_alpha = {}, self.setting("cql_alpha")
        if cfg.cql_lagrange:
            alpha_prime = temps.log_alpha_prime.exp().clamp(0.0, ALPHA_PRIME_MAX)  # [S]
            gaps = [c - cfg.cql_target_action_gap for c in cql_diffs]
            cql_loss = alpha_prime.detach() * cql_alpha * (gaps[0] + gaps[1])
            alpha_prime_loss = -0.5 * alpha_prime * cql_alpha * (gaps[0].detach() + gaps[1].detach())
            losses = losses + alpha_prime_loss.sum()
            out["alpha_prime"] = alpha_prime.detach()
        else:
            cql_loss = cql_alpha * (cql_diffs[0] + cql_diffs[1])
        td_loss = td_losses[0] + td_losses[1]
        critic_loss = td_loss + cql_loss
        losses = losses + critic_loss.sum()  # sums of per-seed losses: per-seed gradients

        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)
        self.backward(losses, set_to_none)  # each loss reaches only its own parameters (the others are detached)
        self.record_nonfinite(critic_loss)
        out.update(critic_loss=critic_loss.detach(), td_loss=td_loss.detach(), cql_loss=cql_loss.detach(),
                   actor_loss=actor_loss.detach(), alpha=alpha, q_mean=q1_all[:, :B].detach().mean(-1),
                   entropy=-logp.detach().mean(-1))
        if grad_norm:  # the gradient the optimiser is about to apply
            out["critic_grad_norm"] = critic_grad_norm(nets)
        for o in self.optimizers.values():
            o.step()
        self.update_targets(cfg.tau)  # parameters and (BatchNorm) buffers follow the online critics
        return out


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: CQLConfig, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    return run_identity_of(cfg, seeds, data_sha256=data_sha256)


# ------------------------------------------------------------------ training loop
METRIC_KEYS = ("critic_loss", "td_loss", "cql_loss", "actor_loss", "alpha", "q_mean", "entropy")


def train(cfg: CQLConfig, seeds: list[int], data: OfflineData, nets: CQLNets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None, monitor=None, settings: dict | None = None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`.
    `evaluate` and `resume` as in `seemrl.algos.base.train_offline`; `settings`: per-member values
    of MEMBER_SETTINGS (cells of a sweep in one stack)."""
    keys = (*METRIC_KEYS, *(("alpha_prime",) if cfg.cql_lagrange else ()), "critic_grad_norm")
    return train_offline(CQLTrainer(cfg, seeds, data, nets, device, settings), save_checkpoint, checkpoint_dir, keys,
                         critic_param_norms, log, evaluate, resume, monitor)
