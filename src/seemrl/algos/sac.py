"""Online SAC, compact and single-seed: trains the behaviour policy that generates demo datasets.

Standard SAC (Haarnoja et al. 2018, with the automatic entropy temperature of the follow-up
paper): twin Q critics with EMA targets, tanh-squashed Gaussian actor, target entropy -act_dim.

Reproducibility on CPU: networks are initialised inside a forked torch RNG seeded with `seed`
(the caller's global RNG is left alone), action noise comes from a private torch.Generator,
minibatches from a numpy Generator, the warm-up actions from the seeded action space and the
environment from `reset(seed=...)`. The caller chooses the number of torch threads.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.io import atomic_path

CHECKPOINT_FORMAT = "seemrl.sac.v1"
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    """Hyperparameters of online SAC (defaults: a quick Hopper behaviour policy on CPU)."""

    total_steps: int = 15_000  # environment steps, warm-up included
    learning_starts: int = 1_500  # uniformly random actions before the first update
    buffer_size: int = 1_000_000  # replay capacity (transitions)
    batch_size: int = 256  # transitions per update
    gamma: float = 0.99  # discount
    tau: float = 0.005  # EMA rate of the target critics
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    critic_lr: float = 1e-3  # Adam learning rate of the critics
    alpha_lr: float = 1e-3  # Adam learning rate of log(temperature)
    hidden: tuple[int, ...] = (256, 256)  # hidden widths (ReLU) of actor and critics
    eval_episodes: int = 5  # deterministic episodes evaluated at the end of training
    log_every: int = 2_500  # environment steps between progress lines

    def __post_init__(self):
        self.hidden = tuple(self.hidden)


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy, rescaled to the action box."""

    def __init__(self, obs_dim: int, act_dim: int, hidden, action_low, action_high):
        super().__init__()
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden)  # mean and log-std in one head
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """Sample an action; returns (action, log_prob [B, 1], deterministic action)."""
        mean, log_std = self.trunk(obs).chunk(2, dim=-1)
        # squash log-std smoothly into [LOG_STD_MIN, LOG_STD_MAX] rather than clamping,
        # so its gradient never vanishes at the bounds
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        pre_tanh = mean + std * noise
        squashed = torch.tanh(pre_tanh)
        # log N(pre_tanh; mean, std) minus the log-Jacobian of tanh and of the rescaling
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * np.log(2 * np.pi)).sum(-1, keepdim=True)
        log_prob = log_prob - torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6).sum(
            -1, keepdim=True
        )
        action = squashed * self.action_scale + self.action_bias
        return action, log_prob, torch.tanh(mean) * self.action_scale + self.action_bias


class SACAgent:
    """A trained SAC actor: acts, saves and loads. Critics are training state, not saved."""

    def __init__(self, actor: Actor, cfg: SACConfig, obs_dim: int, act_dim: int, info: dict):
        self.actor = actor.eval()
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.info = info  # env_id, seed, training summary (e.g. final evaluation return)
        self.generator = torch.Generator().manual_seed(int(info.get("seed", 0)))

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Action(s) for obs [obs_dim] or [B, obs_dim]; stochastic ones draw from `generator`
        (default: the agent's own, seeded with the training seed)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        sampled, _, mean = self.actor(x, generator or self.generator)
        return (mean if deterministic else sampled).numpy()

    def save(self, path: str | Path) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": (self.actor.action_bias - self.actor.action_scale).tolist(),
            "action_high": (self.actor.action_bias + self.actor.action_scale).tolist(),
            "actor": self.actor.state_dict(),
            "info": self.info,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | Path) -> SACAgent:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        cfg = SACConfig(**state["config"])
        actor = Actor(
            state["obs_dim"], state["act_dim"], cfg.hidden, state["action_low"], state["action_high"]
        )
        actor.load_state_dict(state["actor"])
        return cls(actor, cfg, state["obs_dim"], state["act_dim"], state["info"])


class ReplayBuffer:
    """Fixed-capacity ring buffer of (s, a, r, s', terminated) as float32 numpy arrays."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.pos = capacity, 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> list[torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch_size)
        return [
            torch.from_numpy(a[idx])
            for a in (self.obs, self.action, self.reward, self.next_obs, self.terminated)
        ]


def train_sac(
    env_id: str, cfg: SACConfig, seed: int, log: Callable[[str], None] = print
) -> SACAgent:
    """Train SAC on `env_id` for cfg.total_steps environment steps; returns the agent."""
    env = gym.make(env_id)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    env.action_space.seed(seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = Actor(obs_dim, act_dim, cfg.hidden, env.action_space.low, env.action_space.high)
        q1, q2 = (mlp(obs_dim + act_dim, 1, cfg.hidden) for _ in range(2))
    critics = nn.ModuleList([q1, q2])
    q1_target, q2_target = (_frozen_copy(q) for q in (q1, q2))
    log_alpha = torch.zeros(1, requires_grad=True)
    target_entropy = -float(act_dim)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, fused=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.alpha_lr, fused=True)
    noise = torch.Generator().manual_seed(seed)
    batch_rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(min(cfg.buffer_size, cfg.total_steps), obs_dim, act_dim)

    def update() -> dict[str, float]:
        obs, action, reward, next_obs, terminated = buffer.sample(batch_rng, cfg.batch_size)
        alpha = log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_logp, _ = actor(next_obs, noise)
            next_sa = torch.cat([next_obs, next_action], -1)
            next_q = torch.min(q1_target(next_sa), q2_target(next_sa)) - alpha * next_logp
            # terminated (not truncated) transitions have no future; time-limit ends bootstrap
            target = reward[:, None] + cfg.gamma * (1 - terminated[:, None]) * next_q
        sa = torch.cat([obs, action], -1)
        critic_loss = F.mse_loss(q1(sa), target) + F.mse_loss(q2(sa), target)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()

        new_action, logp, _ = actor(obs, noise)
        new_sa = torch.cat([obs, new_action], -1)
        critics.requires_grad_(False)  # backprop through the critics, skip their weight grads
        actor_loss = (alpha * logp - torch.min(q1(new_sa), q2(new_sa))).mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()
        critics.requires_grad_(True)

        alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
        alpha_opt.zero_grad()
        alpha_loss.backward()
        alpha_opt.step()

        with torch.no_grad():
            for net, target_net in ((q1, q1_target), (q2, q2_target)):
                for p, tp in zip(net.parameters(), target_net.parameters()):
                    tp.lerp_(p, cfg.tau)
        return {"critic_loss": critic_loss.item(), "alpha": alpha.item()}

    obs, _ = env.reset(seed=seed)
    episode_return, returns, stats = 0.0, [], {}
    t0 = t_log = time.perf_counter()
    step_log = 0
    for step in range(1, cfg.total_steps + 1):
        if step <= cfg.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32), noise)[0].numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        episode_return += float(reward)
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if step > cfg.learning_starts:
            stats = update()
        if step % cfg.log_every == 0 or step == cfg.total_steps:
            now = time.perf_counter()
            recent = returns[-10:]
            log(
                f"sac {env_id} seed {seed} step {step}: episodes {len(returns)}, "
                f"return(last {len(recent)}) {np.mean(recent) if recent else float('nan'):.1f}, "
                + "".join(f"{k} {v:.3g}, " for k, v in stats.items())
                + f"{(step - step_log) / (now - t_log):.0f} steps/s"
            )
            t_log, step_log = now, step
    env.close()

    info = {"env_id": env_id, "seed": seed, "train_seconds": time.perf_counter() - t0}
    agent = SACAgent(actor, cfg, obs_dim, act_dim, info)
    if cfg.eval_episodes:
        eval_returns = evaluate(env_id, agent, cfg.eval_episodes, seed=seed + 10_000)
        info["eval_return_mean"] = float(np.mean(eval_returns))
        info["eval_returns"] = [float(r) for r in eval_returns]
        log(f"sac {env_id} seed {seed}: deterministic eval return {np.mean(eval_returns):.1f} "
            f"over {len(eval_returns)} episodes")
    return agent


def evaluate(
    env_id: str, agent: SACAgent, n_episodes: int, seed: int, deterministic: bool = True
) -> list[float]:
    """Undiscounted returns of `n_episodes` episodes; episode i resets with seed + i."""
    env = gym.make(env_id)
    generator = torch.Generator().manual_seed(seed)
    returns = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(
                agent.act(obs, deterministic, generator)
            )
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def _frozen_copy(net: nn.Module) -> nn.Module:
    target = copy.deepcopy(net)
    target.requires_grad_(False)
    return target
