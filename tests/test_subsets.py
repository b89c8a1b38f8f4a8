import warnings

import numpy as np
import pytest
from helpers import make_transitions

from seemrl.data.subsets import SmallSubsetWarning, make_subset, subset_indices, subset_size
from seemrl.data.transitions import read_transitions, write_transitions
from seemrl.io import sha256_file


def test_sizes_are_ceilings():
    assert subset_size(1000, 1) == 10
    assert subset_size(1000, 1.1) == 11  # 1000 * 1.1 / 100 is 11.000000000000002 in floats
    assert subset_size(999, 10) == 100
    assert subset_size(5, 1) == 1
    assert subset_size(1000, 100) == 1000
    for pct in (1, 10, 50, 100):
        assert len(subset_indices(12345, pct, seed=0)) == subset_size(12345, pct)


def test_nested_sorted_unique_and_deterministic():
    n = 10_000
    small, medium, large, full = (subset_indices(n, p, seed=3) for p in (1, 10, 50, 100))
    assert set(small) <= set(medium) <= set(large) <= set(full)
    np.testing.assert_array_equal(full, np.arange(n))
    for idx in (small, medium, large):
        assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    np.testing.assert_array_equal(medium, subset_indices(n, 10, seed=3))
    assert not np.array_equal(medium, subset_indices(n, 10, seed=4))


def test_roughly_uniform_over_rows():
    n = 100_000
    idx = subset_indices(n, 10, seed=0)
    counts = np.bincount(idx * 10 // n, minlength=10)  # rows per tenth of the table
    assert counts.min() > 0.9 * counts.mean()


def test_independent_of_a_same_valued_training_seed():
    # the subset stream is salted: it is not numpy's default_rng(seed).permutation
    n, seed = 1000, 0
    plain = np.sort(np.random.default_rng(seed).permutation(n)[:100])
    assert not np.array_equal(subset_indices(n, 10, seed), plain)


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan"), "10"])
def test_percent_validated(bad):
    with pytest.raises(ValueError, match="percent"):
        subset_indices(100, bad, seed=0)


def test_make_subset_writes_rows_and_provenance(tmp_path):
    parent = make_transitions(episode_lengths=(40, 30, 30))
    src, out = tmp_path / "full.parquet", tmp_path / "sub" / "10pct.parquet"
    write_transitions(src, parent)
    info = make_subset(src, out, 10, seed=7, min_transitions=5)
    sub = read_transitions(out)
    idx = subset_indices(100, 10, seed=7)
    assert len(sub) == 10 == info["n_subset"] and not info["too_small"]
    np.testing.assert_array_equal(sub.obs, parent.obs[idx])
    np.testing.assert_array_equal(sub.episode_id, parent.episode_id[idx])
    np.testing.assert_array_equal(sub.step, parent.step[idx])
    assert sub.meta["subset_percent"] == 10 and sub.meta["subset_seed"] == 7
    assert sub.meta["parent_sha256"] == sha256_file(src)
    assert sub.meta["parent_name"] == "toy" and sub.meta["env_id"] == "Toy-v0"
    assert sub.meta["ref_max_score"] == 10.0


def test_make_subset_warns_when_too_small(tmp_path):
    src, out = tmp_path / "full.parquet", tmp_path / "1pct.parquet"
    write_transitions(src, make_transitions(episode_lengths=(40, 30, 30)))
    with pytest.warns(SmallSubsetWarning, match="too small"):
        info = make_subset(src, out, 1, seed=0, min_transitions=2560)
    assert info["too_small"] and info["n_subset"] == 1
    assert out.exists()  # still written: the caller decides whether to train on it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_subset(src, tmp_path / "100pct.parquet", 100, seed=0, min_transitions=100)
