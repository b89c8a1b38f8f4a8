"""D4RL catalogue, HDF5 reader and fetch-and-convert (against a local HTTP server)."""
import h5py
import numpy as np
import pytest
from helpers import quiet, serve, sha

from seemrl.data.d4rl import (BASE_URL_ENV, D4RL_FILES, base_url, fetch_and_convert, fetch_d4rl, main, read_d4rl_hdf5,
                              ref_scores)
from seemrl.data.lockfile import read_lock
from seemrl.data.transitions import DatasetError, episode_returns, read_transitions

NAME, ENV_ID = "hopper-medium-v2", "Hopper-v5"
KEY = "gym_mujoco_v2/hopper_medium-v2.hdf5"
OBS_DIM, ACT_DIM = 3, 2
# (length, how the episode ends); the last one is cut by the end of the file
EPISODES = [(4, "terminal"), (5, "timeout"), (3, "terminal"), (6, "timeout"), (2, None)]
N = sum(length for length, _ in EPISODES)  # 20 rows
TERMINAL_ROWS, TIMEOUT_ROWS = [3, 11], [8, 17]
EPISODE_OF_ROW = np.repeat(np.arange(len(EPISODES)), [length for length, _ in EPISODES])
STEP_OF_ROW = np.concatenate([np.arange(length) for length, _ in EPISODES])


def d4rl_arrays(with_next: bool, n_rows: int | None = None) -> dict[str, np.ndarray]:
    if n_rows is None:
        terminals, timeouts = np.zeros(N, bool), np.zeros(N, bool)
        terminals[TERMINAL_ROWS], timeouts[TIMEOUT_ROWS] = True, True
        n = N
    else:  # a bigger file, for truncation tests
        n = n_rows
        terminals, timeouts = np.arange(n) % 97 == 96, np.arange(n) % 200 == 199
    obs = np.arange(n * OBS_DIM, dtype=np.float32).reshape(n, OBS_DIM)
    arrays = {
        "observations": obs,
        "actions": np.linspace(-1, 1, n * ACT_DIM, dtype=np.float32).reshape(n, ACT_DIM),
        "rewards": np.arange(n, dtype=np.float32),  # reward = file row, to see which rows stay
        "terminals": terminals,
        "timeouts": timeouts,
    }
    if with_next:  # deliberately not observations[i+1], so we can tell which was used
        arrays["next_observations"] = obs + 1000
    return arrays


def write_d4rl(path, arrays) -> None:
    """An HDF5 file in D4RL's layout, with an `infos/goal` group as AntMaze files have."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.create_dataset("infos/goal", data=np.zeros((len(next(iter(arrays.values()))), 2)))


def test_without_next_observations_drops_timeouts_and_last_row(tmp_path):
    path = tmp_path / "d.hdf5"
    arrays = d4rl_arrays(with_next=False)
    write_d4rl(path, arrays)
    t = read_d4rl_hdf5(path, NAME, ENV_ID)
    kept = np.array([i for i in range(N - 1) if i not in TIMEOUT_ROWS])
    assert len(t) == N - len(TIMEOUT_ROWS) - 1 == 17
    np.testing.assert_array_equal(t.reward, kept)
    np.testing.assert_array_equal(t.obs, arrays["observations"][kept])
    np.testing.assert_array_equal(t.next_obs, arrays["observations"][kept + 1])
    np.testing.assert_array_equal(t.action, arrays["actions"][kept])
    np.testing.assert_array_equal(t.episode_id, EPISODE_OF_ROW[kept])
    np.testing.assert_array_equal(t.step, STEP_OF_ROW[kept])
    assert list(kept[t.terminal]) == TERMINAL_ROWS and not t.timeout.any()
    # episodes that lost their timeout row (or the cut last one) are not complete
    ids, _, complete = episode_returns(t)
    assert list(ids[complete]) == [0, 2]
    assert t.meta["d4rl_next_obs_from"] == "observations[i+1]"


def test_with_next_observations_keeps_every_row(tmp_path):
    path = tmp_path / "d.hdf5"
    arrays = d4rl_arrays(with_next=True)
    write_d4rl(path, arrays)
    t = read_d4rl_hdf5(path, NAME, ENV_ID)
    assert len(t) == N
    np.testing.assert_array_equal(t.next_obs, arrays["next_observations"])
    np.testing.assert_array_equal(t.episode_id, EPISODE_OF_ROW)
    np.testing.assert_array_equal(t.step, STEP_OF_ROW)
    assert list(np.flatnonzero(t.terminal)) == TERMINAL_ROWS
    # the last row ended the collection: marked timeout, per the transition-table convention
    assert list(np.flatnonzero(t.timeout)) == TIMEOUT_ROWS + [N - 1]
    ids, returns, complete = episode_returns(t)
    assert complete.all() and returns[0] == 0 + 1 + 2 + 3
    assert t.meta == {
        "name": NAME, "env_id": ENV_ID, "source": f"d4rl:{KEY}",
        "ref_min_score": -20.272305, "ref_max_score": 3234.3, "ref_source": "D4RL constants",
        "d4rl_rows_in_file": N, "d4rl_next_obs_from": "next_observations",
    }


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_missing_key(tmp_path, key):
    arrays = d4rl_arrays(with_next=True)
    del arrays[key]
    write_d4rl(tmp_path / "d.hdf5", arrays)
    with pytest.raises(DatasetError, match=f"d.hdf5: HDF5 key '{key}' missing"):
        read_d4rl_hdf5(tmp_path / "d.hdf5", NAME, ENV_ID)


@pytest.mark.parametrize("key", ["rewards", "next_observations", "actions"])
def test_inconsistent_lengths(tmp_path, key):
    arrays = d4rl_arrays(with_next=True)
    arrays[key] = arrays[key][:-1]
    write_d4rl(tmp_path / "d.hdf5", arrays)
    with pytest.raises(DatasetError, match=f"'{key}' has {N - 1} rows but 'observations' has {N}"):
        read_d4rl_hdf5(tmp_path / "d.hdf5", NAME, ENV_ID)


def test_bad_values_and_shapes(tmp_path):
    arrays = d4rl_arrays(with_next=False)
    arrays["observations"][5, 1] = np.nan
    write_d4rl(tmp_path / "nan.hdf5", arrays)
    with pytest.raises(DatasetError, match="'observations' has 1 non-finite"):
        read_d4rl_hdf5(tmp_path / "nan.hdf5", NAME, ENV_ID)
    arrays = d4rl_arrays(with_next=False)
    arrays["actions"] = arrays["actions"][:, 0]
    write_d4rl(tmp_path / "flat.hdf5", arrays)
    with pytest.raises(DatasetError, match="'actions' has shape .*expected 2-D"):
        read_d4rl_hdf5(tmp_path / "flat.hdf5", NAME, ENV_ID)


def test_truncated_or_garbage_file(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path, d4rl_arrays(with_next=True, n_rows=5000))
    assert len(read_d4rl_hdf5(path, NAME, ENV_ID)) == 5000
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{path}: cannot read as HDF5"):
        read_d4rl_hdf5(path, NAME, ENV_ID)
    path.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_d4rl_hdf5(path, NAME, ENV_ID)
    with pytest.raises(DatasetError, match="no such file"):
        read_d4rl_hdf5(tmp_path / "absent.hdf5", NAME, ENV_ID)


def test_catalogue_and_reference_scores(monkeypatch):
    assert len(D4RL_FILES) == 3 * 5 + 6 * 2
    assert D4RL_FILES["hopper-medium-replay-v2"] == "gym_mujoco_v2/hopper_medium_replay-v2.hdf5"
    assert D4RL_FILES["halfcheetah-medium-expert-v2"] == \
        "gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5"
    assert D4RL_FILES["antmaze-umaze-v2"] == \
        "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    assert D4RL_FILES["antmaze-large-play-v0"] == \
        "ant_maze_new/Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse.hdf5"
    assert D4RL_FILES["antmaze-medium-diverse-v2"] == \
        "ant_maze_v2/Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"
    assert ref_scores("walker2d-expert-v2") == (1.629008, 4592.3)
    assert ref_scores("halfcheetah-random-v2") == (-280.178953, 12135.0)
    assert ref_scores("antmaze-large-diverse-v2") == (0.0, 1.0)
    with pytest.raises(DatasetError, match="no D4RL reference scores"):
        ref_scores("pen-human-v1")

    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    assert base_url() == "http://rail.eecs.berkeley.edu/datasets/offline_rl"
    monkeypatch.setenv(BASE_URL_ENV, "http://mirror.example/d4rl/")
    assert base_url() == "http://mirror.example/d4rl"
    assert base_url("http://other") == "http://other"


def test_unknown_name_suggests_close_matches(tmp_path):
    expected = "unknown D4RL dataset 'hopper-medum-v2'; did you mean hopper-medium-v2"
    with pytest.raises(DatasetError, match=expected):
        fetch_d4rl("hopper-medum-v2", tmp_path / "store", tmp_path / "lock.json")
    assert not (tmp_path / "lock.json").exists()


def test_fetch_and_convert(http_server, tmp_path):  # noqa: F811
    source = tmp_path / "source.hdf5"
    write_d4rl(source, d4rl_arrays(with_next=True))
    serve(http_server, KEY, source.read_bytes())
    store, lock, out = tmp_path / "store", tmp_path / "config" / "datasets.lock.json", \
        tmp_path / "out" / "hopper-medium-v2.parquet"

    fetch_and_convert(NAME, store, lock, out, ENV_ID, base_url=http_server.url, log=quiet)
    assert (store / KEY).read_bytes() == source.read_bytes()
    assert read_lock(lock) == {KEY: {"sha256": sha(source.read_bytes()),
                                     "size": source.stat().st_size}}
    t = read_transitions(out)
    assert len(t) == N and t.meta["source"] == f"d4rl:{KEY}" and t.meta["env_id"] == ENV_ID
    assert t.meta["d4rl_file_sha256"] == sha(source.read_bytes())
    assert (t.meta["ref_min_score"], t.meta["ref_max_score"]) == (-20.272305, 3234.3)

    # the CLI entry point reuses the verified store: no second download
    out.unlink()
    main([NAME, "--store", str(store), "--lock", str(lock), "--out", str(out),
          "--env-id", ENV_ID, "--base-url", http_server.url])
    assert len(read_transitions(out)) == N and len(http_server.gets()) == 1


def test_fetch_uses_base_url_from_environment(http_server, tmp_path, monkeypatch):  # noqa: F811
    name = "antmaze-umaze-v2"
    serve(http_server, D4RL_FILES[name], b"antmaze bytes")
    monkeypatch.setenv(BASE_URL_ENV, http_server.url + "/")
    path = fetch_d4rl(name, tmp_path / "store", tmp_path / "lock.json", log=quiet)
    assert path == tmp_path / "store" / D4RL_FILES[name] and path.read_bytes() == b"antmaze bytes"
    assert http_server.gets()[0][1] == "/" + D4RL_FILES[name]


def test_antmaze_position_jumps_are_counted_and_kept(tmp_path, caplog):
    """D4RL's v0 AntMaze files have timeouts out of step with episode ends (D4RL issue #77): some
    next states belong to another episode. They are kept (as d4rl.qlearning_dataset keeps them)
    and counted in the metadata; a file whose episodes end at its timeouts counts none."""
    import logging

    rng = np.random.default_rng(0)
    walk = lambda start, n: start + np.cumsum(rng.uniform(-0.05, 0.05, (n, 2)), 0)
    xy = np.concatenate([walk(np.array([0.0, 0.0]), 10), walk(np.array([8.0, 8.0]), 10)])
    obs = np.concatenate([xy, rng.normal(size=(20, 27))], 1).astype(np.float32)
    arrays = {"observations": obs, "actions": rng.uniform(-1, 1, (20, 8)).astype(np.float32),
              "rewards": np.zeros(20, np.float32), "terminals": np.zeros(20, bool)}
    for timeouts, jumps in ((np.zeros(20, bool), 1), (np.arange(20) == 9, 0)):  # v0-like, then fixed
        path = tmp_path / f"antmaze-{jumps}.hdf5"
        write_d4rl(path, {**arrays, "timeouts": timeouts})
        with caplog.at_level(logging.WARNING, logger="seemrl.data.d4rl"):
            caplog.clear()
            t = read_d4rl_hdf5(path, "antmaze-medium-diverse-v0", "AntMaze_Medium_Diverse_GR-v5")
        assert t.meta["antmaze_position_jumps"] == jumps
        assert len(t) == 19 - (jumps == 0)  # the last row, and a timeout row, have no next state
        assert ("D4RL issue #77" in caplog.text) == bool(jumps) and (str(path) in caplog.text) == bool(jumps)
