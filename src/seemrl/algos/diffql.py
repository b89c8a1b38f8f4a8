"""Diffusion-QL with the SEEM authors' settings (their EDP-based fork), all seeds of a cell together.

The paper's AntMaze results (Table 1) come from the authors' JAX fork of EDP, which is
Diffusion-QL with EDP's speed-ups: a noise-prediction policy (T = 1000, linear betas) sampled
with a 15-step DPM-Solver, an actor loss of 0.5 x the diffusion loss plus 2.0 x -Q(s, a0_hat) /
mean|Q| with EDP's one-step action a0_hat, twin Mish critics with a max-Q backup, an EMA actor,
cosine learning rates, and OPER-R for the actor batch on the larger mazes. Everything is a
config value, so the original Diffusion-QL (T = 5, DDPM) is one too.
`docs/algorithms/diffql.md` gives every choice and its source.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from seemrl.algos.base import (CriticTrainer, OfflineConfig, OfflineNets, check_at_least_one, check_one_of,
                               check_positive, critic_grad_norm, critic_param_norms, critic_params, critic_weight_decay,
                               load_offline_checkpoint, obs_stats, run_identity_of, save_offline_checkpoint,
                               train_offline, twin_critics)
from seemrl.training.draws import Draw, OfflineData
from seemrl.training.loop import Checkpoint, TrainResult
from seemrl.training.nets import (ACTIVATIONS, Compiled, StackedMLP, enable_fused_pointwise, per_seed_norm,
                                  seed_generators, stacked_affine)
from seemrl.training.resume import ResumeDir
from seemrl.training.trainer import clip_grad_norm_per_seed, cosine_lr, make_optimizer, set_lr

CHECKPOINT_FORMAT = "seemrl.diffql.v1"
# Independent random streams per seed: network initialisation, then the update's draws.
(STREAM_ACTOR_TIME, STREAM_ACTOR_NET, STREAM_Q1, STREAM_Q2, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2) = range(6)
(STREAM_BATCH, STREAM_POLICY_BATCH, STREAM_DIFF_T, STREAM_DIFF_NOISE, STREAM_HEAD, STREAM_BACKUP_XT,
 STREAM_BACKUP_STEPS) = range(20, 27)
STREAM_EVAL = 40  # the evaluation policy's CPU generators (with eval_seed)
CRITIC_STREAMS = ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))  # (init, dropout) of Q1, Q2

SAMPLERS = ("dpm_solver", "ddpm")
BACKUP_DTYPES = ("float32", "bfloat16")
BETA_SCHEDULES = ("linear", "vp")
GUIDE_Q = ("random", "q1", "min")
LR_DECAY = ("both", "actor", "none")


@dataclass
class DiffQLConfig(OfflineConfig):
    """Hyperparameters of Diffusion-QL (defaults: the SEEM authors' AntMaze setting of Table 1)."""

    steps: int = 1_000_000  # gradient steps (paper: 1M); also the cosine decay horizon
    actor_lr: float = 3e-4  # Adam learning rate of the actor at step 0
    critic_lr: float = 3e-4  # Adam learning rate of the critics at step 0
    lr_decay: str = "both"  # cosine decay to 0: "both" (Diffusion-QL), "actor" (the authors' JAX fork), "none"
    tau: float = 0.005  # EMA rate of the target critics (every step) and of the EMA actor
    hidden: tuple[int, ...] = (256, 256, 256)  # hidden widths of the noise network and of each critic
    activation: str = "mish"  # activation of the noise network, time MLP and critics (Diffusion-QL, EDP: Mish)
    time_embed: int = 16  # sinusoidal time-embedding size (then Linear 2x -> Mish -> Linear back)
    diffusion_steps: int = 1000  # T of the diffusion model (authors: 1000; original Diffusion-QL: 5)
    beta_schedule: str = "linear"  # "linear" beta 1e-4..0.02 (DDPM/EDP) or "vp" (Diffusion-QL's T=5 schedule)
    sampler: str = "dpm_solver"  # "dpm_solver" (authors) or "ddpm" (original Diffusion-QL: all T steps)
    sample_steps: int = 15  # DPM-Solver function evaluations; for "ddpm" must equal diffusion_steps
    dpm_order: int = 3  # highest order of the singlestep DPM-Solver (authors: 3, "DPM-Solver-fast")
    bc_weight: float = 0.5  # weight of the diffusion (behaviour-cloning) loss in the actor loss
    alpha: float = 2.0  # weight of -Q(s, a0_hat) / mean|Q| in the actor loss (eta)
    guide_q: str = "random"  # critic head of the actor's Q term: "random" per step (EDP, Diffusion-QL), "q1", "min"
    max_q_backup: bool = True  # max over backup_samples actions at s' per head, then min over heads
    backup_samples: int = 10  # actions sampled at s' for the max-Q backup
    backup_dtype: str = "float32"  # the max-Q backup (sampler, target critics): "float32" (TF32 matmuls on CUDA) or "bfloat16" (autocast, any device; a speed trial: changes results beyond rounding)
    actor_ema_every: int = 5  # the EMA actor updates at step numbers n % actor_ema_every == 0 ...
    actor_ema_start: int = 1000  # ... and n > actor_ema_start (EDP: 5 and 1000)
    grad_clip: float = 0.0  # per-seed gradient-norm clip of actor, Q1 and Q2 (each); 0 = none
    reward_transform: str = "x10"  # data.preparation.REWARD_TRANSFORMS: "x10" (authors' AntMaze), "diffql", ...
    action_clip: float = 0.999  # dataset actions are clipped to +-action_clip when read
    oper_r: bool = False  # OPER-R: actor batch drawn by episode return (base 0); critic batch uniform
    normalize_states: bool = False  # standardise states with the dataset mean/std (authors: off)
    eval_samples: int = 50  # actions sampled per state at evaluation
    eval_select: str = "softmax"  # pick among them: "softmax" over min(Q1, Q2) of the targets, or "argmax"
    eval_actor: str = "online"  # actor that samples at evaluation: "online" (both references) or "ema"
    checkpoint_every: int = 50_000  # steps between checkpoints (step 0 and the last included)
    eval_episodes: int = 10  # episodes per seed and evaluation (authors' AntMaze: 100 every 50k steps)
    eval_seed: int = 0  # episode resets and the evaluation policy's sampling noise derive from it

    RENAMED = {**OfflineConfig.RENAMED, "lr": ("actor_lr", "critic_lr")}
    # may differ between cells of one stack: e.g. the authors' per-maze gradient clips and OPER-R (Table 1);
    # a member draws OPER-R's actor batch where its cell's table carries the sampling probabilities
    MEMBER_SETTINGS = ("grad_clip", "alpha", "bc_weight", "oper_r")
    LATER_SETTINGS = {**OfflineConfig.LATER_SETTINGS, "backup_dtype": "float32"}

    def __post_init__(self):
        choices = {"lr_decay": LR_DECAY, "activation": tuple(ACTIVATIONS), "beta_schedule": BETA_SCHEDULES,
                   "sampler": SAMPLERS, "guide_q": GUIDE_Q, "eval_select": ("softmax", "argmax"),
                   "eval_actor": ("online", "ema"), "backup_dtype": BACKUP_DTYPES}
        for name, allowed in choices.items():
            check_one_of(self, name, allowed)
        check_at_least_one(self, ("sample_steps", "backup_samples", "actor_ema_every", "eval_samples"))
        if self.diffusion_steps < 2:
            raise ValueError(f"diffusion_steps must be >= 2, got {self.diffusion_steps}")
        if self.time_embed < 2 or self.time_embed % 2:
            raise ValueError(f"time_embed must be an even number >= 2, got {self.time_embed}")
        if self.dpm_order not in (1, 2, 3):
            raise ValueError(f"dpm_order must be 1, 2 or 3, got {self.dpm_order}")
        if self.sampler == "ddpm" and self.sample_steps != self.diffusion_steps:
            raise ValueError(f"sample_steps must equal diffusion_steps ({self.diffusion_steps}) with the ddpm "
                             f"sampler (it runs every step of the chain), got {self.sample_steps}")
        check_positive(self, ("actor_lr", "critic_lr"))
        for name in ("bc_weight", "alpha", "grad_clip", "actor_ema_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.action_clip <= 1:
            raise ValueError(f"action_clip must be in (0, 1], got {self.action_clip}")
        super().__post_init__()


Config = DiffQLConfig


# ------------------------------------------------------------------ diffusion schedule and samplers
def beta_schedule(name: str, T: int) -> np.ndarray:
    """Betas (float64). "linear": linspace(1e-4, 0.02, T) (DDPM; EDP and the SEEM fork use it
    unscaled for any T); "vp": Diffusion-QL's discretised VP-SDE (beta_min 0.1, beta_max 10)."""
    if name == "linear":
        return np.linspace(1e-4, 2e-2, T, dtype=np.float64)
    if name == "vp":
        t = np.arange(1, T + 1, dtype=np.float64)
        b_min, b_max = 0.1, 10.0
        return 1.0 - np.exp(-b_min / T - 0.5 * (b_max - b_min) * (2 * t - 1) / T ** 2)
    raise ValueError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}, got {name!r}")


class DiffusionSchedule:
    """The variance-preserving forward process q(a_t | a_0) = N(sqrt(abar_t) a_0, (1 - abar_t) I),
    t = 0..T-1, as float64 arrays (host) and float32 tensors (indexed by t on the device)."""

    def __init__(self, name: str, T: int, device="cpu"):
        self.name, self.T = name, T
        betas = beta_schedule(name, T)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.betas, self.abar = betas, abar
        self.sqrt_recip_abar = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_abar = np.sqrt(1.0 / abar - 1.0)
        self.post_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.post_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        self.post_std = np.sqrt(betas * (1.0 - abar_prev) / (1.0 - abar))  # 0 at t = 0 (no noise there)
        self.to(device)

    def to(self, device) -> "DiffusionSchedule":
        f = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
        self.sqrt_abar_t = f(np.sqrt(self.abar))
        self.sqrt_1m_abar_t = f(np.sqrt(1.0 - self.abar))
        self.sqrt_recip_abar_t = f(self.sqrt_recip_abar)
        self.sqrt_recipm1_abar_t = f(self.sqrt_recipm1_abar)
        return self


@dataclass(frozen=True)
class ModelEval:
    """One evaluation of the noise network in the DPM-Solver: the model's time input (discrete
    scale, fractional in general) and the coefficients that clip its output so that the implied
    x0 = clip_x * x - clip_e * eps lies in [-1, 1] (taken at the integer step floor(t_in))."""

    t_in: float
    clip_x: float
    clip_e: float


@dataclass(frozen=True)
class DPMStage:
    """One singlestep DPM-Solver step of order 1, 2 or 3 (noise-prediction form), from s to t:
      order 1: x_t = A x - B m_s
      order 2: x_1 = A1 x - B1 m_s;  x_t = A x - B m_s - C (m_1 - m_s)
      order 3: x_1 = A1 x - B1 m_s;  x_2 = A2 x - B2 m_s - C2 (m_1 - m_s);  x_t = A x - B m_s - C (m_2 - m_s)
    with m_i the (clipped) noise predictions at the stage's evaluation times."""

    order: int
    evals: tuple[ModelEval, ...]
    coef: dict


class _DiscreteVP:
    """DPM-Solver's NoiseScheduleVP('discrete'): log alpha(t) piecewise linear through
    t_n = (n + 1) / T, log alpha(t_n) = log(abar_n) / 2; float64 on the host."""

    def __init__(self, abar: np.ndarray):
        self.N = len(abar)
        self.t_array = np.linspace(0.0, 1.0, self.N + 1)[1:]
        self.log_alpha_array = 0.5 * np.log(abar)

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.t_array, self.log_alpha_array))

    def sigma(self, t: float) -> float:
        return math.sqrt(1.0 - math.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        la = self.log_alpha(t)
        return la - 0.5 * math.log(1.0 - math.exp(2.0 * la))

    def inverse_lambda(self, lam: float) -> float:
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return float(np.interp(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1]))


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of DPM-Solver-fast's singlestep stages for `steps` function evaluations (Lu et al.)."""
    if order == 3:
        K = steps // 3 + 1
        return {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[steps % 3]
    if order == 2:
        return [2] * (steps // 2) if steps % 2 == 0 else [2] * (steps // 2) + [1]
    return [1] * steps


def dpm_solver_plan(schedule: DiffusionSchedule, steps: int, order: int) -> list[DPMStage]:
    """The stages of singlestep DPM-Solver (`steps` evaluations, orders <= `order`, uniform time
    steps from t = 1 to t = 1/T), all coefficients precomputed on the host in float64."""
    ns = _DiscreteVP(schedule.abar)
    N = ns.N
    t_T, t_0 = 1.0, 1.0 / N
    orders = [o for o in singlestep_orders(steps, order) if o > 0]
    grid = np.linspace(t_T, t_0, steps + 1)
    outer = grid[np.cumsum([0] + orders)]

    def model_eval(t: float) -> ModelEval:
        t_in = (t - 1.0 / N) * N
        n = int(min(max(math.floor(t_in + 1e-6), 0), N - 1))
        return ModelEval(t_in, float(schedule.sqrt_recip_abar[n]), float(schedule.sqrt_recipm1_abar[n]))

    stages = []
    for k, o in enumerate(orders):
        s, t = float(outer[k]), float(outer[k + 1])
        lam_inner = [ns.lam(float(u)) for u in np.linspace(s, t, o + 1)]
        lam_s, lam_t = ns.lam(s), ns.lam(t)
        h = lam_t - lam_s
        la_s, la_t, sig_t = ns.log_alpha(s), ns.log_alpha(t), ns.sigma(t)
        A, B = math.exp(la_t - la_s), sig_t * math.expm1(h)
        if o == 1:
            stages.append(DPMStage(1, (model_eval(s),), {"A": A, "B": B}))
            continue
        r1 = (lam_inner[1] - lam_inner[0]) / h
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        A1, B1 = math.exp(ns.log_alpha(s1) - la_s), ns.sigma(s1) * math.expm1(r1 * h)
        if o == 2:
            C = (0.5 / r1) * sig_t * math.expm1(h)
            stages.append(DPMStage(2, (model_eval(s), model_eval(s1)),
                                   {"A1": A1, "B1": B1, "A": A, "B": B, "C": C}))
            continue
        r2 = (lam_inner[2] - lam_inner[0]) / h
        s2 = ns.inverse_lambda(lam_s + r2 * h)
        sig_s2 = ns.sigma(s2)
        A2, B2 = math.exp(ns.log_alpha(s2) - la_s), sig_s2 * math.expm1(r2 * h)
        C2 = (r2 / r1) * sig_s2 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
        C = (1.0 / r2) * sig_t * (math.expm1(h) / h - 1.0)
        stages.append(DPMStage(3, (model_eval(s), model_eval(s1), model_eval(s2)),
                               {"A1": A1, "B1": B1, "A2": A2, "B2": B2, "C2": C2, "A": A, "B": B, "C": C}))
    return stages


EpsFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x [S, M, act], model time input) -> noise


def dpm_solver_sample(eps_fn: EpsFn, x: torch.Tensor, plan: Sequence[DPMStage],
                      noise_clip: bool = True) -> torch.Tensor:
    """Solve the diffusion ODE from x = x_T by singlestep DPM-Solver (`dpm_solver_plan`); with
    `noise_clip` each noise prediction is clipped as the authors' model wrapper does."""

    def m(x_in: torch.Tensor, ev: ModelEval) -> torch.Tensor:
        eps = eps_fn(x_in, ev.t_in)
        if not noise_clip:
            return eps
        scaled = ev.clip_x * x_in
        lo, hi = (scaled - 1.0) / ev.clip_e, (scaled + 1.0) / ev.clip_e
        return torch.minimum(torch.maximum(eps, lo), hi)

    for st in plan:
        c = st.coef
        m_s = m(x, st.evals[0])
        if st.order == 1:
            x = c["A"] * x - c["B"] * m_s
        elif st.order == 2:
            m_1 = m(c["A1"] * x - c["B1"] * m_s, st.evals[1])
            x = c["A"] * x - c["B"] * m_s - c["C"] * (m_1 - m_s)
        else:
            m_1 = m(c["A1"] * x - c["B1"] * m_s, st.evals[1])
            m_2 = m(c["A2"] * x - c["B2"] * m_s - c["C2"] * (m_1 - m_s), st.evals[2])
            x = c["A"] * x - c["B"] * m_s - c["C"] * (m_2 - m_s)
    return x


def ddpm_sample(eps_fn: EpsFn, x: torch.Tensor, step_noise: Sequence[torch.Tensor],
                schedule: DiffusionSchedule) -> torch.Tensor:
    """Ancestral sampling through all T steps from x = x_T, the x0 prediction clipped to [-1, 1]
    (Diffusion-QL); step_noise[k] is the noise of step t = T - 1 - k (T - 1 of them)."""
    sched = schedule
    for k, t in enumerate(range(sched.T - 1, -1, -1)):
        eps = eps_fn(x, float(t))
        x0 = (float(sched.sqrt_recip_abar[t]) * x - float(sched.sqrt_recipm1_abar[t]) * eps).clamp(-1.0, 1.0)
        x = float(sched.post_coef1[t]) * x0 + float(sched.post_coef2[t]) * x
        if t > 0:
            x = x + float(sched.post_std[t]) * step_noise[k]
    return x


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """EDP's sinusoidal embedding of (possibly fractional) time steps t [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class DiffusionActor(nn.Module):
    """Noise prediction eps(a_t, t, s) for S seeds: StackedMLP over concat(a_t, time MLP(sinusoidal
    (t)), s). Inputs [S, M, act], [S, M] (float time steps), [S, M, obs]."""

    def __init__(self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int],
                 time_embed: int, activation: str):
        super().__init__()
        self.time_embed, self.obs_dim, self.act_dim = time_embed, obs_dim, act_dim
        self.time_mlp = StackedMLP(seed_generators(seeds, STREAM_ACTOR_TIME), time_embed, time_embed,
                                   (2 * time_embed,), activation=activation)
        self.net = StackedMLP(seed_generators(seeds, STREAM_ACTOR_NET), act_dim + time_embed + obs_dim, act_dim,
                              hidden, activation=activation)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_embed))
        return self.net(torch.cat([x, temb, s], -1))

    # The sampler evaluates eps at a few fixed times for all rows, with the same states: the first
    # layer's state part (and bias) is computed once, its time part once for all the sampler's
    # times (one small batch through the time MLP), instead of concatenating [x, temb, s] for
    # every row at every evaluation. Same function.
    def state_projection(self, s: torch.Tensor) -> torch.Tensor:
        """The first layer's state term plus bias, [S, M, hidden], for `sampling_eps`."""
        w = self.net.weights[0][:, self.act_dim + self.time_embed:]
        return stacked_affine(self.net.biases[0], s, w)

    def time_projection(self, times: torch.Tensor) -> torch.Tensor:
        """The first layer's time term at each of `times` [K], [S, K, hidden], for `sampling_eps`."""
        A, E, w = self.act_dim, self.time_embed, self.net.weights[0]
        temb = self.time_mlp(sinusoidal_embedding(times.expand(w.shape[0], -1), E))  # [S, K, E]
        return torch.bmm(temb, w[:, A:A + E])

    def sampling_eps(self, x: torch.Tensor, t_proj: torch.Tensor, s_proj: torch.Tensor) -> torch.Tensor:
        """eps(x, t, s) for one time t shared by all rows, given its `time_projection` [S, 1,
        hidden] and `state_projection(s)`."""
        w = self.net.weights[0][:, :self.act_dim]
        if torch.compiler.is_compiling():
            # the full-size first-layer term joins the activation's fused kernel; baddbmm would
            # first copy it into its output (a [S, B*n, hidden] device copy per solver evaluation)
            h = (s_proj + t_proj) + torch.bmm(x, w)
        else:
            h = stacked_affine(s_proj + t_proj, x, w)
        return self.net.forward_from(h, 0)


# ------------------------------------------------------------------ networks
def eval_generators(seeds: Sequence[int], eval_seed: int, step: int | None = None) -> list[torch.Generator]:
    """Per-seed CPU generators of the evaluation policy's noise, from (eval_seed, seed) only, or
    with `step` from (eval_seed, seed, step): the training loop's evaluation after step t draws the
    same noise whichever evaluations came before it (`DiffQLTrainer.start_evaluation`)."""
    key = lambda s: [int(eval_seed), int(s), STREAM_EVAL] + ([] if step is None else [int(step)])
    return [torch.Generator().manual_seed(int(np.random.SeedSequence(key(s)).generate_state(1)[0])) for s in seeds]


@dataclass
class DiffQLNets(OfflineNets):
    """Diffusion actor (online and EMA), twin critics and their EMA targets, for S seeds."""

    cfg: DiffQLConfig
    actor: DiffusionActor
    actor_ema: DiffusionActor
    q1: StackedMLP
    q2: StackedMLP
    q1_target: StackedMLP
    q2_target: StackedMLP
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    schedule: DiffusionSchedule
    plan: list  # DPM-Solver stages (empty for the ddpm sampler)
    eval_gens: list  # per-seed CPU generators of the evaluation policy
    # the sampler's model times per device, made outside any CUDA-graph capture (a warm-up step
    # always comes first): a host-to-device copy can't be captured
    times_on: dict = field(default_factory=dict, repr=False, compare=False)

    MODULES = ("actor", "actor_ema", "q1", "q2", "q1_target", "q2_target")
    # the sampler reads an actor and the target critics, and draws from its own generators; it acts
    # on the nets' device
    POLICY_MODULES = ("actor", "actor_ema", "q1_target", "q2_target")
    POLICY_ON_HOST = False

    def to(self, device) -> "DiffQLNets":
        super().to(device)
        self.schedule.to(device)
        return self

    # -------------------------------------------------------------- sampling
    @property
    def sampler_steps_with_noise(self) -> int:
        """Per-step noises the sampler needs besides x_T (ddpm: T - 1; DPM-Solver: none)."""
        return self.cfg.diffusion_steps - 1 if self.cfg.sampler == "ddpm" else 0

    def sampler_times(self) -> list[float]:
        """The model times at which the sampler evaluates the noise network, each once."""
        if self.cfg.sampler == "dpm_solver":
            return sorted({ev.t_in for st in self.plan for ev in st.evals})
        return [float(t) for t in range(self.cfg.diffusion_steps)]

    def _sampler_times_on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self.times_on:
            self.times_on[key] = torch.tensor(self.sampler_times(), dtype=torch.float32, device=device)
        return self.times_on[key]

    def sample_actions(self, actor: DiffusionActor, obs_n: torch.Tensor, x_T: torch.Tensor,
                       step_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions [S, B, n, act] in [-1, 1] for states [S, B, obs], from x_T [S, B, n, act] (and,
        for ddpm, step_noise [S, T-1, B, n, act]); everything on the device, nothing drawn."""
        S, B, n, A = x_T.shape
        s = obs_n.unsqueeze(2).expand(S, B, n, obs_n.shape[-1]).reshape(S, B * n, -1)
        x = x_T.reshape(S, B * n, A)
        s_proj = actor.state_projection(s)
        t_proj = actor.time_projection(self._sampler_times_on(x.device))
        column = {t: k for k, t in enumerate(self.sampler_times())}

        def eps_fn(x_in: torch.Tensor, t_in: float) -> torch.Tensor:
            k = column[t_in]
            return actor.sampling_eps(x_in, t_proj[:, k:k + 1], s_proj)

        if self.cfg.sampler == "dpm_solver":
            x = dpm_solver_sample(eps_fn, x, self.plan)
        else:
            noises = [] if step_noise is None else [step_noise[:, k].reshape(S, B * n, A)
                                                     for k in range(step_noise.shape[1])]
            x = ddpm_sample(eps_fn, x, noises, self.schedule)
        return x.clamp(-1.0, 1.0).reshape(S, B, n, A)

    def target_q_min(self, obs_n: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min(Q1_target, Q2_target) of states [S, B, obs] and actions [S, B, n, act] -> [S, B, n]."""
        S, B, n, _ = actions.shape
        s = obs_n.unsqueeze(2).expand(S, B, n, obs_n.shape[-1])
        x = torch.cat([s, actions], -1).reshape(S, B * n, -1)
        return torch.minimum(self.q1_target(x), self.q2_target(x)).reshape(S, B, n)

    def _eval_noise(self, B: int, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        n, A, k = self.cfg.eval_samples, self.actor.act_dim, self.sampler_steps_with_noise
        x_T, steps, u = [], [], []
        for g in self.eval_gens:  # per seed, in a fixed order: independent of the other seeds
            x_T.append(torch.randn((B, n, A), generator=g))
            if k:
                steps.append(torch.randn((k, B, n, A), generator=g))
            u.append(torch.rand((B, 1), generator=g))
        to = lambda xs: torch.stack(xs).to(device)
        return to(x_T), (to(steps) if k else None), to(u)

    @torch.no_grad()
    def select_actions(self, obs_n: torch.Tensor, greedy: bool) -> torch.Tensor:
        """The evaluation policy: `eval_samples` actions per state from the configured actor, one
        chosen per state by softmax over min(Q1_target, Q2_target) (or the argmax). [S, B, act]."""
        S, B = obs_n.shape[:2]
        x_T, step_noise, u = self._eval_noise(B, obs_n.device)
        actor = self.actor if self.cfg.eval_actor == "online" else self.actor_ema
        with _eval_mode(self.q1_target, self.q2_target):
            actions = self.sample_actions(actor, obs_n, x_T, step_noise)
            q = self.target_q_min(obs_n, actions)
        if greedy:
            idx = q.argmax(-1, keepdim=True)
        else:
            cdf = torch.softmax(q, -1).cumsum(-1).contiguous()
            idx = torch.searchsorted(cdf, u.contiguous(), right=True)
        idx = idx.clamp(0, actions.shape[2] - 1)
        return actions.gather(2, idx.unsqueeze(-1).expand(S, B, 1, actions.shape[-1])).squeeze(2)

    def policy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Actions [S, B, act] in [-1, 1] for normalised states [S, B, obs] (stochastic; see module doc)."""
        return self.select_actions(obs_n, greedy=self.cfg.eval_select == "argmax")

    def policy_greedy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """As `policy`, but the sampled action with the highest min(Q1_target, Q2_target)."""
        return self.select_actions(obs_n, greedy=True)

    def policy_copy(self, device) -> "DiffQLNets":
        """As `OfflineNets.policy_copy`, with generators of its own in the same states, and
        LayerNorms as plain ops (no compiled kernel is called, or compiled, from an evaluation
        thread beside training)."""
        copy = super().policy_copy(device)
        enable_fused_pointwise([getattr(copy, name) for name in self.POLICY_MODULES], "cpu")  # i.e. off
        copy.eval_gens = [torch.Generator().manual_seed(0) for _ in self.eval_gens]
        copy.set_eval_rng_states(self.eval_rng_states())
        if torch.device(device) != self.obs_mean.device:
            copy.schedule = DiffusionSchedule(self.cfg.beta_schedule, self.cfg.diffusion_steps, device)
        copy.times_on = dict(self.times_on)  # (tensors never written: shared)
        return copy

    def host_policy(self) -> "DiffQLNets":
        """Evaluation acts on the nets' device (a sampler of thousands of network rows per state),
        from the copy an evaluation in the background plays too (`policy_copy`): blocking or not,
        the same computation."""
        return self.policy_copy(self.obs_mean.device)

    def adopt_members(self, stack: "DiffQLNets", members: slice) -> None:
        """The stack's evaluation generators of `members` (the same objects: each cell's
        evaluation draws from, and advances, its members' generators as the stack's would)."""
        self.eval_gens = stack.eval_gens[members]

    def eval_rng_states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.eval_gens]

    def set_eval_rng_states(self, states: Sequence[torch.Tensor]) -> None:
        for g, st in zip(self.eval_gens, states):
            g.set_state(st)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    before = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was in zip(modules, before):
            m.train(was)


def build_nets(cfg: DiffQLConfig, seeds: list[int], obs_dim: int, act_dim: int,
               obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> DiffQLNets:
    actor = DiffusionActor(seeds, obs_dim, act_dim, cfg.hidden, cfg.time_embed, cfg.activation)
    q1, q2 = twin_critics(cfg.critic, seeds, obs_dim + act_dim, cfg.hidden, CRITIC_STREAMS, activation=cfg.activation)
    frozen = lambda m: copy.deepcopy(m).requires_grad_(False)
    mean, std = obs_stats(obs_dim, obs_mean, obs_std)
    schedule = DiffusionSchedule(cfg.beta_schedule, cfg.diffusion_steps)
    plan = dpm_solver_plan(schedule, cfg.sample_steps, cfg.dpm_order) if cfg.sampler == "dpm_solver" else []
    return DiffQLNets(cfg, actor, frozen(actor), q1, q2, frozen(q1).eval(), frozen(q2).eval(), mean, std,
                      schedule, plan, eval_generators(seeds, cfg.eval_seed))


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: DiffQLNets, cfg: DiffQLConfig, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    save_offline_checkpoint(path, CHECKPOINT_FORMAT, nets, cfg, seeds, step, diverged_step,
                            obs_dim=nets.actor.obs_dim, act_dim=nets.actor.act_dim)


def load_checkpoint(path: str | Path) -> Checkpoint:
    return load_offline_checkpoint(path, CHECKPOINT_FORMAT, DiffQLConfig, build_nets, DiffQLNets.MODULES)


# ------------------------------------------------------------------ the update step
class DiffQLTrainer(CriticTrainer):
    """Diffusion-QL's update for all seeds; the engine (`seemrl.training.trainer.StackedTrainer`) does the rest.

    One step: critic update (uniform batch; max-Q backup with the EMA actor and target critics),
    actor update (its own batch under OPER-R), EMA of the critics every step. Step kinds: whether
    the EMA actor updates this step. Critics with dropout draw their masks from CPU generators
    inside the forward pass, so they run eagerly (`CriticTrainer`).
    """

    def __init__(self, cfg: DiffQLConfig, seeds: list[int], data: OfflineData, nets: DiffQLNets, device,
                 settings: dict | None = None):
        # OPER-R for the stack when any member has it (`OfflineData.policy_rows`: the others keep the critic's batch)
        self.oper_r = cfg.oper_r or any((settings or {}).get("oper_r", ()))
        if self.oper_r and not data.has_policy_probabilities:
            raise ValueError("oper_r needs the actor batch's sampling probabilities: prepare the data with "
                             "seemrl.data.preparation.prepare (oper_r=True)")
        clips = (settings or {}).get("grad_clip")
        if clips is not None and len({float(c) > 0 for c in clips} | {cfg.grad_clip > 0}) > 1:
            raise ValueError(f"grad_clip: members without clipping (0) and with a clip cannot share a stack, "
                             f"got {sorted(set(map(float, clips)))}")
        super().__init__(cfg, seeds, data, nets, device, settings=settings)
        self.networks = {"actor": nets.actor, "q1": nets.q1, "q2": nets.q2}
        self.targets = {"actor": nets.actor_ema, "q1": nets.q1_target, "q2": nets.q2_target}
        self.optimizers = {
            "actor": make_optimizer("adam", nets.actor.parameters(), cfg.actor_lr, self.device),
            # weight decay is the optimiser's (coupled) L2 penalty on the critics only
            "critic": make_optimizer("adam", critic_params(nets), cfg.critic_lr, self.device,
                                     weight_decay=critic_weight_decay(cfg.critic)),
        }
        self.finish_setup()
        self.join_critics()
        # The backup's sampler (solver steps of the actor over batch x backup_samples rows) is most
        # of the step; on CUDA it is compiled into fused kernels, like the LayerNorm chain
        # (SEEMRL_FUSED_POINTWISE=0: plain ops), in eager and graphed runs alike.
        self._backup = Compiled(self.backup_target, "Diffusion-QL backup") if self.fused_pointwise \
            else self.backup_target
        if self.fused_pointwise:
            self.mode += ", backup sampler compiled"

    # -------------------------------------------------------------- draws and step kinds
    @property
    def n_backup(self) -> int:
        return self.cfg.backup_samples if self.cfg.max_q_backup else 1

    @property
    def draws(self) -> list[Draw]:
        cfg, A = self.cfg, self.data.action.shape[1]
        b, n = cfg.batch_size, self.n_backup
        draws = [self.data.index_draw("idx", b, STREAM_BATCH),
                 Draw("t", "randint", (b,), STREAM_DIFF_T, high=cfg.diffusion_steps),
                 Draw("eps", "normal", (b, A), STREAM_DIFF_NOISE),
                 Draw("backup_xT", "normal", (b, n, A), STREAM_BACKUP_XT)]
        if self.oper_r:
            draws.append(Draw("policy_u", "uniform", (b,), STREAM_POLICY_BATCH))
        if cfg.guide_q == "random":
            draws.append(Draw("head", "uniform", (1,), STREAM_HEAD))
        if cfg.sampler == "ddpm" and cfg.diffusion_steps > 1:
            draws.append(Draw("backup_steps", "normal", (cfg.diffusion_steps - 1, b, n, A), STREAM_BACKUP_STEPS))
        return draws

    def step_kinds(self) -> list[bool]:
        return [False, True]

    def step_kind(self, it: int) -> bool:
        n = it + 1  # this step's number, 1-based
        return n > self.cfg.actor_ema_start and n % self.cfg.actor_ema_every == 0  # EMA actor updates

    def step(self, grad_norm: bool = False) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.lr_decay != "none":  # before the (graphed) step: the optimisers read a device lr
            set_lr(self.optimizers["actor"], cosine_lr(cfg.actor_lr, self.it, cfg.steps))
            if cfg.lr_decay == "both":
                set_lr(self.optimizers["critic"], cosine_lr(cfg.critic_lr, self.it, cfg.steps))
        return super().step(grad_norm)

    # -------------------------------------------------------------- pieces of the step
    def batch_indices(self, draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(critic batch, actor batch) indices [S, B]: uniform; OPER-R draws the actor's by return."""
        idx = draws["idx"]
        if self.oper_r:
            return idx, self.data.policy_rows(draws["policy_u"], idx)
        return idx, idx

    @torch.no_grad()
    def backup_target(self, r: torch.Tensor, s2: torch.Tensor, not_done: torch.Tensor,
                      draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """r + gamma * not_done * min over heads of max over the sampled actions at s' [S, B, 1].
        With `backup_dtype` "bfloat16" the sampler and the target critics run under autocast
        (matmuls in bfloat16, float32 accumulation); the target is float32 either way."""
        nets = self.nets
        with torch.autocast(s2.device.type, dtype=torch.bfloat16, enabled=self.cfg.backup_dtype == "bfloat16"):
            a2 = nets.sample_actions(nets.actor_ema, s2, draws["backup_xT"], draws.get("backup_steps"))
            S, B, n, _ = a2.shape
            x2 = torch.cat([s2.unsqueeze(2).expand(S, B, n, s2.shape[-1]), a2.to(s2.dtype)], -1).reshape(S, B * n, -1)
            if self.twin is not None:  # both target critics in one forward pass (`join_critics`)
                q1, q2 = self.twin_forward(x2, target=True).reshape(2, S, B, n).amax(-1, keepdim=True)
            else:
                q1 = nets.q1_target(x2).reshape(S, B, n).amax(-1, keepdim=True)
                q2 = nets.q2_target(x2).reshape(S, B, n).amax(-1, keepdim=True)
        return r + self.cfg.gamma * not_done * torch.minimum(q1, q2).float()

    def diffusion_terms(self, s: torch.Tensor, a: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        actor: DiffusionActor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed denoising loss [S] and EDP's one-step action a0_hat [S, B, act] from the
        dataset actions a noised to step t with noise eps."""
        sch, actor = self.nets.schedule, (self.nets.actor if actor is None else actor)
        sa, s1a = sch.sqrt_abar_t[t].unsqueeze(-1), sch.sqrt_1m_abar_t[t].unsqueeze(-1)
        a_t = sa * a + s1a * eps
        eps_pred = actor(a_t, t.to(a.dtype), s)
        loss = ((eps_pred - eps) ** 2).mean((1, 2))
        a0 = sch.sqrt_recip_abar_t[t].unsqueeze(-1) * a_t - sch.sqrt_recipm1_abar_t[t].unsqueeze(-1) * eps_pred
        return loss, a0.clamp(-1.0, 1.0)

    def _update(self, draws: dict[str, torch.Tensor], ema_actor_update: bool, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, d = self.cfg, self.nets, self.data
        critic_idx, actor_idx = self.batch_indices(draws)
        s, a, r, s2, not_done = (d.obs[critic_idx], d.action[critic_idx], d.reward[critic_idx],
                                 d.next_obs[critic_idx], d.not_done[critic_idx])
        # BatchNorm and dropout act (batch statistics, masks) only in the critic-loss forward;
        # bootstrap targets and the actor's Q use eval mode. No-ops for other critics.
        self._critic_mode(train=False)
        target = self._backup(r, s2, not_done, draws)
        x = torch.cat([s, a], -1)
        self._critic_mode(train=True)
        q1, critic_loss = self.critic_td_loss(x, target)
        out = self.critic_backward(critic_loss, q1, set_to_none)
        critic_opt, actor_opt = self.optimizers["critic"], self.optimizers["actor"]
        n1, n2 = self._clip(nets.q1), self._clip(nets.q2)
        if grad_norm:  # before clipping
            out["critic_grad_norm"] = torch.sqrt(n1 ** 2 + n2 ** 2) if cfg.grad_clip > 0 else critic_grad_norm(nets)
        critic_opt.step()

        # actor: denoising loss + Q of the one-step action, through the updated critics
        sp, ap = d.obs[actor_idx], d.action[actor_idx]
        with _frozen(nets.q1, nets.q2, *([self.twin.joined] if self.twin is not None else [])):
            bc_loss, a0 = self.diffusion_terms(sp, ap, draws["t"], draws["eps"])
            xp = torch.cat([sp, a0], -1)
            if cfg.guide_q == "q1":
                q = nets.q1(xp)
            else:  # both heads, in one forward pass where the critics are joined
                q1p, q2p = self.twin_forward(xp) if self.twin is not None else (nets.q1(xp), nets.q2(xp))
                # "min", or one head per seed and step, at random (EDP: u > 0.5 -> Q1)
                q = torch.minimum(q1p, q2p) if cfg.guide_q == "min" else \
                    torch.where((draws["head"] > 0.5).unsqueeze(-1), q1p, q2p)
            # alpha / mean|Q| as Python computes a float over a tensor (reciprocal, then the product),
            # so that a member's own alpha (`setting`) computes it alike
            lmbda = q.abs().mean((1, 2)).detach().reciprocal() * self.setting("alpha")
            q_loss = -lmbda * q.mean((1, 2))
            actor_loss = self.setting("bc_weight") * bc_loss + q_loss
            actor_opt.zero_grad(set_to_none=set_to_none)
            actor_loss.sum().backward()
        na = self._clip(nets.actor)
        if grad_norm:
            out["actor_grad_norm"] = na if cfg.grad_clip > 0 else per_seed_norm(
                [p.grad for p in nets.actor.parameters() if p.grad is not None])
        actor_opt.step()
        out.update(actor_loss=actor_loss.detach(), bc_loss=bc_loss.detach(), q_loss=q_loss.detach())
        self._lerp(("q1", "q2") + (("actor",) if ema_actor_update else ()), cfg.tau)
        return out

    def _clip(self, module: nn.Module) -> torch.Tensor | None:
        if self.cfg.grad_clip <= 0:
            return None
        return clip_grad_norm_per_seed(list(module.parameters()), self.setting("grad_clip"))

    def _lerp(self, names: Sequence[str], tau: float) -> None:
        """Targets (parameters and buffers) of `names` move towards their online networks."""
        with torch.no_grad():
            src = [t for n in names for t in (*self.networks[n].parameters(), *self.networks[n].buffers())]
            tgt = [t for n in names for t in (*self.targets[n].parameters(), *self.targets[n].buffers())]
            torch._foreach_lerp_(tgt, src, tau)

    def start_evaluation(self) -> None:
        """Before the training loop's evaluation after step `it`: the evaluation noise from
        (eval_seed, seed, it), so an evaluation does not depend on the schedule before it
        (`eval_every`, `eval_from`)."""
        self.nets.eval_gens = eval_generators(self.seeds, self.cfg.eval_seed, self.it)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "eval_gens": self.nets.eval_rng_states()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.nets.set_eval_rng_states(state["eval_gens"])


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """No parameter gradients for `modules` inside (the actor loss flows through the critics)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: DiffQLConfig, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    return run_identity_of(cfg, seeds, tag={"algorithm": "diffql"}, data_sha256=data_sha256)


# ------------------------------------------------------------------ training loop
METRIC_KEYS = ("critic_loss", "actor_loss", "bc_loss", "q_loss", "q_mean")


def train(cfg: DiffQLConfig, seeds: list[int], data: OfflineData, nets: DiffQLNets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None, monitor=None, settings: dict | None = None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`.
    `data` is prepared (`seemrl.data.preparation`, OPER-R's probabilities included); `evaluate`
    and `resume` as in `seemrl.algos.base.train_offline`; `settings`: per-member values of
    MEMBER_SETTINGS (cells of a sweep in one stack)."""
    return train_offline(DiffQLTrainer(cfg, seeds, data, nets, device, settings), save_checkpoint, checkpoint_dir,
                         (*METRIC_KEYS, "critic_grad_norm", "actor_grad_norm"), _param_norms, log, evaluate, resume, monitor)


def _param_norms(nets: DiffQLNets) -> dict[str, torch.Tensor]:
    return {**critic_param_norms(nets), "actor_param_norm": per_seed_norm(list(nets.actor.parameters()))}
