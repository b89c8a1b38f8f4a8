"""X% transition subsets (SEEM paper Sec. 5.2): uniform over transitions, nested, one per seed.

All percentages of one dataset come from a single seeded permutation of the row indices; the
X% subset is its first ceil(N * X / 100) entries. Hence 1% is inside 10% is inside 100%, and
every algorithm trained on "10% of hopper-medium" sees exactly the same rows.

The subset seed feeds its own random stream (salted below), so it is independent of training
seeds even when the same integer is used for both.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import warnings

import numpy as np

from seemrl.data.transitions import read_transitions, write_transitions
from seemrl.io import sha256_file

log = logging.getLogger(__name__)

# salt of the subset random stream: keeps it distinct from any stream seeded with the bare seed
_SUBSET_STREAM = 0x5EE5
DEFAULT_MIN_TRANSITIONS = 10 * 256  # ten batches of 256


class SmallSubsetWarning(UserWarning):
    """A subset is too small to train on reliably."""


def subset_size(n: int, percent: float) -> int:
    """ceil(n * percent / 100), robust to float noise (1000 * 1.1 / 100 is 11.000000000000002)."""
    _check_percent(percent)
    return min(n, math.ceil(round(n * percent / 100, 9)))


def subset_indices(n: int, percent: float, seed: int) -> np.ndarray:
    """Sorted row indices of the `percent`% subset of n rows; nested across percents for a seed."""
    k = subset_size(n, percent)
    permutation = np.random.default_rng([_SUBSET_STREAM, seed]).permutation(n)
    return np.sort(permutation[:k])


def make_subset(
    src_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    percent: float,
    seed: int,
    min_transitions: int = DEFAULT_MIN_TRANSITIONS,
) -> dict:
    """Write the `percent`% subset of `src_parquet` to `out_parquet` (atomically).

    Returns a summary dict; `too_small` is set (and a SmallSubsetWarning emitted) when the subset
    has fewer than `min_transitions` rows.
    """
    _check_percent(percent)
    parent = read_transitions(src_parquet)
    indices = subset_indices(len(parent), percent, seed)
    subset = parent.take(indices)
    parent_name = parent.meta.get("name")
    subset.meta.update(
        name=f"{parent_name}@{percent:g}%",
        parent_name=parent_name,
        parent_n_transitions=len(parent),
        parent_sha256=sha256_file(src_parquet),
        subset_percent=percent,
        subset_seed=seed,
    )
    write_transitions(out_parquet, subset)

    too_small = len(subset) < min_transitions
    if too_small:
        msg = (
            f"{out_parquet}: the {percent:g}% subset has {len(subset)} transitions, fewer than "
            f"{min_transitions}; too small to train on reliably"
        )
        warnings.warn(msg, SmallSubsetWarning, stacklevel=2)
        log.warning(msg)
    return {
        "path": str(out_parquet),
        "percent": percent,
        "seed": seed,
        "n_parent": len(parent),
        "n_subset": len(subset),
        "min_transitions": min_transitions,
        "too_small": too_small,
    }


def _check_percent(percent: float) -> None:
    if not (isinstance(percent, numbers.Real) and 0 < percent <= 100):
        raise ValueError(f"subset percent must be in (0, 100], got {percent!r}")
