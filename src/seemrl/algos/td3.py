"""Offline TD3 in the SEEM setting, all seeds of a cell trained together.

The paper's divergence study (Sec. 3; `shared/REFERENCE.md` §2) uses offline TD3 with no
behaviour-cloning term and no EMA: the target networks are the current networks (tau = 1).
Setting `bc_weight=1` and `tau=0.005` gives TD3+BC.

S seeds train in one process with stacked weights (`seemrl.nets.StackedMLP`). Each seed has its
own generators for initialisation, minibatches and target-policy noise, and every loss is a sum of
per-seed means, so each seed's gradients are exactly those of a run on its own. A seed whose
losses become non-finite is recorded with the first step it happened and training goes on: a
diverging run is a result, not a crash.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from seemrl.io import atomic_path, write_json_atomic
from seemrl.nets import StackedMLP, per_seed_norm, seed_generators

CHECKPOINT_FORMAT = "seemrl.td3.v1"
# Independent random streams per seed, so that e.g. changing the batch size never changes init.
STREAM_ACTOR, STREAM_Q1, STREAM_Q2, STREAM_BATCH, STREAM_NOISE = range(5)


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
    alpha: float = 2.5  # actor loss is -(alpha / mean|Q|) * Q
    bc_weight: float = 0.0  # weight of the BC term (pi - a)^2; 0 in the SEEM setting
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of actor and critic
    critic_norm: str = "none"  # "none" or "layernorm"
    ln_layers: tuple[int, ...] | None = None  # hidden layers with LayerNorm; None = all
    normalize_states: bool = True  # standardise states with the dataset mean/std
    checkpoint_every: int = 1000  # steps between checkpoints (step 0 and the last included)
    log_every: int = 100  # steps between logged training metrics

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        if self.ln_layers is not None:
            self.ln_layers = tuple(self.ln_layers)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.critic_norm not in ("none", "layernorm"):
            raise ValueError(f"critic_norm must be 'none' or 'layernorm', got {self.critic_norm!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("steps", "batch_size", "policy_delay", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def critic_ln_layers(self) -> tuple[int, ...]:
        if self.critic_norm == "none":
            return ()
        return tuple(range(len(self.hidden))) if self.ln_layers is None else self.ln_layers


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
    q1, q2 = (
        StackedMLP(seed_generators(seeds, stream), obs_dim + act_dim, 1, cfg.hidden,
                   layer_norm=cfg.critic_ln_layers)
        for stream in (STREAM_Q1, STREAM_Q2)
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


def checkpoint_paths(checkpoint_dir: str | Path) -> list[Path]:
    """Checkpoints of a run in step order."""
    return sorted(Path(checkpoint_dir).glob("step_*.pt"))


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


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
        f = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=device)
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


@dataclass
class TrainResult:
    metrics: pd.DataFrame
    diverged_step: list[int | None]
    steps_per_second: float
    wall_seconds: float
    extra: dict = field(default_factory=dict)


class TD3Trainer:
    """One update step for all seeds: `step()`; everything else is bookkeeping."""

    def __init__(self, cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, device):
        self.cfg, self.seeds, self.data, self.nets = cfg, list(seeds), data, nets.to(device)
        self.device = device
        self.S = len(seeds)
        opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[cfg.optimizer]
        self.actor_opt = opt(nets.actor.parameters(), lr=cfg.lr)
        self.critic_opt = opt([*nets.q1.parameters(), *nets.q2.parameters()], lr=cfg.lr)
        self.batch_gens = seed_generators(seeds, STREAM_BATCH)
        self.noise_gens = seed_generators(seeds, STREAM_NOISE)
        if cfg.tau < 1.0:
            import copy
            self.targets = tuple(copy.deepcopy(m) for m in (nets.actor, nets.q1, nets.q2))
        else:
            self.targets = None  # the target networks are the current ones
        self.it = 0

    def _sample(self):
        # Per-seed generators on the CPU: seed s draws the same batches alone or among others.
        n, b = len(self.data), self.cfg.batch_size
        idx = torch.stack([torch.randint(n, (b,), generator=g) for g in self.batch_gens]).to(self.device)
        act_dim = self.data.action.shape[1]
        noise = torch.stack([torch.randn(b, act_dim, generator=g) for g in self.noise_gens]).to(self.device)
        d = self.data
        return d.obs[idx], d.action[idx], d.reward[idx], d.next_obs[idx], d.not_done[idx], noise

    def step(self) -> dict[str, torch.Tensor]:
        """One critic update (and an actor update every `policy_delay`); per-seed metrics."""
        cfg, nets = self.cfg, self.nets
        self.it += 1
        s, a, r, s2, not_done, noise = self._sample()
        actor_t, q1_t, q2_t = self.targets or (nets.actor, nets.q1, nets.q2)
        with torch.no_grad():
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (torch.tanh(actor_t(s2)) + noise).clamp(-1.0, 1.0)
            x2 = torch.cat([s2, a2], -1)
            target = r + cfg.gamma * not_done * torch.minimum(q1_t(x2), q2_t(x2))
        x = torch.cat([s, a], -1)
        q1, q2 = nets.q1(x), nets.q2(x)
        critic_loss = ((q1 - target) ** 2).mean((1, 2)) + ((q2 - target) ** 2).mean((1, 2))
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # a sum of per-seed losses: per-seed gradients
        self.critic_opt.step()
        out = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean((1, 2))}
        if self.it % cfg.policy_delay == 0:
            pi = torch.tanh(nets.actor(s))
            q = nets.q1(torch.cat([s, pi], -1))
            lmbda = cfg.alpha / q.abs().mean((1, 2)).detach()
            actor_loss = -lmbda * q.mean((1, 2)) + cfg.bc_weight * ((pi - a) ** 2).mean((1, 2))
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            self.actor_opt.step()
            out["actor_loss"] = actor_loss.detach()
            if self.targets is not None:
                with torch.no_grad():
                    src = [p for m in (nets.actor, nets.q1, nets.q2) for p in m.parameters()]
                    tgt = [p for m in self.targets for p in m.parameters()]
                    torch._foreach_lerp_(tgt, src, cfg.tau)
        return out


def train(cfg: TD3Config, seeds: list[int], data: OfflineData, nets: TD3Nets, checkpoint_dir: Path,
          device="cpu", log: Callable[[str], None] = print) -> TrainResult:
    """Train all seeds for `cfg.steps` steps, writing checkpoints into `checkpoint_dir`."""
    trainer = TD3Trainer(cfg, seeds, data, nets, device)
    diverged: list[int | None] = [None] * len(seeds)
    rows: list[dict] = []
    save_checkpoint(checkpoint_dir / checkpoint_name(0), trainer.nets, cfg, seeds, 0, diverged)
    start = last_report = time.perf_counter()
    last_actor_loss = torch.full((len(seeds),), math.nan)
    for step in range(1, cfg.steps + 1):
        out = trainer.step()
        if "actor_loss" in out:
            last_actor_loss = out["actor_loss"]
        if step % cfg.log_every == 0 or step == cfg.steps:
            critic_loss = out["critic_loss"].cpu()
            q_mean = out["q_mean"].cpu()
            pnorm = per_seed_norm([*trainer.nets.q1.parameters(), *trainer.nets.q2.parameters()]).cpu()
            for i, seed in enumerate(seeds):
                finite = math.isfinite(critic_loss[i]) and math.isfinite(q_mean[i])
                if not finite and diverged[i] is None:
                    diverged[i] = step
                    log(f"seed {seed}: non-finite critic loss or Q at step {step}; recorded, training goes on")
                rows.append({"step": step, "seed": seed, "critic_loss": float(critic_loss[i]),
                             "actor_loss": float(last_actor_loss[i]), "q_mean": float(q_mean[i]),
                             "critic_param_norm": float(pnorm[i])})
            now = time.perf_counter()
            if now - last_report > 10 or step == cfg.steps:
                rate = step / (now - start)
                log(f"step {step}/{cfg.steps}  {rate:.0f} steps/s ({rate * len(seeds):.0f} seed-steps/s)"
                    f"  ETA {(cfg.steps - step) / rate:.0f}s  Q mean per seed {[round(float(q), 2) for q in q_mean]}")
                last_report = now
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(checkpoint_dir / checkpoint_name(step), trainer.nets, cfg, seeds, step, diverged)
    wall = time.perf_counter() - start
    return TrainResult(pd.DataFrame(rows), diverged, cfg.steps / wall, wall)
