"""The Parquet transition table: the one dataset format every training job reads.

One row per transition: obs, action, reward, next_obs (the true one, also at a timeout),
terminal (do not bootstrap), timeout (bootstrap), episode_id and step. File metadata (JSON under
the key `seemrl`) names the dataset, its environment, its source and D4RL-style reference scores.
Rows of an episode need not be contiguous or complete (an X% subset keeps a random sample), so
per-episode statistics come from `episode_id` and `step`, never from row order.
`docs/data.md` gives the schema.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seemrl.io import atomic_path, sha256_file

SCHEMA_VERSION = 1
META_KEY = b"seemrl"
REQUIRED_META = ("name", "env_id", "source")

# column -> numpy dtype; the three vector columns are stored as fixed-size lists of float32
_DTYPES = {
    "obs": np.float32,
    "action": np.float32,
    "reward": np.float32,
    "next_obs": np.float32,
    "terminal": np.bool_,
    "timeout": np.bool_,
    "episode_id": np.int64,
    "step": np.int32,
}
_VECTOR_COLUMNS = {"obs": "obs_dim", "action": "act_dim", "next_obs": "obs_dim"}
COLUMNS = tuple(_DTYPES)


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Transitions:
    """A transition table in memory: N rows, numpy arrays, plus the file metadata."""

    obs: np.ndarray  # [N, obs_dim] float32
    action: np.ndarray  # [N, act_dim] float32
    reward: np.ndarray  # [N] float32
    next_obs: np.ndarray  # [N, obs_dim] float32
    terminal: np.ndarray  # [N] bool
    timeout: np.ndarray  # [N] bool
    episode_id: np.ndarray  # [N] int64
    step: np.ndarray  # [N] int32
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in _DTYPES.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        for name in COLUMNS:
            want_ndim = 2 if name in _VECTOR_COLUMNS else 1
            if getattr(self, name).ndim != want_ndim:
                raise ValueError(f"column {name!r} has shape {getattr(self, name).shape}; "
                                 f"expected {want_ndim}-D")
        lengths = {name: len(getattr(self, name)) for name in COLUMNS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns have different lengths: {lengths}")
        if self.obs.shape != self.next_obs.shape:
            raise ValueError(f"obs {self.obs.shape} and next_obs {self.next_obs.shape} differ")

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def act_dim(self) -> int:
        return self.action.shape[1]

    def take(self, indices: np.ndarray) -> Transitions:
        """Rows `indices` (any integer index array) as a new table with a copy of the metadata."""
        indices = np.asarray(indices)
        columns = {name: getattr(self, name)[indices] for name in COLUMNS}
        return Transitions(**columns, meta=dict(self.meta))


def write_transitions(path: str | os.PathLike, t: Transitions) -> None:
    """Write `t` to a Parquet file at `path`, atomically. obs_dim/act_dim are taken from the data."""
    missing = [k for k in REQUIRED_META if k not in t.meta]
    if missing:
        raise ValueError(f"Transitions.meta lacks {missing}; needed to write {path}")
    meta = {
        "ref_min_score": None,
        "ref_max_score": None,
        "ref_source": None,
        **t.meta,
        "obs_dim": t.obs_dim,
        "act_dim": t.act_dim,
        "n_transitions": len(t),
        "schema_version": SCHEMA_VERSION,
    }
    arrays = {}
    for name in COLUMNS:
        arr = getattr(t, name)
        if name in _VECTOR_COLUMNS:
            # ravel + fixed width keeps the write a single zero-copy buffer, no per-row objects
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.ravel()), arr.shape[1])
        else:
            arrays[name] = pa.array(arr)
    table = pa.table(arrays).replace_schema_metadata(
        {META_KEY: json.dumps(meta, default=_json_scalar)}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_transitions(path: str | os.PathLike) -> Transitions:
    """Read and validate a transition table; any problem raises DatasetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e

    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise DatasetError(f"{path}: no '{META_KEY.decode()}' metadata; not a seemrl transition file")
    meta = json.loads(raw_meta)
    for key in ("obs_dim", "act_dim"):
        if not isinstance(meta.get(key), int):
            raise DatasetError(f"{path}: metadata lacks integer {key!r}")

    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")

    columns = {}
    for name in COLUMNS:
        chunked = table.column(name)
        if chunked.null_count:
            raise DatasetError(f"{path}: column {name!r} has {chunked.null_count} null values")
        arr = chunked.combine_chunks()
        if name in _VECTOR_COLUMNS:
            width = meta[_VECTOR_COLUMNS[name]]
            if not pa.types.is_fixed_size_list(arr.type) or arr.type.list_size != width:
                raise DatasetError(
                    f"{path}: column {name!r} has type {arr.type}; expected "
                    f"fixed_size_list<float32>[{width}] ({_VECTOR_COLUMNS[name]} in metadata)"
                )
            # flatten() honours slice offsets; the reshape is free
            values = arr.flatten().to_numpy(zero_copy_only=False)
            columns[name] = values.astype(np.float32, copy=False).reshape(len(arr), width)
        else:
            columns[name] = arr.to_numpy(zero_copy_only=False)
    try:
        return Transitions(**columns, meta=meta)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from e


def _json_scalar(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars in metadata
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON serialisable")


def episode_returns(t: Transitions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-episode (episode ids, returns, complete?) from the rows present.

    An episode is complete when all its steps 0..L-1 are present and its last step ends the
    episode (terminal or timeout); only complete episodes have a meaningful return.
    """
    if len(t) == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
    ids, inverse = np.unique(t.episode_id, return_inverse=True)
    returns = np.bincount(inverse, weights=t.reward.astype(np.float64), minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    # the last row of each episode by step: sort by (episode, step), take each group's end
    order = np.lexsort((t.step, inverse))
    group_end = np.r_[np.flatnonzero(np.diff(inverse[order])), len(order) - 1]
    last = order[group_end]
    ends_episode = t.terminal[last] | t.timeout[last]
    complete = ends_episode & (t.step[last].astype(np.int64) + 1 == counts)
    return ids, returns, complete


def dataset_card(t: Transitions, path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a transition file for humans and for provenance records."""
    ids, returns, complete = episode_returns(t)
    done = returns[complete]

    def stat(f):
        return float(f(done)) if len(done) else None

    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "name": t.meta.get("name"),
        "env_id": t.meta.get("env_id"),
        "source": t.meta.get("source"),
        "n_transitions": len(t),
        "n_episodes": len(ids),
        "n_complete_episodes": int(complete.sum()),
        "episode_return": {
            "over": "complete episodes (all steps present, last one terminal or timeout)",
            "mean": stat(np.mean),
            "std": stat(np.std),
            "min": stat(np.min),
            "max": stat(np.max),
        },
        "obs_dim": t.obs_dim,
        "act_dim": t.act_dim,
        "n_terminals": int(t.terminal.sum()),
        "n_timeouts": int(t.timeout.sum()),
        **({"antmaze_position_jumps": t.meta["antmaze_position_jumps"]} if "antmaze_position_jumps" in t.meta else {}),
        "normalised_score": {
            "formula": "100 * (R - ref_min_score) / (ref_max_score - ref_min_score)",
            "ref_min_score": t.meta.get("ref_min_score"),
            "ref_max_score": t.meta.get("ref_max_score"),
            "ref_source": t.meta.get("ref_source"),
        },
        "meta": t.meta,
    }


__all__ = [
    "COLUMNS",
    "DatasetError",
    "Transitions",
    "dataset_card",
    "episode_returns",
    "read_transitions",
    "write_transitions",
]
