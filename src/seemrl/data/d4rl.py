"""The original D4RL HDF5 files: catalogue, verified download, and conversion to transitions.

The files are plain HDF5 with top-level arrays `observations` [N, obs_dim], `actions`
[N, act_dim], `rewards`, `terminals`, `timeouts` [N] and, in some files, `next_observations`;
they are read with h5py alone (no d4rl, no mujoco-py). `infos/*` (e.g. AntMaze's `infos/goal`)
is not read: observations are kept exactly as stored, without the goal appended.

D4RL publishes no checksums; the first download of each file records its size and SHA-256 in
the committed lock (seemrl.data.lockfile), and every later use is checked against it.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from seemrl.data.download import DownloadResult
from seemrl.data.lockfile import verified_download
from seemrl.data.transitions import DatasetError, Transitions, write_transitions

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
BASE_URL_ENV = "SEEMRL_D4RL_BASE_URL"

# AntMaze task -> (maze in the file name, noisy_multistart, multigoal)
_ANTMAZE = {
    "umaze": ("u-maze", False, False),
    "umaze-diverse": ("u-maze", True, True),
    "medium-play": ("big-maze", True, False),
    "medium-diverse": ("big-maze", True, True),
    "large-play": ("hardest-maze", True, False),
    "large-diverse": ("hardest-maze", True, True),
}


def _catalogue() -> dict[str, str]:
    files = {}
    for env in ("halfcheetah", "hopper", "walker2d"):
        for level in ("random", "medium", "medium-replay", "medium-expert", "expert"):
            files[f"{env}-{level}-v2"] = f"gym_mujoco_v2/{env}_{level.replace('-', '_')}-v2.hdf5"
    for task, (maze, multistart, multigoal) in _ANTMAZE.items():
        stem = f"Ant_maze_{maze}_noisy_multistart_{multistart}_multigoal_{multigoal}_sparse"
        files[f"antmaze-{task}-v0"] = f"ant_maze_new/{stem}.hdf5"
        files[f"antmaze-{task}-v2"] = f"ant_maze_v2/{stem}_fixed.hdf5"
    return files


# D4RL dataset name -> file path relative to the base URL (and to the local store)
D4RL_FILES: dict[str, str] = _catalogue()

# D4RL's normalisation constants: score = 100 (R - min) / (max - min), keyed by env prefix
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "halfcheetah": (-280.178953, 12135.0),
    "antmaze": (0.0, 1.0),
}

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_TWO_D = {"observations", "actions", "next_observations"}


def ref_scores(name: str) -> tuple[float, float]:
    """(ref_min_score, ref_max_score) for a D4RL dataset name such as 'hopper-medium-v2'."""
    env = name.split("-")[0]
    if env not in D4RL_REF_SCORES:
        raise DatasetError(f"no D4RL reference scores for {name!r}; known environments: "
                           f"{', '.join(sorted(D4RL_REF_SCORES))}")
    return D4RL_REF_SCORES[env]


def file_key(name: str) -> str:
    """The file path of dataset `name` relative to the base URL (and to the store)."""
    if name not in D4RL_FILES:
        close = difflib.get_close_matches(name, D4RL_FILES, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"known: {', '.join(sorted(D4RL_FILES))}"
        raise DatasetError(f"unknown D4RL dataset {name!r}; {hint}")
    return D4RL_FILES[name]


def base_url(override: str | None = None) -> str:
    """The argument, else $SEEMRL_D4RL_BASE_URL, else the Berkeley server."""
    return (override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def read_d4rl_hdf5(path: str | os.PathLike, name: str, env_id: str) -> Transitions:
    """Read a D4RL HDF5 file into a transition table, as D4RL's `qlearning_dataset` would.

    - File with `next_observations`: every row is a transition with that next state;
      terminal = terminals, timeout = timeouts. The file's last row, if neither, ended the
      collection and is marked timeout (the transition-table convention).
    - File without: next_obs[i] = observations[i+1]; a row at a timeout is dropped (the next row
      starts a new episode, so its true next state is unknown), as is the file's last row.

    episode_id counts the terminals and timeouts before a row; step is the row's index within
    its episode, counted in the file (so an episode whose timeout row was dropped ends one step
    short and is not complete for `episode_returns`). Any problem raises DatasetError naming
    the file.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    obs = arrays["observations"]
    terminals = arrays["terminals"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool)
    n = len(obs)

    ends = terminals | timeouts
    episode_id = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    first_row = np.flatnonzero(np.r_[True, ends[:-1]])  # each episode's first row
    step = np.arange(n) - first_row[episode_id]

    has_next = "next_observations" in arrays
    if has_next:
        rows = np.arange(n)
        next_obs = arrays["next_observations"]
        timeout = timeouts.copy()
        timeout[-1] |= not terminals[-1]
    else:
        keep = ~timeouts
        keep[-1] = False
        rows = np.flatnonzero(keep)
        next_obs = obs[rows + 1]
        timeout = np.zeros(n, bool)  # every timeout row was dropped
    if len(rows) == 0:
        raise DatasetError(f"{path}: no transitions left after dropping timeout rows")

    ref_min, ref_max = ref_scores(name)
    meta = {
        "name": name,
        "env_id": env_id,
        "source": f"d4rl:{D4RL_FILES.get(name, path.name)}",
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "ref_source": "D4RL constants",
        "d4rl_rows_in_file": n,
        "d4rl_next_obs_from": "next_observations" if has_next else "observations[i+1]",
    }
    if name.startswith("antmaze"):
        jumps = int(antmaze_position_jumps(obs[rows], next_obs))
        meta["antmaze_position_jumps"] = jumps
        if jumps:
            log.warning("%s: %d transitions move the ant more than %.1f in one step: episode ends the "
                        "file's timeouts miss (D4RL's v0 AntMaze files, D4RL issue #77). Kept, as "
                        "d4rl.qlearning_dataset (the paper's data) keeps them; the v2 files fix it.",
                        path, jumps, ANTMAZE_MAX_STEP)
    return Transitions(
        obs=obs[rows], action=arrays["actions"][rows], reward=arrays["rewards"][rows],
        next_obs=next_obs, terminal=terminals[rows], timeout=timeout[rows],
        episode_id=episode_id[rows], step=step[rows], meta=meta,
    )


# The ant moves at most a few tenths of a unit per environment step (dt 0.1 s); a larger move of
# its torso (x, y: observation columns 0 and 1) means next_obs belongs to another episode.
ANTMAZE_MAX_STEP = 1.0


def antmaze_position_jumps(obs: np.ndarray, next_obs: np.ndarray) -> int:
    """Transitions whose torso position moves more than ANTMAZE_MAX_STEP."""
    return int((np.linalg.norm(next_obs[:, :2] - obs[:, :2], axis=1) > ANTMAZE_MAX_STEP).sum())


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The required (and optional next_observations) arrays, validated."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            for key in REQUIRED_KEYS + ("next_observations",):
                if key not in f and key in REQUIRED_KEYS:
                    raise DatasetError(f"{path}: HDF5 key {key!r} missing (a D4RL file has "
                                       f"{', '.join(REQUIRED_KEYS)})")
                if key not in f:  # next_observations is optional
                    continue
                if not isinstance(f[key], h5py.Dataset):
                    raise DatasetError(f"{path}: HDF5 key {key!r} is not an array")
                arrays[key] = f[key][()]
    except OSError as e:  # h5py's error for truncated, corrupt or non-HDF5 files
        raise DatasetError(f"{path}: cannot read as HDF5; truncated or corrupt? ({e})") from e

    n = len(arrays["observations"])
    for key, arr in arrays.items():
        want_ndim = 2 if key in _TWO_D else 1
        if arr.ndim != want_ndim:
            raise DatasetError(f"{path}: {key!r} has shape {arr.shape}; expected {want_ndim}-D")
        if len(arr) != n:
            raise DatasetError(f"{path}: {key!r} has {len(arr)} rows but 'observations' has {n}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DatasetError(f"{path}: {key!r} has {np.size(arr) - np.isfinite(arr).sum()} "
                               f"non-finite values")
    if n == 0:
        raise DatasetError(f"{path}: the file holds no rows")
    obs_dim = arrays["observations"].shape[1]
    if "next_observations" in arrays and arrays["next_observations"].shape[1] != obs_dim:
        raise DatasetError(f"{path}: 'next_observations' has width "
                           f"{arrays['next_observations'].shape[1]}; 'observations' has {obs_dim}")
    return arrays


def _fetch(name: str, store_dir, lock_path, base: str | None, progress: bool,
           log: Callable[[str], object]) -> DownloadResult:
    key = file_key(name)
    return verified_download(key, f"{base_url(base)}/{key}", Path(store_dir) / key, lock_path,
                             progress=progress, log=log)


def fetch_d4rl(name: str, store_dir: str | os.PathLike, lock_path: str | os.PathLike,
               base_url: str | None = None, *, progress: bool = True,
               log: Callable[[str], object] = print) -> Path:
    """`store_dir/<file key>`, downloaded if absent and always verified against the lock."""
    return _fetch(name, store_dir, lock_path, base_url, progress, log).path


def fetch_and_convert(name: str, store_dir: str | os.PathLike, lock_path: str | os.PathLike,
                      out_parquet: str | os.PathLike, env_id: str, base_url: str | None = None,
                      *, progress: bool = True, log: Callable[[str], object] = print) -> Path:
    """Fetch D4RL dataset `name` and write it as a transition table at `out_parquet`."""
    fetched = _fetch(name, store_dir, lock_path, base_url, progress, log)
    t = read_d4rl_hdf5(fetched.path, name, env_id)
    t.meta["d4rl_file_sha256"] = fetched.sha256
    write_transitions(out_parquet, t)  # atomic
    log(f"wrote {len(t)} transitions of {name} to {out_parquet}")
    return Path(out_parquet)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m seemrl.data.d4rl",
                                description="Fetch a D4RL HDF5 file and convert it.")
    p.add_argument("name", help="D4RL dataset name, e.g. hopper-medium-replay-v2")
    p.add_argument("--store", required=True, help="directory of downloaded HDF5 files")
    p.add_argument("--lock", required=True, help="checksum lock, e.g. config/datasets.lock.json")
    p.add_argument("--out", help="transition table to write (omit to only fetch)")
    p.add_argument("--env-id", help="Gymnasium env id stored in the table (needed with --out)")
    p.add_argument("--base-url", help=f"default: ${BASE_URL_ENV} or {DEFAULT_BASE_URL}")
    a = p.parse_args(argv)
    if a.out is None:
        print(fetch_d4rl(a.name, a.store, a.lock, a.base_url))
    elif a.env_id is None:
        p.error("--out needs --env-id")
    else:
        fetch_and_convert(a.name, a.store, a.lock, a.out, a.env_id, a.base_url)


if __name__ == "__main__":
    main()
