"""Minari datasets: collect episodes with a behaviour policy, write them as a Minari dataset,
and flatten any Minari dataset (ours or a downloaded D4RL/mujoco one) into a transition table.

Minari (0.5.x) facts this module relies on:
- an episode holds T+1 observations and T actions/rewards/terminations/truncations, so the last
  transition of a truncated episode still has its true next observation;
- datasets live under the directory in `MINARI_DATASETS_PATH`, read at every call, at
  `<root>/<dataset_id>/data`; hidden directories under the root are ignored by its listings;
- `create_dataset_from_buffers` with `EpisodeBuffer`s needs no jax (`DataCollector` does);
- `minari.get_normalized_score` needs `ref_min_score` and `ref_max_score` in the metadata, and
  Minari only stores them when `ref_max_score` is given (if `ref_min_score` is None it would
  roll out 100 random episodes to estimate it, so we require both).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np

from seemrl.data.transitions import DatasetError, Transitions


@contextlib.contextmanager
def use_minari_root(root: str | os.PathLike) -> Iterator[Path]:
    """Point Minari at `root` for the duration of the block (restores the previous setting)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield root
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def collect_episodes(
    env_id: str, agent, n_transitions: int, seed: int, deterministic: bool = False
) -> list[dict[str, Any]]:
    """Roll out `agent` (or uniform random actions if None) for exactly `n_transitions` steps.

    Each episode is a dict with `observations` [T+1, ...], `actions` [T, act_dim], `rewards`,
    `terminations`, `truncations` [T] and the reset `seed`. The last episode is cut when the
    budget runs out and is then marked truncated at its final step. Stochastic actions (the
    default) give the data coverage around the policy. `agent` needs only
    `act(obs, deterministic, generator=...)` (e.g. seemrl.generate.behaviour_sac.SACAgent). Use a collection
    seed different from the agent's training seed so that the two noise streams differ.
    """
    import torch

    env = gym.make(env_id)
    env.action_space.seed(seed)
    episode_seeds = np.random.default_rng(seed)
    action_noise = torch.Generator().manual_seed(seed)
    episodes: list[dict[str, Any]] = []
    remaining = n_transitions
    while remaining > 0:
        episode_seed = int(episode_seeds.integers(2**31))
        obs, _ = env.reset(seed=episode_seed)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done and remaining > 0:
            if agent is None:
                action = env.action_space.sample()
            else:
                action = agent.act(obs, deterministic, generator=action_noise)
            obs, reward, terminated, truncated, _ = env.step(action)
            remaining -= 1
            truncated = truncated or (remaining == 0 and not terminated)  # budget cut
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        episodes.append(
            {
                "observations": _stack(observations),
                "actions": np.asarray(actions, dtype=np.float32),
                "rewards": np.asarray(rewards, dtype=np.float64),
                "terminations": np.asarray(terminations, dtype=bool),
                "truncations": np.asarray(truncations, dtype=bool),
                "seed": episode_seed,
            }
        )
    env.close()
    return episodes


def _stack(observations: list) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(observations[0], dict):
        return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack(observations)


def write_minari_dataset(
    dataset_id: str,
    episodes: list[dict[str, Any]],
    env_id: str,
    ref_min_score: float,
    ref_max_score: float,
    minari_root: str | os.PathLike,
    algorithm_name: str,
    author: str = "seemrl",
    author_email: str = "n/a",
    code_permalink: str = "https://github.com/seemrl/seemrl",
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `episodes` as Minari dataset `dataset_id` under `minari_root`; returns its dir.

    The dataset is built in a hidden temporary root beside the final one and moved into place
    with a rename, so a crash never leaves a half-written dataset under its id.
    """
    from minari import create_dataset_from_buffers
    from minari.data_collector import EpisodeBuffer

    _check_dataset_id(dataset_id)
    root = Path(minari_root).resolve()
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"Minari dataset {dataset_id} already exists at {final}")
    buffers = [
        EpisodeBuffer(
            id=i,
            seed=ep.get("seed"),
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=list(ep["rewards"]),
            terminations=list(ep["terminations"]),
            truncations=list(ep["truncations"]),
        )
        for i, ep in enumerate(episodes)
    ]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-minari-", dir=root))
    try:
        with use_minari_root(staging):
            create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_id,  # stores the env spec, so recover_environment() works
                eval_env=env_id,
                algorithm_name=algorithm_name,
                author=author,
                author_email=author_email,
                code_permalink=code_permalink,
                ref_min_score=float(ref_min_score),
                ref_max_score=float(ref_max_score),
                description=description or f"{algorithm_name} rollouts on {env_id}",
            )
        _copy_namespace_metadata(staging, root, dataset_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        previous = staging / ".previous"
        if final.exists():  # overwrite: move the old one aside, drop it once the new one is in
            os.replace(final, previous)
        try:
            os.replace(staging / dataset_id, final)
        except BaseException:
            if previous.exists():
                os.replace(previous, final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_dataset_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import DATASET_ID_RE

    match = DATASET_ID_RE.fullmatch(dataset_id)
    # Minari's own parser crashes on a missing version, so require "-v<N>" here
    if not match or match.group("version") is None:
        raise ValueError(
            f"bad Minari dataset id {dataset_id!r}: use (namespace/)name-v<N>, e.g. seemrl/hopper/sac-v0"
        )


def _copy_namespace_metadata(staging: Path, root: Path, dataset_id: str) -> None:
    """Carry Minari's namespace_metadata.json files of new namespaces over to the real root."""
    parts = dataset_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        src = staging.joinpath(*parts[:depth], "namespace_metadata.json")
        dst = root.joinpath(*parts[:depth], "namespace_metadata.json")
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def flatten_observations(observations: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """[T+1, obs_dim] float32 from an episode's observations.

    Dict observations (goal-conditioned AntMaze) become concat(achieved_goal, observation,
    desired_goal): Gymnasium-Robotics' `observation` leaves out the torso's x, y (the ant's
    position is `achieved_goal`), so without it a policy would not know where it is. The first
    29 entries then follow D4RL's layout (qpos with x, y first, then qvel), in the env's frame.
    """
    if isinstance(observations, dict):
        parts = [observations["observation"], observations["desired_goal"]]
        if "achieved_goal" in observations:
            parts.insert(0, observations["achieved_goal"])
        observations = np.concatenate(parts, axis=-1)
    return np.asarray(observations, dtype=np.float32)


def minari_to_transitions(dataset_id: str, minari_root: str | os.PathLike) -> Transitions:
    """Load Minari dataset `dataset_id` from `minari_root` and flatten it to transitions."""
    import minari

    with use_minari_root(minari_root) as root:
        where = f"Minari dataset {dataset_id} (under {root})"
        try:
            dataset = minari.load_dataset(dataset_id)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DatasetError(f"{where}: cannot load ({e})") from e
        columns: dict[str, list[np.ndarray]] = {k: [] for k in (
            "obs", "action", "reward", "next_obs", "terminal", "timeout", "episode_id", "step"
        )}
        for episode in dataset.iterate_episodes():
            obs = flatten_observations(episode.observations)
            n = len(episode.rewards)
            if len(obs) != n + 1 or len(episode.actions) != n:
                raise DatasetError(
                    f"{where}: episode {episode.id} has {len(obs)} observations and "
                    f"{len(episode.actions)} actions for {n} rewards (need T+1, T, T)"
                )
            columns["obs"].append(obs[:-1])
            columns["next_obs"].append(obs[1:])
            columns["action"].append(np.asarray(episode.actions, np.float32).reshape(n, -1))
            columns["reward"].append(np.asarray(episode.rewards, np.float32))
            columns["terminal"].append(np.asarray(episode.terminations, bool))
            columns["timeout"].append(np.asarray(episode.truncations, bool))
            columns["episode_id"].append(np.full(n, episode.id, np.int64))
            columns["step"].append(np.arange(n, dtype=np.int32))
        if not columns["reward"]:
            raise DatasetError(f"{where}: has no episodes")
        metadata = dataset.storage.metadata
        env_spec = dataset.env_spec

    meta = {
        "name": dataset_id,
        "env_id": env_spec.id if env_spec is not None else None,
        "source": f"minari:{dataset_id}",
        "ref_min_score": metadata.get("ref_min_score"),
        "ref_max_score": metadata.get("ref_max_score"),
        "ref_source": "minari dataset metadata",
        "minari_version": metadata.get("minari_version"),
        "algorithm_name": metadata.get("algorithm_name"),
        "minari_total_episodes": metadata.get("total_episodes"),
        "minari_total_steps": metadata.get("total_steps"),
    }
    return Transitions(**{k: np.concatenate(v) for k, v in columns.items()}, meta=meta)


# Seconds before a dataset hub that does not answer is reported, rather than waited on.
HUB_TIMEOUT_S = 10


def fetch_minari(dataset_id: str, minari_root: str | os.PathLike, remote: str | None = None) -> Path:
    """Make `dataset_id` available under `minari_root`: a pre-seeded copy if there is one, else a
    download from the Minari hub (`remote`, e.g. `hf://farama-minari`; default `MINARI_REMOTE`).

    Failures name the dataset and the remote and point to the offline alternatives.
    """
    import minari

    _check_dataset_id(dataset_id)
    with use_minari_root(minari_root) as root:
        local = root / dataset_id
        if (local / "data").is_dir():
            try:
                minari.load_dataset(dataset_id)
            except Exception as e:  # a broken pre-seeded copy is an error, not a re-download
                raise DatasetError(f"pre-seeded Minari dataset {dataset_id} at {local} cannot be loaded: {e}") from e
            return local
        remote = remote or os.environ.get("MINARI_REMOTE", "hf://farama-minari")
        # The hub clients read their timeouts from the environment; keep an unreachable hub short.
        for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
            os.environ.setdefault(var, str(HUB_TIMEOUT_S))
        try:
            _probe_hub(remote)  # the hub client retries with backoff for ~25 s; answer in seconds
            minari.download_dataset(f"{remote.rstrip('/')}/{dataset_id}")
        except Exception as e:
            raise DatasetError(
                f"could not download Minari dataset {dataset_id} from {remote}: {type(e).__name__}: {e}\n"
                f"Offline alternatives: pre-seed it (copy the dataset folder to {local}, i.e. under "
                f"MINARI_DATASETS_PATH), `dvc pull` the project's resources/, or use a dataset with "
                f"`source: generate` in config/datasets.yaml."
            ) from e
        if not (local / "data").is_dir():
            raise DatasetError(f"Minari download of {dataset_id} from {remote} left no dataset at {local}")
        return local


def _probe_hub(remote: str) -> None:
    """Raise ConnectionError within HUB_TIMEOUT_S if the host behind `remote` does not answer."""
    import socket
    from urllib.parse import urlsplit

    kind = remote.split("://", 1)[0]
    endpoint = {"hf": os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                "gcp": "https://storage.googleapis.com"}.get(kind)
    if endpoint is None:
        raise ValueError(f"unknown Minari remote {remote!r}: expected hf://... or gcp://...")
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"{endpoint} unreachable ({e})") from e
