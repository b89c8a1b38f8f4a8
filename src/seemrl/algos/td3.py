"""Offline TD3 in the SEEM setting, all seeds of a cell trained together.

The paper's divergence study (Sec. 3; `shared/REFERENCE.md` §2) uses offline TD3 with no
behaviour-cloning term and no EMA: the target networks are the current networks (tau = 1).
Setting `bc_weight=1` and `tau=0.005` gives TD3+BC; `twin_q=False, policy_noise=0, policy_delay=1`
gives DDPG (with or without EMA through `tau`), the start of the paper's ablation chain (Fig. 12).

S seeds train in one process with stacked weights (`seemrl.nets.StackedMLP`). Each seed has its
own generators for initialisation, minibatches and target-policy noise, and every loss is a sum of
per-seed means, so each seed's gradients are exactly those of a run on its own. A seed whose
losses become non-finite is recorded with the first step it happened and training goes on: a
diverging run is a result, not a crash.

A run can be killed at any moment and continued (`seemrl.resume.ResumeDir`): every checkpoint step also saves
everything the loop depends on (weights, targets, optimisers, every generator, logged rows), so a
resumed run produces the same outputs, bit for bit on the CPU, as one that was never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from seemrl.devices import MATMUL_PRECISIONS, matmul_precision
from seemrl.io import atomic_path
from seemrl.nets import CRITIC_SPEC_DEFAULTS, StackedMLP, critic_from_config, per_seed_norm, seed_generators
from seemrl.resume import ResumeDir, checkpoint_name, checkpoint_paths  # noqa: F401 (re-exported)

CHECKPOINT_FORMAT = "seemrl.td3.v2"  # v2: critic normalisation as one `critic` spec
# Independent random streams per seed, so that e.g. changing the batch size never changes init.
STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, STREAM_NOISE, STREAM_DROPOUT_Q1, STREAM_DROPOUT_Q2 = range(7)


@dataclass
class TD3Config:
    """Hyperparameters of offline TD3 / TD3+BC (defaults: the SEEM-metric setting)."""

    steps: int = 10_000  # gradient steps
    batch_size: int = 256  # transitions per seed per step
    optimizer: str = "adam"  # "adam" or "sgd" (the paper's SGD study)
    lr: float = 3e-4  # learning rate of actor and critic
    gamma: float = 0.99  # discount
    tau: float = 1.0  # target update rate; 1.0 copies the network every update (no EMA)
    policy_noise: float = 0.2  # std of target-policy smoothing noise
    noise_clip: float = 0.5  # clip of that noise
    policy_delay: int = 2  # critic updates per actor update
    twin_q: bool = True  # clipped double Q (min of two critics); False = DDPG's single critic
    alpha: float = 2.5  # actor loss is -(alpha / mean|Q|) * Q
    bc_weight: float = 0.0  # weight of the BC term (pi - a)^2; 0 in the SEEM setting
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of actor and critic
    critic: dict = field(default_factory=dict)  # critic normalisation: nets.CRITIC_SPEC_DEFAULTS keys + weight_decay
    normalize_states: bool = True  # standardise states with the dataset mean/std
    checkpoint_every: int = 1000  # steps between checkpoints (step 0 and the last included)
    log_every: int = 100  # steps between logged training metrics
    eval_every: int = 0  # steps between policy evaluations in the environment (and at the end); 0 = none
    eval_episodes: int = 10  # episodes per seed and evaluation
    eval_seed: int = 0  # episode k of seed s resets with a seed derived from (eval_seed, s, k)
    cuda_graph: bool = True  # on CUDA, replay the update step as a captured CUDA graph (ignored on CPU)
    matmul_precision: str = "tf32"  # float32 matmuls on CUDA: "tf32" (tensor cores) or "ieee" (full fp32); CPU: always ieee

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        self.critic = dict(self.critic)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        unknown = sorted(set(self.critic) - set(CRITIC_SPEC_DEFAULTS) - {"weight_decay"})
        if unknown:
            raise ValueError(f"critic: unknown normalisation key(s) {unknown}; allowed: "
                             f"{sorted([*CRITIC_SPEC_DEFAULTS, 'weight_decay'])}")
        if not self.critic.get("weight_decay", 0.0) >= 0:
            raise ValueError(f"critic.weight_decay must be >= 0, got {self.critic['weight_decay']}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("steps", "batch_size", "policy_delay", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {list(MATMUL_PRECISIONS)}, got {self.matmul_precision!r}")
        if self.eval_every < 0 or self.eval_episodes < 1:
            raise ValueError(f"need eval_every >= 0 and eval_episodes >= 1, got {self.eval_every} "
                             f"and {self.eval_episodes}")



@dataclass
class TD3Nets:
    """Actor and twin critics of S seeds; the policy is tanh(actor(normalised state))."""

    actor: StackedMLP
    q1: StackedMLP
    q2: StackedMLP
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def policy(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [S, B, act] for normalised states [S, B, obs]."""
        return torch.tanh(self.actor(obs_n))

    def to(self, device) -> "TD3Nets":
        for name in ("actor", "q1", "q2", "obs_mean", "obs_std"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def build_nets(cfg: TD3Config, seeds: list[int], obs_dim: int, act_dim: int,
               obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None) -> TD3Nets:
    actor = StackedMLP(seed_generators(seeds, STREAM_ACTOR), obs_dim, act_dim, cfg.hidden)
    spec = {k: v for k, v in cfg.critic.items() if k != "weight_decay"}  # an optimiser setting
    dropout = spec.get("dropout", 0.0) > 0
    q1, q2 = (
        critic_from_config(seed_generators(seeds, stream), obs_dim + act_dim, 1, cfg.hidden, spec,
                           dropout_generators=seed_generators(seeds, dropout_stream) if dropout else None)
        for stream, dropout_stream in ((STREAM_Q1, STREAM_DROPOUT_Q1), (STREAM_Q2, STREAM_DROPOUT_Q2))
    )
    mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
    std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
    return TD3Nets(actor, q1, q2, mean, std)


def state_normalizer(obs: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training states (TD3+BC's normalisation); identity when disabled."""
    if not enabled:
        return np.zeros(obs.shape[1], np.float32), np.ones(obs.shape[1], np.float32)
    return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-3).astype(np.float32)


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, nets: TD3Nets, cfg: TD3Config, seeds: list[int], step: int,
                    diverged_step: list[int | None]) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "seeds": list(seeds),
        "config": dataclasses.asdict(cfg),
        "obs_dim": nets.actor.dims[0],
        "act_dim": nets.actor.dims[-1],
        "obs_mean": nets.obs_mean.cpu(),
        "obs_std": nets.obs_std.cpu(),
        "actor": {k: v.cpu() for k, v in nets.actor.state_dict().items()},
        "q1": {k: v.cpu() for k, v in nets.q1.state_dict().items()},
        "q2": {k: v.cpu() for k, v in nets.q2.state_dict().items()},
        "diverged_step": list(diverged_step),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class Checkpoint:
    step: int
    seeds: list[int]
    config: TD3Config
    nets: TD3Nets
    diverged_step: list[int | None]


def load_checkpoint(path: str | Path) -> Checkpoint:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say which one
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    cfg = TD3Config(**payload["config"])
    nets = build_nets(cfg, payload["seeds"], payload["obs_dim"], payload["act_dim"],
                      payload["obs_mean"], payload["obs_std"])
    for name in ("actor", "q1", "q2"):
        getattr(nets, name).load_state_dict(payload[name])
    return Checkpoint(payload["step"], payload["seeds"], cfg, nets, payload["diverged_step"])


# ------------------------------------------------------------------ training
@dataclass
class OfflineData:
    """Training transitions as tensors on the training device; states normalised."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    not_done: torch.Tensor  # 0 at true terminals: no bootstrap there; timeouts do bootstrap

    @classmethod
    def from_arrays(cls, obs, action, reward, next_obs, terminal, mean, std, device) -> "OfflineData":
        f = lambda x: torch.as_tensor(np.array(x, np.float32), device=device)  # a writable copy
        mean_t, std_t = f(mean), f(std)
        return cls(
            obs=(f(obs) - mean_t) / std_t,
            action=f(action),
            reward=f(reward).reshape(-1, 1),
            next_obs=(f(next_obs) - mean_t) / std_t,
            not_done=1.0 - f(terminal).reshape(-1, 1),
        )

    def __len__(self) -> int:
        return self.obs.shape[0]


# Rows of the evaluations table: one per (evaluation step, seed).
EVALUATION_COLUMNS = {"step": "int64", "seed": "int64", "return_mean": "float64", "return_std": "float64",
                      "normalized_score": "float64", "nonfinite_actions": "bool"}


def evaluations_frame(rows: list[dict]) -> pd.DataFrame:
    """The evaluation rows as a table with fixed dtypes (a score of None becomes NaN)."""
    return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS)).astype(EVALUATION_COLUMNS)


@dataclass
class TrainResult:
    metrics: pd.DataFrame
    diverged_step: list[int | None]
    steps_per_second: float | None  # over the steps this process ran; None if it ran none
    wall_seconds: float
    evaluations: pd.DataFrame = field(default_factory=lambda: evaluations_frame([]))
    resumed_from_step: int | None = None
    extra: dict = field(default_factory=dict)


class _Window:
    """Batch indices and target-policy noise of up to `rows` consecutive steps, drawn ahead.

    The draws come from the same per-seed CPU generators, in the same order, as `_sample()`'s
    step-by-step draws: one (W, B) `randint` per seed equals W successive (B,) draws, and so does
    one `randn` when B * act_dim is a multiple of 16 (CPU normal sampling works in blocks of 16;
    otherwise the noise is drawn step by step). The window is copied to the device once; each step
    reads the row at a device-side counter and advances it, so a captured CUDA graph stays static.
    """

    def __init__(self, trainer: "TD3Trainer", rows: int):
        self.t = trainer
        S, B, A = trainer.S, trainer.cfg.batch_size, trainer.data.action.shape[1]
        pin = trainer.device.type == "cuda"
        self.rows, self.batched_noise = rows, (B * A) % 16 == 0
        self.idx_host = torch.zeros((rows, S, B), dtype=torch.int64, pin_memory=pin)
        self.noise_host = torch.zeros((rows, S, B, A), pin_memory=pin)
        # zero-filled: rows never drawn still index the data safely (graph warm-up reads them)
        self.idx = torch.zeros((rows, S, B), dtype=torch.int64, device=trainer.device)
        self.noise = torch.zeros((rows, S, B, A), device=trainer.device)
        self.ptr = torch.zeros(1, dtype=torch.int64, device=trainer.device)  # next row, on the device
        self.size = self.used = 0  # rows drawn into the window, rows consumed (host-side count)
        self.snapshot: list[torch.Tensor] | None = None  # generator states at the window's start
        self.copied: torch.cuda.Event | None = None

    def _draw(self, batch_gens, noise_gens, w: int, into_idx=None, into_noise=None) -> None:
        n, B, A = len(self.t.data), self.t.cfg.batch_size, self.t.data.action.shape[1]
        for s, g in enumerate(batch_gens):
            x = torch.randint(n, (w, B), generator=g)
            if into_idx is not None:
                into_idx[:w, s].copy_(x)
        for s, g in enumerate(noise_gens):
            if self.batched_noise:
                x = torch.randn(w, B, A, generator=g)
            else:
                x = torch.stack([torch.randn(B, A, generator=g) for _ in range(w)])
            if into_noise is not None:
                into_noise[:w, s].copy_(x)

    def refill(self, w: int) -> None:
        t = self.t
        if self.copied is not None:  # the previous window's copy has left the pinned buffers
            self.copied.synchronize()
        self.snapshot = [g.get_state() for g in t.batch_gens + t.noise_gens]
        self._draw(t.batch_gens, t.noise_gens, w, self.idx_host, self.noise_host)
        self.idx[:w].copy_(self.idx_host[:w], non_blocking=True)
        self.noise[:w].copy_(self.noise_host[:w], non_blocking=True)
        self.ptr.zero_()
        if t.device.type == "cuda":
            self.copied = torch.cuda.Event()
            self.copied.record()
        self.size, self.used = w, 0

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's indices [S, B] and noise [S, B, act]; advances the device counter."""
        idx = self.idx.index_select(0, self.ptr)[0]
        noise = self.noise.index_select(0, self.ptr)[0]
        self.ptr.add_(1)
        return idx, noise

    def generator_states(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """States of the batch and noise generators after exactly the consumed steps."""
        t = self.t
        if self.used == self.size or self.snapshot is None:  # nothing drawn ahead
            return [g.get_state() for g in t.batch_gens], [g.get_state() for g in t.noise_gens]
        gens = [torch.Generator() for _ in self.snapshot]
        for g, state in zip(gens, self.snapshot):
            g.set_state(state)
        if self.used:
            self._draw(gens[:t.S], gens[t.S:], self.used)
        return [g.get_state() for g in gens[:t.S]], [g.get_state() for g in gens[t.S:]]

    def discard(self) -> None:
        """Forget the rows drawn ahead (the generators were set from outside)."""
        self.size = self.used = 0
        self.snapshot = None


class TD3Trainer:
    """One update step for all seeds: `step()`; everything else is bookkeeping.

    On CUDA with `cfg.cuda_graph` (and no critic dropout, whose masks come from CPU generators
    inside the forward), each step replays a captured CUDA graph: one per kind of step (with or
    without actor update, with or without the gradient norm), all reading their batch from a
    window of pre-drawn batch indices and noise (`_Window`). The math is the same as the eager
    step; the optimisers are the capturable (fused) Adam. Elsewhere the step runs eagerly.
    """

    WINDOW_BYTES = 64 * 2**20  # device memory for pre-drawn indices and noise (at most 1000 steps)

    def __init__(self, cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, device):
        self.cfg, self.seeds, self.data, self.nets = cfg, list(seeds), data, nets.to(device)
        self.device = torch.device(device)
        self.S = len(seeds)
        dropout = cfg.critic.get("dropout", 0.0) > 0
        self.graphed = cfg.cuda_graph and self.device.type == "cuda" and not dropout
        if self.device.type != "cuda":
            self.mode = "eager (CPU)"
        elif self.graphed:
            self.mode = "CUDA graph"
        elif not cfg.cuda_graph:
            self.mode = "eager (cuda_graph=False)"
        else:
            self.mode = "eager (critic dropout draws its masks from CPU generators inside the step)"
        opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[cfg.optimizer]
        # On CUDA, Adam is the fused capturable kernel in both modes, so a graphed run and an eager
        # one compute bitwise the same (measured on an H200); the CPU keeps PyTorch's default Adam.
        kw = dict(capturable=True, fused=True) if self.device.type == "cuda" and cfg.optimizer == "adam" else {}
        self.actor_opt = opt(nets.actor.parameters(), lr=cfg.lr, **kw)
        # weight decay is the optimiser's (coupled) L2 penalty on the critic only
        self.critic_opt = opt([*nets.q1.parameters(), *nets.q2.parameters()], lr=cfg.lr,
                              weight_decay=cfg.critic.get("weight_decay", 0.0), **kw)
        self._opt_flags = [{k: grp[k] for k in ("capturable", "fused", "foreach") if k in grp}
                           for grp in (self.actor_opt.param_groups[0], self.critic_opt.param_groups[0])]
        self.batch_gens = seed_generators(seeds, STREAM_BATCH)
        self.noise_gens = seed_generators(seeds, STREAM_NOISE)
        if cfg.tau < 1.0:
            import copy
            self.targets = tuple(copy.deepcopy(m).eval() for m in (nets.actor, nets.q1, nets.q2))
        else:
            self.targets = None  # the target networks are the current ones
        self.it = 0
        # Divergence is detected on the device at every step (a few tiny kernels, no host sync):
        # the first step whose critic loss is not finite, per seed (-1 = none yet), read on logged
        # and checkpoint steps (`first_nonfinite_steps`).
        self.nonfinite_step = torch.full((self.S,), -1, dtype=torch.int64, device=self.device)
        self._step_count = torch.zeros((), dtype=torch.int64, device=self.device)  # = it, on the device
        self.window: _Window | None = None
        self.use_window = self.graphed  # also settable on CPU (tests: the window draws what _sample draws)
        self._graphs: dict | None = None

    def _sample_indices(self):
        # Per-seed generators on the CPU: seed s draws the same batches alone or among others.
        n, b = len(self.data), self.cfg.batch_size
        idx = torch.stack([torch.randint(n, (b,), generator=g) for g in self.batch_gens]).to(self.device)
        act_dim = self.data.action.shape[1]
        noise = torch.stack([torch.randn(b, act_dim, generator=g) for g in self.noise_gens]).to(self.device)
        return idx, noise

    def _sample(self):
        idx, noise = self._sample_indices()
        d = self.data
        return d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx], noise

    # ------------------------------------------------------------------ the pre-drawn window
    def _window_rows(self) -> int:
        S, B, A = self.S, self.cfg.batch_size, self.data.action.shape[1]
        return int(max(1, min(1000, self.WINDOW_BYTES // (S * B * (8 + 4 * A)))))

    def _next_window_size(self) -> int:
        # windows end at checkpoint steps (and the last step), so the generator states saved with
        # a checkpoint are those of the steps taken, without redrawing
        ce, done = self.cfg.checkpoint_every, self.it
        w = min(self.window.rows, ce - done % ce)
        if done < self.cfg.steps:
            w = min(w, self.cfg.steps - done)
        return w

    def _ensure_window(self) -> None:
        if self.window is None:
            self.window = _Window(self, self._window_rows())
        if self.window.used == self.window.size:
            self.window.refill(self._next_window_size())

    # ------------------------------------------------------------------ the step
    def step(self, grad_norm: bool = False) -> dict[str, torch.Tensor]:
        """One critic update (and an actor update every `policy_delay`); per-seed metrics.

        `grad_norm` adds the critic's gradient norm per seed; only asked for on logged steps,
        because the step is launch-bound on a GPU and the norm is a dozen more kernels.
        """
        with matmul_precision(self.cfg.matmul_precision):
            return self._step(grad_norm)

    def _step(self, grad_norm: bool) -> dict[str, torch.Tensor]:
        actor = (self.it + 1) % self.cfg.policy_delay == 0
        if self.graphed:
            self._ensure_window()
            if self._graphs is None:
                self._capture()
            graph, keys, out = self._graphs[actor, grad_norm]
            graph.replay()
            values = out.clone()  # the static output is overwritten by the next replay
        elif self.use_window:
            self._ensure_window()
            out = self._update(*self.window.take(), actor, grad_norm, set_to_none=True)
        else:
            out = self._update(*self._sample_indices(), actor, grad_norm, set_to_none=True)
        if self.use_window:
            self.window.used += 1
        self.it += 1
        if self.graphed:
            return dict(zip(keys, values.unbind(0)))
        return out

    def _update(self, idx: torch.Tensor, noise: torch.Tensor, actor_update: bool, grad_norm: bool,
                set_to_none: bool) -> dict[str, torch.Tensor]:
        cfg, nets, d = self.cfg, self.nets, self.data
        s, a, r, s2, not_done = d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx]
        actor_t, q1_t, q2_t = self.targets or (nets.actor, nets.q1, nets.q2)
        # BatchNorm and dropout act (batch statistics, masks) only in the critic-loss forward;
        # bootstrap targets and the actor's Q use eval mode. No-ops for other critics.
        self._critic_mode(train=False)
        with torch.no_grad():
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (torch.tanh(actor_t(s2)) + noise).clamp(-1.0, 1.0)
            x2 = torch.cat([s2, a2], -1)
            q_next = torch.minimum(q1_t(x2), q2_t(x2)) if cfg.twin_q else q1_t(x2)
            target = r + cfg.gamma * not_done * q_next
        x = torch.cat([s, a], -1)
        self._critic_mode(train=True)
        q1 = nets.q1(x)
        critic_loss = ((q1 - target) ** 2).mean((1, 2))
        if cfg.twin_q:  # DDPG (twin_q=False) has one critic: q2 is never used nor updated
            critic_loss = critic_loss + ((nets.q2(x) - target) ** 2).mean((1, 2))
        self._critic_mode(train=False)
        self.critic_opt.zero_grad(set_to_none=set_to_none)
        critic_loss.sum().backward()  # a sum of per-seed losses: per-seed gradients
        with torch.no_grad():
            self._step_count.add_(1)
            newly = ~torch.isfinite(critic_loss.detach()) & (self.nonfinite_step < 0)
            self.nonfinite_step.copy_(torch.where(newly, self._step_count, self.nonfinite_step))
        out = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean((1, 2))}
        if grad_norm:  # the gradient the optimiser is about to apply
            out["critic_grad_norm"] = per_seed_norm([p.grad for p in (*nets.q1.parameters(), *nets.q2.parameters())
                                                     if p.grad is not None])  # None: unused (pre-BatchNorm bias)
        self.critic_opt.step()
        if actor_update:
            pi = torch.tanh(nets.actor(s))
            q = nets.q1(torch.cat([s, pi], -1))
            lmbda = cfg.alpha / q.abs().mean((1, 2)).detach()
            actor_loss = -lmbda * q.mean((1, 2)) + cfg.bc_weight * ((pi - a) ** 2).mean((1, 2))
            self.actor_opt.zero_grad(set_to_none=set_to_none)
            actor_loss.sum().backward()
            self.actor_opt.step()
            out["actor_loss"] = actor_loss.detach()
            if self.targets is not None:
                with torch.no_grad():  # parameters and (BatchNorm) buffers follow the online nets
                    src = [t for m in (nets.actor, nets.q1, nets.q2) for t in (*m.parameters(), *m.buffers())]
                    tgt = [t for m in self.targets for t in (*m.parameters(), *m.buffers())]
                    torch._foreach_lerp_(tgt, src, cfg.tau)
        return out

    def first_nonfinite_steps(self) -> list[int | None]:
        """Per seed, the first step whose critic loss was NaN or inf (None if none yet)."""
        return [None if v < 0 else int(v) for v in self.nonfinite_step.tolist()]

    def _critic_mode(self, train: bool) -> None:
        self.nets.q1.train(train)
        self.nets.q2.train(train)

    # ------------------------------------------------------------------ CUDA graphs
    def _state_tensors(self) -> list[torch.Tensor]:
        mods = [self.nets.actor, self.nets.q1, self.nets.q2, *(self.targets or ())]
        return [t for m in mods for t in (*m.parameters(), *m.buffers())]

    def _opt_state_tensors(self) -> list[torch.Tensor]:
        return [v for o in (self.actor_opt, self.critic_opt) for st in o.state.values()
                for v in st.values() if isinstance(v, torch.Tensor)]

    def _capture(self) -> None:
        """Capture one graph per kind of step; the warm-up before it changes nothing."""
        w = self.window
        kinds = [(actor, gn) for actor in sorted({False, True} if self.cfg.policy_delay > 1 else {True})
                 for gn in (False, True)]
        counters = (w.ptr, self.nonfinite_step, self._step_count)
        saved = [t.detach().clone() for t in (*self._state_tensors(), *counters)]
        opt_before = {id(t): t.detach().clone() for t in self._opt_state_tensors()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: allocates gradients and optimiser states
            for kind in kinds:
                for _ in range(3):
                    w.ptr.zero_()
                    self._update(*w.take(), *kind, set_to_none=False)
        torch.cuda.current_stream(self.device).wait_stream(side)

        def restore():
            with torch.no_grad():
                for t, v in zip((*self._state_tensors(), *counters), saved):
                    t.copy_(v)
                for t in self._opt_state_tensors():  # states created by the warm-up start fresh
                    t.copy_(opt_before[id(t)]) if id(t) in opt_before else t.zero_()

        restore()
        graphs = {}
        for kind in kinds:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._update(*w.take(), *kind, set_to_none=False)
                keys = list(out)
                static = torch.stack([out[k] for k in keys])
            graphs[kind] = (graph, keys, static)
        restore()  # capturing runs nothing; the counter alone is put back to be sure
        torch.cuda.synchronize(self.device)
        self._graphs = graphs

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything `step()` depends on: with it a run continues exactly where it stopped."""
        if self.use_window and self.window is not None:
            batch_states, noise_states = self.window.generator_states()
        else:
            batch_states = [g.get_state() for g in self.batch_gens]
            noise_states = [g.get_state() for g in self.noise_gens]
        return {
            "nets": {name: getattr(self.nets, name).state_dict() for name in ("actor", "q1", "q2")},
            "targets": None if self.targets is None else [m.state_dict() for m in self.targets],
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "batch_gens": batch_states,
            "noise_gens": noise_states,
            "dropout_gens": [self.nets.q1.dropout_rng_states(), self.nets.q2.dropout_rng_states()],
            "it": self.it,
            "nonfinite_step": self.nonfinite_step.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, weights in state["nets"].items():
            getattr(self.nets, name).load_state_dict(weights)
        if self.targets is not None:
            for module, weights in zip(self.targets, state["targets"]):
                module.load_state_dict(weights)
        for o, flags, o_state in zip((self.actor_opt, self.critic_opt), self._opt_flags,
                                     (state["actor_opt"], state["critic_opt"])):
            o.load_state_dict(o_state)
            for grp in o.param_groups:  # a state saved by an eager (or graphed) run keeps this run's kind
                grp.update(flags)
            on_device = flags.get("capturable", False) or flags.get("fused", False)
            for p, st in o.state.items():
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = st["step"].to(p.device if on_device else "cpu", torch.float32)
        for g, g_state in zip(self.batch_gens + self.noise_gens, state["batch_gens"] + state["noise_gens"]):
            g.set_state(g_state)
        for net, states in zip((self.nets.q1, self.nets.q2), state["dropout_gens"]):
            if states is not None:
                net.set_dropout_rng_states(states)
        self.it = state["it"]
        with torch.no_grad():
            self._step_count.fill_(self.it)
            if "nonfinite_step" in state:
                self.nonfinite_step.copy_(state["nonfinite_step"])
        if self.window is not None:
            self.window.discard()
        self._graphs = None  # the optimisers' states are new tensors: capture again


# ------------------------------------------------------------------ resumable state
def run_identity(cfg: TD3Config, seeds: list[int], data_sha256: str) -> dict:
    """What makes two runs the same run, as plain JSON values (tuples become lists)."""
    config = dataclasses.asdict(cfg)
    config.pop("cuda_graph")  # how the step executes, not which run this is
    return json.loads(json.dumps({"config": config, "seeds": list(seeds),
                                  "data_sha256": data_sha256}))


# ------------------------------------------------------------------ training loop
def train(cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print, evaluate: Callable | None = None,
          resume: ResumeDir | None = None) -> TrainResult:
    """Train all seeds for `cfg.steps` steps; the checkpoints end up in `checkpoint_dir`.

    evaluate(nets) -> one result per seed (`seemrl.evaluation.evaluate_policies` with the
    environment bound) is called every `cfg.eval_every` steps and after the last step.
    Without `resume`, checkpoints are written straight into `checkpoint_dir` (the caller makes
    that atomic). With it, they go to the resume directory, each followed by a resume state;
    training continues from a matching state found there; and at the end `checkpoint_dir` is
    replaced, atomically, by a directory of every checkpoint.
    """
    if cfg.eval_every and evaluate is None:
        raise ValueError("cfg.eval_every > 0 needs an evaluate function")
    trainer = TD3Trainer(cfg, seeds, data, nets, device)
    log(f"update step: {trainer.mode}")
    work_dir = checkpoint_dir if resume is None else resume.checkpoint_dir
    state = resume.load(log) if resume is not None else None
    if state is None:
        start_step = 0
        diverged: list[int | None] = [None] * len(seeds)
        rows: list[dict] = []
        eval_rows: list[dict] = []
        # the logged actor loss is the latest one, from up to policy_delay - 1 steps back, so a
        # resume state carries it
        last_actor_loss = torch.full((len(seeds),), math.nan)
        save_checkpoint(work_dir / checkpoint_name(0), trainer.nets, cfg, seeds, 0, diverged)
    else:
        trainer.load_state_dict(state["trainer"])
        start_step, diverged = state["step"], state["diverged_step"]
        rows, eval_rows = state["metrics"], state["evaluations"]
        last_actor_loss = state["last_actor_loss"]
        resume.drop_checkpoints_after(start_step)
        log(f"resuming from step {start_step} ({resume.state_path})")

    start = last_report = time.perf_counter()
    for step in range(start_step + 1, cfg.steps + 1):
        logged = step % cfg.log_every == 0 or step == cfg.steps
        out = trainer.step(grad_norm=logged)
        if "actor_loss" in out:
            last_actor_loss = out["actor_loss"]
        if logged:
            critic_loss = out["critic_loss"].cpu()
            q_mean = out["q_mean"].cpu()
            pnorm = per_seed_norm([*trainer.nets.q1.parameters(), *trainer.nets.q2.parameters()]).cpu()
            gnorm = out["critic_grad_norm"].cpu()
            _record_divergence(trainer, seeds, diverged, log)
            for i, seed in enumerate(seeds):
                rows.append({"step": step, "seed": seed, "critic_loss": float(critic_loss[i]),
                             "actor_loss": float(last_actor_loss[i]), "q_mean": float(q_mean[i]),
                             "critic_param_norm": float(pnorm[i]), "critic_grad_norm": float(gnorm[i])})
            now = time.perf_counter()
            if now - last_report > 10 or step == cfg.steps:
                rate = (step - start_step) / (now - start)
                log(f"step {step}/{cfg.steps}  {rate:.0f} steps/s ({rate * len(seeds):.0f} seed-steps/s)"
                    f"  ETA {(cfg.steps - step) / rate:.0f}s  Q mean per seed {[round(float(q), 2) for q in q_mean]}")
                last_report = now
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            eval_rows += _evaluation_rows(step, evaluate(trainer.nets), log)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _record_divergence(trainer, seeds, diverged, log)
            save_checkpoint(work_dir / checkpoint_name(step), trainer.nets, cfg, seeds, step, diverged)
            if resume is not None:  # after the checkpoint: a state never refers to a missing one
                resume.save({"step": step, "trainer": trainer.state_dict(), "diverged_step": diverged,
                             "metrics": rows, "evaluations": eval_rows, "last_actor_loss": last_actor_loss.cpu()})
    wall = time.perf_counter() - start
    if resume is not None:
        with atomic_path(checkpoint_dir, is_dir=True) as tmp:
            for path in checkpoint_paths(resume.checkpoint_dir):
                shutil.copyfile(path, tmp / path.name)
    ran = cfg.steps - start_step
    return TrainResult(pd.DataFrame(rows), diverged, ran / wall if ran else None, wall,
                       evaluations=evaluations_frame(eval_rows),
                       resumed_from_step=None if state is None else start_step)


def _record_divergence(trainer: TD3Trainer, seeds: list[int], diverged: list[int | None],
                       log: Callable[[str], None]) -> None:
    """Copy the trainer's per-step divergence record into `diverged` (in place), logging news."""
    for i, (seed, first) in enumerate(zip(seeds, trainer.first_nonfinite_steps())):
        if first is not None and diverged[i] is None:
            diverged[i] = first
            log(f"seed {seed}: non-finite critic loss at step {first}; recorded, training goes on")


def _evaluation_rows(step: int, results: list, log: Callable[[str], None]) -> list[dict]:
    rows = [{"step": step, "seed": r.seed, "return_mean": r.return_mean, "return_std": r.return_std,
             "normalized_score": r.normalized_score, "nonfinite_actions": r.nonfinite_actions}
            for r in results]
    flagged = [r.seed for r in results if r.nonfinite_actions]
    log(f"evaluation at step {step}: mean return per seed {[round(r.return_mean, 1) for r in results]}"
        + (f"; non-finite actions (replaced by 0) from seeds {flagged}" if flagged else ""))
    return rows
