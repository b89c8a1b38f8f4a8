import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seemrl.data.transitions import (COLUMNS, DatasetError, Transitions, dataset_card, read_transitions,
                                     write_transitions)
from seemrl.io import sha256_file
from helpers import make_transitions


def assert_same(a: Transitions, b: Transitions):
    for name in COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_round_trip_preserves_columns_dtypes_and_meta(tmp_path):
    t = make_transitions()
    path = tmp_path / "d.parquet"
    write_transitions(path, t)
    back = read_transitions(path)
    assert_same(t, back)
    assert back.obs.dtype == np.float32 and back.obs.shape == (12, 3)
    assert back.terminal.dtype == bool and back.step.dtype == np.int32
    assert back.meta["obs_dim"] == 3 and back.meta["act_dim"] == 2
    assert back.meta["n_transitions"] == 12
    assert back.meta["ref_max_score"] == 10.0 and back.meta["env_id"] == "Toy-v0"
    # schema on disk is what the module docstring promises
    schema = pq.read_schema(path)
    assert schema.field("obs").type == pa.list_(pa.float32(), 3)
    assert schema.field("action").type == pa.list_(pa.float32(), 2)
    assert schema.field("episode_id").type == pa.int64()
    assert json.loads(schema.metadata[b"seemrl"])["name"] == "toy"
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary behind"


def test_take_selects_rows_and_copies_meta():
    t = make_transitions()
    sub = t.take(np.array([0, 5, 11]))
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.obs[1], t.obs[5])
    sub.meta["name"] = "changed"
    assert t.meta["name"] == "toy"


def test_inconsistent_lengths_rejected():
    t = make_transitions()
    with pytest.raises(ValueError, match="reward"):
        Transitions(**{k: getattr(t, k) for k in COLUMNS} | {"reward": t.reward[:-1]}, meta=t.meta)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_or_empty_file_raises_dataset_error_naming_file(tmp_path, keep):
    path = tmp_path / "broken.parquet"
    write_transitions(path, make_transitions())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetError, match="broken.parquet"):
        read_transitions(path)


def test_garbage_and_missing_file(tmp_path):
    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"not parquet at all" * 100)
    with pytest.raises(DatasetError, match="garbage.parquet"):
        read_transitions(bad)
    with pytest.raises(DatasetError, match="absent.parquet"):
        read_transitions(tmp_path / "absent.parquet")


def test_missing_column_named(tmp_path):
    path = tmp_path / "d.parquet"
    write_transitions(path, make_transitions())
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["timeout"]), path)
    with pytest.raises(DatasetError, match=r"d\.parquet.*timeout"):
        read_transitions(path)


def test_width_inconsistent_with_metadata(tmp_path):
    path = tmp_path / "d.parquet"
    write_transitions(path, make_transitions())
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"seemrl"])
    meta["obs_dim"] = 4
    pq.write_table(table.replace_schema_metadata({b"seemrl": json.dumps(meta)}), path)
    with pytest.raises(DatasetError, match="obs_dim"):
        read_transitions(path)


def test_foreign_parquet_without_metadata(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(DatasetError, match="foreign.parquet"):
        read_transitions(path)


def test_dataset_card(tmp_path):
    t = make_transitions(episode_lengths=(5, 3, 4))
    path = tmp_path / "d.parquet"
    write_transitions(path, t)
    card = dataset_card(read_transitions(path), path)
    assert card["n_transitions"] == 12 and card["n_episodes"] == 3
    assert card["n_complete_episodes"] == 3
    # returns: 5 * 1, 3 * 2, 4 * 3
    assert card["episode_return"]["mean"] == pytest.approx(np.mean([5, 6, 12]))
    assert card["episode_return"]["min"] == 5 and card["episode_return"]["max"] == 12
    assert card["n_terminals"] == 2 and card["n_timeouts"] == 1
    assert card["sha256"] == sha256_file(path)
    assert card["normalised_score"]["ref_max_score"] == 10.0
    json.dumps(card)  # must be JSON-serialisable as is


def test_card_counts_only_complete_episodes(tmp_path):
    t = make_transitions(episode_lengths=(5, 3, 4))
    # drop step 1 of episode 0 and the last step of episode 1: neither is complete any more
    keep = np.ones(len(t), bool)
    keep[[1, 7]] = False
    path = tmp_path / "d.parquet"
    write_transitions(path, t.take(np.flatnonzero(keep)))
    card = dataset_card(read_transitions(path), path)
    assert card["n_episodes"] == 3 and card["n_complete_episodes"] == 1
    assert card["episode_return"]["mean"] == 12


def test_a_million_rows_come_back_as_flat_float32_arrays(tmp_path):
    # speed is benchmarks/data_load_subset.py's job; here: the vectorised read gives contiguous
    # [N, dim] float32 arrays, equal to what was written
    n, od, ad = 1_000_000, 11, 3
    rng = np.random.default_rng(0)
    t = Transitions(
        obs=rng.normal(size=(n, od)).astype(np.float32),
        action=rng.normal(size=(n, ad)).astype(np.float32),
        reward=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, od)).astype(np.float32),
        terminal=np.zeros(n, bool),
        timeout=np.zeros(n, bool),
        episode_id=np.repeat(np.arange(n // 1000), 1000),
        step=np.tile(np.arange(1000), n // 1000),
        meta={"name": "big", "env_id": "Hopper-v5", "source": "test"},
    )
    path = tmp_path / "big.parquet"
    write_transitions(path, t)
    back = read_transitions(path)
    for name in ("obs", "action", "next_obs"):
        arr = getattr(back, name)
        assert arr.dtype == np.float32 and arr.flags["C_CONTIGUOUS"] and arr.shape == getattr(t, name).shape
        np.testing.assert_array_equal(arr, getattr(t, name))
    np.testing.assert_array_equal(back.episode_id, t.episode_id)
