"""Data preparation before training: reward transforms, state statistics and OPER-R weights.

Plain numpy on a transition table, decided once here for every algorithm from the settings they
share (`reward_transform`, `normalize_states`, and Diffusion-QL's `action_clip` and `oper_r`);
`prepare` returns the arrays and a record of what it did, which run.json keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# ------------------------------------------------------------------ rewards and sampling weights
REWARD_TRANSFORMS = {
    "none": lambda r: r,
    "x10": lambda r: r * 10.0,  # the SEEM authors' AntMaze setting (sparse 0/10)
    "minus1": lambda r: r - 1.0,  # IQL / CQL on AntMaze
    "diffql": lambda r: (r - 0.5) * 4.0,  # original Diffusion-QL on AntMaze
    "iql_locomotion": None,  # IQL on MuJoCo: r * 1000 / (max - min episode return); needs the episodes
}
LOCOMOTION_REWARD_SPAN = 1000.0


def transform_reward(reward: np.ndarray, name: str) -> np.ndarray:
    """One of the per-reward REWARD_TRANSFORMS applied to the rewards (terminals unchanged)."""
    if name not in REWARD_TRANSFORMS or REWARD_TRANSFORMS[name] is None:
        raise ValueError(f"unknown per-reward transform {name!r}; choose from "
                         f"{sorted(k for k, f in REWARD_TRANSFORMS.items() if f is not None)}")
    return REWARD_TRANSFORMS[name](np.asarray(reward, np.float32)).astype(np.float32)


def episode_returns(reward: np.ndarray, episode_id: np.ndarray) -> np.ndarray:
    """Per transition, the summed reward of the rows of its episode present in the table (an X%
    subset holds part of each episode: its returns are those of the rows it kept)."""
    _, inverse = np.unique(np.asarray(episode_id), return_inverse=True)
    totals = np.bincount(inverse, weights=np.asarray(reward, np.float64))
    return totals[inverse]


def locomotion_reward_scale(reward: np.ndarray, episode_id: np.ndarray) -> tuple[float, float, float]:
    """IQL's MuJoCo reward scale 1000 / (max - min episode return), with the two returns. Returns
    are sums over the rows present (an X% subset: the rows it kept)."""
    returns = episode_returns(reward, episode_id)
    lo, hi = float(returns.min()), float(returns.max())
    if not hi > lo:
        raise ValueError(f"reward_transform 'iql_locomotion' scales by 1000 / (max - min episode return), but "
                         f"every episode returns {lo}; use another reward_transform")
    return LOCOMOTION_REWARD_SPAN / (hi - lo), lo, hi


def prepare_rewards(reward: np.ndarray, episode_id: np.ndarray, name: str) -> tuple[np.ndarray, dict]:
    """The rewards after transform `name` and what it did (for "iql_locomotion": the scale and
    the episode returns it came from)."""
    if name != "iql_locomotion":
        return transform_reward(reward, name), {"reward_transform": name}
    reward = np.asarray(reward, np.float32)
    scale, lo, hi = locomotion_reward_scale(reward, episode_id)
    info = {"reward_transform": name, "reward_scale": scale, "return_min": lo, "return_max": hi}
    return (reward.astype(np.float64) * scale).astype(np.float32), info


def return_priorities(returns: np.ndarray) -> np.ndarray:
    """OPER-R sampling probabilities: proportional to min-max normalised episode return (base 0),
    uniform when every return is the same. Sums to 1."""
    r = np.asarray(returns, np.float64)
    span = r.max() - r.min()
    w = np.ones_like(r) if span <= 0 else (r - r.min()) / span
    return w / w.sum()


def state_normalizer(obs: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training states (TD3+BC's normalisation); identity when disabled."""
    if not enabled:
        return np.zeros(obs.shape[1], np.float32), np.ones(obs.shape[1], np.float32)
    return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-3).astype(np.float32)


# ------------------------------------------------------------------ a table, prepared
@dataclass
class Prepared:
    """What an algorithm trains on: the table's arrays after preparation, the state statistics
    (states are standardised with them on the device), OPER-R's probabilities (or None) and
    `info`, the record of what was done."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminal: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray
    policy_probabilities: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def prepare(t, settings: Mapping[str, Any]) -> Prepared:
    """A transition table (`seemrl.data.transitions.Transitions`) prepared by an algorithm's
    resolved settings: `reward_transform` and `normalize_states`; with `action_clip`, actions
    clipped to +-action_clip; with `oper_r`, the OPER-R probabilities of the actor batch (from
    the episode returns of the untransformed rewards)."""
    reward, info = prepare_rewards(t.reward, t.episode_id, settings.get("reward_transform", "none"))
    action = np.asarray(t.action, np.float32)
    if settings.get("action_clip") is not None:
        clip = settings["action_clip"]
        action = np.clip(action, -clip, clip)
    mean, std = state_normalizer(np.asarray(t.obs, np.float32), settings.get("normalize_states", True))
    probs = return_priorities(episode_returns(t.reward, t.episode_id)) if settings.get("oper_r") else None
    info["oper_r"] = probs is not None
    return Prepared(t.obs, action, reward, t.next_obs, t.terminal, mean, std, probs, info)
