"""Online SAC, compact and single-seed: the behaviour policy of D4RL's dataset recipe.

Standard SAC (twin critics with EMA targets, tanh-squashed Gaussian actor, automatic entropy
temperature). Every random number comes from the run's own generators, so a seed fixes the
result on the CPU; `train_sac_run` also takes policy snapshots for the recipe's dataset levels
and can resume after a kill (`docs/algorithms/sac.md`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seemrl.io import atomic_path
from seemrl.training.resume import ResumeDir

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
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
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
    """Fixed-capacity ring buffer of transitions, in collection order, with episode bookkeeping.

    Updates sample (s, a, r, s', terminated) as float32 tensors. The buffer also records
    `truncated` and an `episode_id` per transition (episodes are numbered in collection order; a
    transition that terminates or truncates ends its episode), and keeps observations in
    `obs_dtype` (the environment's, float64 for MuJoCo) so exported episodes hold the true
    observations. `prefix(k)` / `episodes(k)` export the first k transitions ever added, which
    needs that none of them has been overwritten (capacity >= transitions added).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, obs_dtype=np.float32):
        self.obs = np.zeros((capacity, obs_dim), obs_dtype)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), obs_dtype)
        self.terminated = np.zeros(capacity, np.float32)
        self.truncated = np.zeros(capacity, bool)
        self.episode_id = np.zeros(capacity, np.int64)
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.added = 0  # transitions ever added (> capacity once the ring has wrapped)
        self.current_episode = 0  # id of the episode the next transition belongs to

    def add(self, obs, action, reward, next_obs, terminated, truncated: bool = False) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, terminated
        self.truncated[i], self.episode_id[i] = truncated, self.current_episode
        if terminated or truncated:
            self.current_episode += 1
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    ARRAYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode_id")

    def state_dict(self) -> dict:
        """The filled part of the buffer and its counters (tensors and ints, for torch.save)."""
        return {"arrays": {name: torch.from_numpy(getattr(self, name)[:self.size].copy()) for name in self.ARRAYS},
                "size": self.size, "pos": self.pos, "added": self.added, "current_episode": self.current_episode}

    def load_state_dict(self, state: dict) -> None:
        for name in self.ARRAYS:
            getattr(self, name)[:state["size"]] = state["arrays"][name].numpy()
        self.size, self.pos, self.added = state["size"], state["pos"], state["added"]
        self.current_episode = state["current_episode"]

    def sample(self, rng: np.random.Generator, batch_size: int) -> list[torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch_size)
        return [
            torch.from_numpy(np.asarray(a[idx], dtype=np.float32))
            for a in (self.obs, self.action, self.reward, self.next_obs, self.terminated)
        ]

    def prefix(self, k: int) -> dict[str, np.ndarray]:
        """The first k transitions ever added, as arrays (copies) in collection order.

        Keys: obs, action, reward, next_obs, terminated (bool), truncated, episode_id. If the
        k-th transition does not end its episode (the episode was in progress at the cut), it is
        marked truncated: its next_obs is the true next observation, so it ends a valid episode.
        """
        if not 0 < k <= min(self.added, self.capacity):
            raise ValueError(f"cannot export the first {k} transitions: {self.added} added")
        if self.added > self.capacity:
            raise ValueError(
                f"the ring buffer wrapped ({self.added} added, capacity {self.capacity}): its "
                "first transitions are gone; use a capacity of at least the steps to export"
            )
        return transitions_prefix({name: getattr(self, name) for name in self.ARRAYS}, k)

    def episodes(self, k: int) -> list[dict[str, Any]]:
        """The first k transitions as episode dicts (see `split_episodes`)."""
        return split_episodes(self.prefix(k))


def transitions_prefix(arrays: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """The first k of transition arrays in collection order (obs, action, reward, next_obs,
    terminated, truncated and, if absent, episode_id numbered from the episode ends), as copies.
    If the k-th transition does not end its episode (in progress at the cut), it is marked
    truncated: its next_obs is the true next observation, so it ends a valid episode."""
    if not 0 < k <= len(arrays["reward"]):
        raise ValueError(f"cannot export the first {k} transitions: {len(arrays['reward'])} recorded")
    out = {name: np.array(arrays[name][:k]) for name in ("obs", "action", "reward", "next_obs", "truncated")}
    out["terminated"] = np.asarray(arrays["terminated"][:k]).astype(bool)
    if "episode_id" in arrays:
        out["episode_id"] = np.array(arrays["episode_id"][:k])
    else:
        ends = out["terminated"] | out["truncated"]
        out["episode_id"] = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    if not (out["terminated"][-1] or out["truncated"][-1]):
        out["truncated"][-1] = True  # cut mid-episode
    return {name: out[name] for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode_id")}


def split_episodes(t: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Cut transition arrays (as from `ReplayBuffer.prefix`) into episode dicts.

    Each episode has `observations` [T+1, obs_dim] (the T states plus the last next_obs),
    `actions` [T, act_dim], `rewards`, `terminations`, `truncations` [T] and `seed` None: the
    format of seemrl.data.minari_source.collect_episodes. An episode ends at each transition
    that terminates or truncates. Raises ValueError if the arrays are not whole, contiguous
    episodes (last transition not an episode end, episode ids not constant within an episode
    or not changing between episodes, or next_obs[t] != obs[t+1] inside an episode).
    """
    ends_episode = np.asarray(t["terminated"], bool) | np.asarray(t["truncated"], bool)
    n = len(ends_episode)
    ends = np.flatnonzero(ends_episode) + 1
    if n == 0 or not ends_episode[-1]:
        raise ValueError("the last transition does not end an episode")
    episodes = []
    start = 0
    for stop in ends:
        ids = t["episode_id"][start:stop]
        if (ids != ids[0]).any() or (start > 0 and t["episode_id"][start - 1] == ids[0]):
            raise ValueError(f"episode ids do not match the episode ends at rows {start}:{stop}")
        obs, next_obs = t["obs"][start:stop], t["next_obs"][start:stop]
        if not np.array_equal(obs[1:], next_obs[:-1]):
            raise ValueError(f"rows {start}:{stop}: next_obs[t] != obs[t+1] inside an episode")
        episodes.append(
            {
                "observations": np.concatenate([obs, next_obs[-1:]]),
                "actions": np.asarray(t["action"][start:stop], np.float32),
                "rewards": np.asarray(t["reward"][start:stop], np.float64),
                "terminations": np.asarray(t["terminated"][start:stop], bool),
                "truncations": np.asarray(t["truncated"][start:stop], bool),
                "seed": None,
            }
        )
        start = stop
    return episodes


@dataclass
class Snapshot:
    """A copy of the policy after `step` environment steps and its deterministic evaluation."""

    step: int
    eval_returns: list[float]
    agent: SACAgent  # CPU actor; agent.info holds step and the evaluation too

    @property
    def eval_return(self) -> float:
        return float(np.mean(self.eval_returns))


@dataclass
class SACRun:
    """What `train_sac_run` returns: the final agent, the snapshots, the replay buffer."""

    agent: SACAgent
    snapshots: list[Snapshot] = field(default_factory=list)
    buffer: ReplayBuffer | None = None
    episode_returns: list[float] = field(default_factory=list)  # training episodes, in order


def train_sac_run(
    env_id: str,
    cfg: SACConfig,
    seed: int,
    log: Callable[[str], None] = print,
    device: str | torch.device = "cpu",
    snapshot_every: int = 0,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    resume: ResumeDir | None = None,
    resume_every_s: float = 600.0,
    monitor=None,
) -> SACRun:
    """Train SAC on `env_id` for cfg.total_steps environment steps: the agent, the snapshots and
    the replay buffer.

    Every `snapshot_every` environment steps (0: never) the current policy is copied and
    evaluated deterministically over cfg.eval_episodes episodes with the same reset seeds as the
    final evaluation (seed + 10000 + i), so snapshot returns are comparable with each other and
    with the final one. `on_snapshot` (optional) is called with each snapshot as it is taken;
    all of them are also returned in order. A snapshot at the last step doubles as the final
    evaluation. The buffer holds min(cfg.buffer_size, cfg.total_steps) transitions; to export the
    first K of them as episodes, it must not have wrapped (buffer_size >= total_steps).

    With `resume` (a `seemrl.training.resume.ResumeDir` naming this run), the whole training state (networks,
    targets, optimisers, temperature, every random generator, the environment's MuJoCo state, the
    buffer, the snapshots so far) is saved after a snapshot step once `resume_every_s` seconds have
    passed since the last save, and a run finding a state of its own continues from it: on the
    CPU it ends bit for bit where an uninterrupted run ends. The caller clears it when done.
    A `monitor` (`seemrl.training.tracking.Monitor` of seed `seed`) gets the logged values and progress.
    """
    if snapshot_every and not cfg.eval_episodes:
        raise ValueError("snapshots are evaluated over cfg.eval_episodes episodes; it is 0")
    device = torch.device(device)
    env = gym.make(env_id)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    env.action_space.seed(seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = Actor(obs_dim, act_dim, cfg.hidden, env.action_space.low, env.action_space.high)
        q1, q2 = (mlp(obs_dim + act_dim, 1, cfg.hidden) for _ in range(2))
    actor.to(device)
    critics = nn.ModuleList([q1, q2]).to(device)
    q1_target, q2_target = (_frozen_copy(q) for q in (q1, q2))
    online_params = [*q1.parameters(), *q2.parameters()]
    target_params = [*q1_target.parameters(), *q2_target.parameters()]
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    target_entropy = -float(act_dim)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, fused=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.alpha_lr, fused=True)
    noise = torch.Generator(device=device).manual_seed(seed)
    batch_rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(
        min(cfg.buffer_size, cfg.total_steps), obs_dim, act_dim,
        obs_dtype=env.observation_space.dtype,
    )
    snapshots: list[Snapshot] = []

    def cpu_agent(info: dict) -> SACAgent:
        return SACAgent(copy.deepcopy(actor).cpu(), cfg, obs_dim, act_dim, info)

    def update() -> dict[str, torch.Tensor]:
        obs, action, reward, next_obs, terminated = (
            x.to(device, non_blocking=True) for x in buffer.sample(batch_rng, cfg.batch_size)
        )
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

        with torch.no_grad():  # one fused call: the update is bound by per-op overhead
            torch._foreach_lerp_(target_params, online_params, cfg.tau)
        # tensors, not floats: .item() would synchronise a GPU at every step
        return {"critic_loss": critic_loss.detach(), "alpha": alpha}

    obs, _ = env.reset(seed=seed)
    episode_return, returns, stats = 0.0, [], {}
    modules = {"actor": actor, "q1": q1, "q2": q2, "q1_target": q1_target, "q2_target": q2_target}
    optimizers = {"actor": actor_opt, "critic": critic_opt, "alpha": alpha_opt}
    start, elapsed = 0, 0.0  # the step a resumed run continues after, and its seconds before
    if resume is not None and (state := resume.load(log)) is not None:
        from seemrl.algos.online_sac import set_env_state

        start, elapsed = state["step"], state["elapsed"]
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        noise.set_state(state["noise"])
        batch_rng.bit_generator.state = state["batch_rng"]
        env.action_space.np_random.bit_generator.state = state["action_space_rng"]
        set_env_state(env, state["env"])
        obs, episode_return, returns = state["obs"].numpy().copy(), state["episode_return"], list(state["returns"])
        buffer.load_state_dict(state["buffer"])
        for snap in state["snapshots"]:
            agent = cpu_agent(snap["info"])
            agent.actor.load_state_dict(snap["actor"])
            snapshots.append(Snapshot(snap["step"], list(snap["eval_returns"]), agent))
        log(f"sac {env_id} seed {seed}: resumed from step {start} ({resume.state_path})")

    def save_state(step: int) -> None:
        from seemrl.algos.online_sac import env_state

        resume.save({
            "step": step, "elapsed": elapsed + time.perf_counter() - t0,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "log_alpha": log_alpha.detach().clone(), "noise": noise.get_state(),
            "batch_rng": batch_rng.bit_generator.state,
            "action_space_rng": env.action_space.np_random.bit_generator.state, "env": env_state(env),
            "obs": torch.from_numpy(np.array(obs)), "episode_return": episode_return, "returns": list(returns),
            "buffer": buffer.state_dict(),
            "snapshots": [{"step": s.step, "eval_returns": s.eval_returns, "info": s.agent.info,
                           "actor": s.agent.actor.state_dict()} for s in snapshots],
        })
        log(f"sac {env_id} seed {seed} step {step}: resume state saved in {resume.state_path}")

    t0 = t_log = t_saved = time.perf_counter()
    step_log = start
    for step in range(start + 1, cfg.total_steps + 1):
        if step <= cfg.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32).to(device)
                action = actor(x, noise)[0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        episode_return += float(reward)
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if step > cfg.learning_starts:
            stats = update()
        if snapshot_every and step % snapshot_every == 0:
            agent = cpu_agent({"env_id": env_id, "seed": seed, "step": step})
            eval_returns = evaluate(env_id, agent, cfg.eval_episodes, seed=seed + 10_000)
            agent.info["eval_returns"] = [float(r) for r in eval_returns]
            agent.info["eval_return_mean"] = float(np.mean(eval_returns))
            snapshots.append(Snapshot(step, agent.info["eval_returns"], agent))
            if monitor is not None:
                monitor.evaluations(step, [{"step": step, "seed": seed, "return_mean": snapshots[-1].eval_return}])
            log(f"sac {env_id} seed {seed} step {step}: snapshot, deterministic eval return "
                f"{snapshots[-1].eval_return:.1f} over {len(eval_returns)} episodes")
            if on_snapshot is not None:
                on_snapshot(snapshots[-1])
            if resume is not None and step < cfg.total_steps and time.perf_counter() - t_saved >= resume_every_s:
                save_state(step)
                t_saved = time.perf_counter()
        if step % cfg.log_every == 0 or step == cfg.total_steps:
            now = time.perf_counter()
            recent = returns[-10:]
            if monitor is not None:
                monitor.metrics(step, [{"step": step, "seed": seed, "episodes": len(returns),
                                        "episode_return": float(np.mean(recent)) if recent else math.nan,
                                        **{k: float(v) for k, v in stats.items()}}])
                monitor.progress(step, (step - start) / (now - t0))
            log(
                f"sac {env_id} seed {seed} step {step}: episodes {len(returns)}, "
                f"return(last {len(recent)}) {np.mean(recent) if recent else float('nan'):.1f}, "
                + "".join(f"{k} {float(v):.3g}, " for k, v in stats.items())
                + f"{(step - step_log) / (now - t_log):.0f} steps/s"
            )
            t_log, step_log = now, step
    env.close()

    info = {"env_id": env_id, "seed": seed, "train_seconds": elapsed + time.perf_counter() - t0,
            "device": str(device)}
    agent = cpu_agent(info)
    if cfg.eval_episodes:
        last = snapshots[-1] if snapshots else None
        if last is not None and last.step == cfg.total_steps:
            eval_returns = last.eval_returns  # same policy, same episodes
        else:
            eval_returns = evaluate(env_id, agent, cfg.eval_episodes, seed=seed + 10_000)
        info["eval_return_mean"] = float(np.mean(eval_returns))
        info["eval_returns"] = [float(r) for r in eval_returns]
        log(f"sac {env_id} seed {seed}: deterministic eval return {np.mean(eval_returns):.1f} "
            f"over {len(eval_returns)} episodes")
    return SACRun(agent, snapshots, buffer, returns)


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
