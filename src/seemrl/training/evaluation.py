"""Online evaluation of the deterministic policies of all seeds of a run, in one vector environment.

Seed s's policy is tanh(actor_s((obs - mean) / std)), with the mean and std stored in the nets
(those of the training data). Every seed gets `n_episodes` environments of one Gymnasium vector
environment of S * n_episodes copies; each copy plays exactly one episode, until it terminates or
is truncated by the environment's time limit. Episode k of seed s resets with a seed derived from
(eval_seed, s, k) only, so a seed's returns do not depend on which other seeds share the vector
environment, and every evaluation of a run plays from the same start states.

A diverged seed's actor can output NaN. Its non-finite actions are replaced by zeros and the seed
is flagged (`nonfinite_actions`): a broken seed is a result, it must neither crash the evaluation
nor touch the other seeds' environments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np
import pandas as pd



class PolicyNets(Protocol):
    """What evaluation needs of an algorithm's networks: `normalize(obs)`, `policy(obs_n)` on
    stacked [S, B, ...] tensors and `obs_mean` (its device). torch is imported where it runs:
    AntMaze's environment worker processes import this module."""

    obs_mean: object

    def normalize(self, obs): ...

    def policy(self, obs_n): ...

EVAL_COLUMNS = ("step", "seed", "return_mean", "return_std", "normalized_score", "nonfinite_actions")


@dataclass
class SeedEvaluation:
    seed: int
    returns: list[float]  # one per episode, in episode order
    return_mean: float
    return_std: float
    normalized_score: float | None  # D4RL-style x100; None without reference scores
    nonfinite_actions: bool  # the actor produced NaN/inf somewhere; those actions were zeros


def normalized_score(ret: float, ref_min: float | None, ref_max: float | None) -> float | None:
    """D4RL's normalised score, 100 * (R - min) / (max - min); None if a reference is unknown."""
    if ref_min is None or ref_max is None:
        return None
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)


def episode_seed(eval_seed: int, seed: int, episode: int) -> int:
    """Reset seed of episode `episode` of training seed `seed`; SeedSequence mixes the three."""
    return int(np.random.SeedSequence([eval_seed, seed, episode]).generate_state(1)[0])


def evaluate_policies(nets: PolicyNets, seeds: list[int], env_id: str, n_episodes: int,
                      eval_seed: int = 0, ref_min: float | None = None,
                      ref_max: float | None = None) -> list[SeedEvaluation]:
    """Play `n_episodes` episodes with each seed's deterministic policy; one result per seed."""
    import torch

    S, n = len(seeds), n_episodes
    device = nets.obs_mean.device
    envs = gym.make_vec(env_id, num_envs=S * n, vectorization_mode="sync")
    try:
        if envs.spec is None or envs.spec.max_episode_steps is None:
            # every copy must end by itself, or the loop below would never stop
            raise ValueError(f"{env_id} has no time limit; cannot evaluate episodes to their end")
        # env index i = s * n + k: seed s's copies are a contiguous block
        obs, _ = envs.reset(seed=[episode_seed(eval_seed, s, k) for s in seeds for k in range(n)])
        returns = np.zeros(S * n)
        running = np.ones(S * n, dtype=bool)  # copies still in their first episode
        nonfinite = np.zeros(S, dtype=bool)
        while running.any():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(S, n, -1)
            with torch.no_grad():
                action = nets.policy(nets.normalize(obs_t))
            bad = ~torch.isfinite(action)
            nonfinite |= bad.flatten(1).any(1).cpu().numpy()
            action = torch.where(bad, torch.zeros_like(action), action)
            obs, reward, terminated, truncated, _ = envs.step(action.reshape(S * n, -1).cpu().numpy())
            # copies that already finished are auto-reset by the vector env; ignore their rewards
            returns += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
    finally:
        envs.close()

    results = []
    for i, seed in enumerate(seeds):
        r = returns[i * n:(i + 1) * n]
        mean = float(r.mean())
        results.append(SeedEvaluation(
            seed=seed, returns=r.tolist(), return_mean=mean, return_std=float(r.std()),
            normalized_score=normalized_score(mean, ref_min, ref_max),
            nonfinite_actions=bool(nonfinite[i])))
    return results


def summarize(evaluations: pd.DataFrame, last: int = 10) -> dict[str, dict]:
    """Per seed: the final evaluation, the mean of the last `last` evaluations, and the best.

    Reported for the mean return and, where reference scores are known, the normalised score
    (the paper's tables average the last 10 evaluations).
    """
    out = {}
    for seed, df in evaluations.sort_values("step").groupby("seed", sort=True):
        summary = {"evaluations": len(df), "final_step": int(df.step.iloc[-1])}
        for column, name in (("return_mean", "return"), ("normalized_score", "score")):
            values = df[column].astype(float)
            known = values.notna().all()  # all-None scores: no reference scores for this env
            summary[f"final_{name}"] = float(values.iloc[-1]) if known else None
            summary[f"last{last}_{name}"] = float(values.iloc[-last:].mean()) if known else None
            summary[f"best_{name}"] = float(values.max()) if known else None
        summary["any_nonfinite_actions"] = bool(df.nonfinite_actions.any())
        out[str(seed)] = summary
    return out
