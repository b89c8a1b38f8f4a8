import os

import gymnasium as gym
import numpy as np
import pytest

from seemrl.data.minari_source import (collect_episodes, flatten_observations, minari_to_transitions, use_minari_root,
                                       write_minari_dataset)
from seemrl.data.transitions import DatasetError, dataset_card, read_transitions, write_transitions

minari = pytest.importorskip("minari")

ENV = "Hopper-v5"
DATASET = "seemrl-test/hopper/random-v0"
HOPPER_REF = (-20.272305, 3234.3)  # D4RL hopper reference returns


@pytest.fixture(autouse=True)
def isolated_minari(tmp_path, monkeypatch):
    # nothing may land in ~/.minari, whatever the code under test does
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "default-root"))


@pytest.fixture(scope="module")
def episodes():
    # random actions: Hopper falls within ~10-40 steps, so 150 steps give several terminations
    # and a final episode cut by the budget
    return collect_episodes(ENV, None, n_transitions=150, seed=0)


@pytest.fixture
def written(tmp_path, episodes):
    root = tmp_path / "minari"
    write_minari_dataset(DATASET, episodes, ENV, *HOPPER_REF, minari_root=root,
                         algorithm_name="uniform-random")
    return root


def test_collect_episodes_shapes_and_flags(episodes):
    assert sum(len(ep["rewards"]) for ep in episodes) == 150
    assert len(episodes) >= 3
    for ep in episodes[:-1]:
        T = len(ep["rewards"])
        assert ep["observations"].shape == (T + 1, 11) and ep["actions"].shape == (T, 3)
        assert ep["terminations"][-1] and not ep["terminations"][:-1].any()
        assert not ep["truncations"].any()
    last = episodes[-1]
    assert last["truncations"][-1] and not last["terminations"][-1]  # cut by the budget


def test_collect_is_seeded():
    a = collect_episodes(ENV, None, 30, seed=5)
    b = collect_episodes(ENV, None, 30, seed=5)
    c = collect_episodes(ENV, None, 30, seed=6)
    np.testing.assert_array_equal(a[0]["observations"], b[0]["observations"])
    np.testing.assert_array_equal(a[0]["actions"], b[0]["actions"])
    assert not np.array_equal(a[0]["actions"], c[0]["actions"])


def test_dataset_lands_under_root_and_loads_with_minari(written, episodes):
    assert (written / DATASET / "data" / "metadata.json").exists()
    assert not list(written.glob(".tmp*")), "staging directory left behind"
    assert not (written.parent / "default-root" / "seemrl-test").exists()
    with use_minari_root(written):
        ds = minari.load_dataset(DATASET)
        assert ds.total_episodes == len(episodes) and ds.total_steps == 150
        assert ds.env_spec.id == ENV
        assert DATASET in minari.list_local_datasets()
        score = minari.get_normalized_score(ds, np.array([HOPPER_REF[0], HOPPER_REF[1]]))
        np.testing.assert_allclose(score, [0.0, 1.0])
        first = next(ds.iterate_episodes())
        np.testing.assert_allclose(first.observations, episodes[0]["observations"])
        np.testing.assert_array_equal(first.truncations, episodes[0]["truncations"])
    assert os.environ["MINARI_DATASETS_PATH"].endswith("default-root")  # restored


def test_existing_dataset_not_overwritten_unless_asked(written, episodes):
    with pytest.raises(FileExistsError, match=DATASET):
        write_minari_dataset(DATASET, episodes, ENV, *HOPPER_REF, minari_root=written,
                             algorithm_name="again")
    write_minari_dataset(DATASET, episodes[:2], ENV, *HOPPER_REF, minari_root=written,
                         algorithm_name="again", overwrite=True)
    with use_minari_root(written):
        assert minari.load_dataset(DATASET).total_episodes == 2


def test_bad_dataset_id_rejected(tmp_path, episodes):
    with pytest.raises(ValueError, match="-v<N>"):
        write_minari_dataset("seemrl/hopper/no-version", episodes, ENV, *HOPPER_REF,
                             minari_root=tmp_path, algorithm_name="x")


def test_flatten_to_transitions(written, episodes, tmp_path):
    t = minari_to_transitions(DATASET, written)
    assert len(t) == 150 and t.obs_dim == 11 and t.act_dim == 3
    assert t.meta["env_id"] == ENV
    assert (t.meta["ref_min_score"], t.meta["ref_max_score"]) == HOPPER_REF
    assert t.terminal.sum() == len(episodes) - 1 and t.timeout.sum() == 1

    # within an episode, next_obs of step k is obs of step k+1
    same_episode = t.episode_id[1:] == t.episode_id[:-1]
    np.testing.assert_array_equal(t.next_obs[:-1][same_episode], t.obs[1:][same_episode])
    assert (t.step[1:][same_episode] == t.step[:-1][same_episode] + 1).all()

    # the cut final transition keeps its true next observation (the T+1-th one) ...
    np.testing.assert_allclose(t.next_obs[-1], episodes[-1]["observations"][-1], rtol=1e-6)
    # ... which is what the simulator gives when the episode is replayed from its seed
    env = gym.make(ENV)
    obs, _ = env.reset(seed=episodes[-1]["seed"])
    for action in episodes[-1]["actions"]:
        obs, *_ = env.step(action)
    np.testing.assert_allclose(t.next_obs[-1], obs.astype(np.float32), rtol=1e-6)
    assert not np.allclose(t.next_obs[-1], t.obs[-1])

    # and it survives the Parquet round trip, with a card that sees complete episodes
    path = tmp_path / "hopper.parquet"
    write_transitions(path, t)
    back = read_transitions(path)
    np.testing.assert_array_equal(back.next_obs, t.next_obs)
    card = dataset_card(back, path)
    assert card["n_episodes"] == len(episodes) == card["n_complete_episodes"]
    returns = [ep["rewards"].sum() for ep in episodes]
    assert card["episode_return"]["mean"] == pytest.approx(np.mean(returns), rel=1e-5)


def test_missing_dataset_error_names_id_and_root(tmp_path):
    with pytest.raises(DatasetError, match=r"seemrl-test/absent-v0.*" + str(tmp_path.name)):
        minari_to_transitions("seemrl-test/absent-v0", tmp_path)


def test_dict_observations_concatenate_observation_and_goal():
    obs = {
        "observation": np.ones((4, 27)),
        "achieved_goal": np.full((4, 2), 2.0),
        "desired_goal": np.full((4, 2), 3.0),
    }
    flat = flatten_observations(obs)
    assert flat.shape == (4, 31) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[:, :2], 2.0)  # the ant's position first
    np.testing.assert_array_equal(flat[:, 2:29], 1.0)
    np.testing.assert_array_equal(flat[:, 29:], 3.0)
    np.testing.assert_array_equal(flatten_observations(np.zeros((4, 11))), np.zeros((4, 11)))


# ---------------------------------------------------------------- fetching (offline)
def test_fetch_uses_a_pre_seeded_store_without_network(written, monkeypatch):
    from seemrl.data.minari_source import fetch_minari

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any download attempt would fail
    assert fetch_minari(DATASET, written) == (written / DATASET).resolve()


def test_fetch_from_unreachable_hub_fails_fast_with_alternatives(tmp_path, monkeypatch):
    import time

    from seemrl.data.minari_source import fetch_minari

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        fetch_minari("mujoco/hopper/medium-v0", tmp_path / "store")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    for needle in ("mujoco/hopper/medium-v0", "hf://farama-minari", "MINARI_DATASETS_PATH", "dvc pull", "generate"):
        assert needle in message
    assert not (tmp_path / "store" / "mujoco").exists()


def test_fetch_rejects_a_broken_pre_seeded_copy(written):
    from seemrl.data.minari_source import fetch_minari

    (written / DATASET / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="pre-seeded"):
        fetch_minari(DATASET, written)


def test_dict_observation_dataset_flattens_with_true_next_obs(tmp_path):
    """An AntMaze-like Minari dataset (Dict observations, a truncated continuing episode)."""
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    obs_space = spaces.Dict({
        "observation": spaces.Box(-np.inf, np.inf, (27,), np.float64),
        "achieved_goal": spaces.Box(-np.inf, np.inf, (2,), np.float64),
        "desired_goal": spaces.Box(-np.inf, np.inf, (2,), np.float64),
    })
    act_space = spaces.Box(-1, 1, (8,), np.float32)
    rng = np.random.default_rng(0)
    lengths = (5, 7)
    buffers = [
        EpisodeBuffer(
            id=i,
            observations={k: rng.normal(size=(n + 1, s.shape[0])) for k, s in obs_space.spaces.items()},
            actions=rng.uniform(-1, 1, size=(n, 8)).astype(np.float32),
            rewards=[0.0] * (n - 1) + [1.0],
            terminations=[False] * n,  # continuing task: never terminates
            truncations=[False] * (n - 1) + [True],
        )
        for i, n in enumerate(lengths)
    ]
    with use_minari_root(tmp_path / "m"):
        minari.create_dataset_from_buffers("seemrl-test/antmaze/tiny-v0", buffers, observation_space=obs_space,
                                           action_space=act_space, algorithm_name="x", author="x",
                                           author_email="x", code_permalink="x")
    t = minari_to_transitions("seemrl-test/antmaze/tiny-v0", tmp_path / "m")
    assert len(t) == sum(lengths) and t.obs_dim == 31 and t.act_dim == 8
    last = lengths[0] - 1  # the truncated last step of episode 0 keeps its true T+1 observation
    expected_next = np.concatenate([buffers[0].observations[k][last + 1]
                                    for k in ("achieved_goal", "observation", "desired_goal")])
    np.testing.assert_allclose(t.next_obs[last], expected_next, rtol=1e-6)
    assert t.timeout[last] and not t.terminal.any()
    np.testing.assert_allclose(t.obs[last + 1, 29:], buffers[1].observations["desired_goal"][0], rtol=1e-6)
