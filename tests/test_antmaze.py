"""AntMaze evaluation envs: D4RL's maze frame on Gymnasium-Robotics, proved cell by cell against the
compiled MuJoCo model, D4RL's success semantics, and the Minari observation layout."""
import dataclasses
import math
import multiprocessing
import os
import signal
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import yaml

from seemrl.training import antmaze
from seemrl.training.antmaze import (MAZES, AntMazeSeedEvaluation, antmaze_env_fn, antmaze_task, evaluate_antmaze,
                                     make_d4rl_antmaze, play_episodes, run_goal_seed)
from seemrl.training.evaluation import normalized_score

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_OFFSETS = {"umaze": (4.0, 4.0), "medium": (10.0, 10.0), "large": (18.0, 12.0)}
# D4RL's evaluation goals (cell centres of the *_TEST maps' "g", D4RL frame)
EXPECTED_GOAL_CENTRES = {"umaze": (0.0, 8.0), "medium": (20.0, 20.0), "large": (32.0, 24.0)}


@pytest.fixture(scope="module")
def envs():
    made = {name: make_d4rl_antmaze(name) for name in MAZES}
    yield made
    for env in made.values():
        env.close()


def _cells(maze):
    return [(i, j) for i in range(maze.height) for j in range(maze.width)]


def _block_geoms(env):
    """{(row, col) in Gymnasium-Robotics' map: (x, y) of the wall geom} of the compiled model."""
    model = env.unwrapped.ant_env.model
    blocks = {}
    for g in range(model.ngeom):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
        if name.startswith("block_"):
            _, i, j = name.split("_")
            blocks[(int(i), int(j))] = model.geom_pos[g][:2].copy()
    return blocks


@pytest.mark.parametrize("name", list(MAZES))
def test_offset_follows_from_the_maps(name):
    maze = MAZES[name]
    assert tuple(maze.offset) == EXPECTED_OFFSETS[name]
    # D4RL: the reset cell (1, 1) is the origin; cell (i, j) is at (4 j, 4 i) - torso
    assert maze.start_cell == (1, 1) and tuple(maze.d4rl_cell_xy(maze.start_cell)) == (0.0, 0.0)
    assert tuple(maze.d4rl_cell_xy(maze.goal_cell)) == EXPECTED_GOAL_CENTRES[name]
    for cell in _cells(maze):
        assert maze.d4rl_xy_cell(maze.d4rl_cell_xy(cell)) == cell


def test_maps_are_d4rls_as_gymnasium_robotics_copied_them():
    """Our transcription of D4RL's maps equals Gymnasium-Robotics' copy of them (which keeps
    D4RL's row order), reset/goal letters read as free cells."""
    from gymnasium_robotics.envs.maze import maps

    theirs = {"umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}
    for name, maze in MAZES.items():
        assert [list(r) for r in maze.d4rl_map] == [[1 if v == 1 else 0 for v in r] for r in theirs[name]]
        assert maze.d4rl_map[maze.start_cell[0]][maze.start_cell[1]] == 0
        assert maze.d4rl_map[maze.goal_cell[0]][maze.goal_cell[1]] == 0
    assert maps.MEDIUM_MAZE_DIVERSE_G[1][1] == "r" and maps.LARGE_MAZE_DIVERSE_G[1][1] == "r"


@pytest.mark.parametrize("name", list(MAZES))
def test_walls_of_d4rl_map_are_the_walls_of_the_simulated_maze(envs, name):
    """(c) Every wall geom MuJoCo simulates sits, in D4RL's frame, where D4RL puts a wall block
    (j * 4 - torso_x, i * 4 - torso_y), and nowhere else."""
    env, maze = envs[name], MAZES[name]
    gr_maze = env.unwrapped.maze
    blocks = _block_geoms(env)
    d4rl_walls = {cell for cell in _cells(maze) if maze.d4rl_map[cell[0]][cell[1]] == 1}
    simulated = set()
    for gr_cell, gr_xy in blocks.items():
        d4rl_xy = maze.to_d4rl(gr_xy)
        cell = maze.d4rl_xy_cell(d4rl_xy)
        np.testing.assert_allclose(d4rl_xy, maze.d4rl_cell_xy(cell), atol=1e-9)
        simulated.add(cell)
        assert gr_cell == maze.gr_cell(cell)
    assert simulated == d4rl_walls
    # and cell by cell, the map Gymnasium-Robotics keeps agrees with D4RL's
    for cell in _cells(maze):
        gi, gj = gr_maze.cell_xy_to_rowcol(maze.to_gr(maze.d4rl_cell_xy(cell)))
        assert (gi, gj) == maze.gr_cell(cell)
        assert (gr_maze.maze_map[gi][gj] == 1) == (maze.d4rl_map[cell[0]][cell[1]] == 1)


@pytest.mark.parametrize("name", list(MAZES))
def test_goal_and_start_land_in_their_cells(envs, name):
    """(a) D4RL's goal, mapped into Gymnasium-Robotics' frame, is the centre of the goal cell
    there, a free cell; the noisy goal and start of a reset stay in their cells."""
    env, maze = envs[name], MAZES[name]
    gr_maze = env.unwrapped.maze
    gi, gj = maze.gr_cell(maze.goal_cell)
    np.testing.assert_allclose(maze.to_gr(EXPECTED_GOAL_CENTRES[name]),
                               gr_maze.cell_rowcol_to_xy(np.array([gi, gj])), atol=1e-12)
    assert gr_maze.maze_map[gi][gj] == 0
    si, sj = maze.gr_cell(maze.start_cell)
    np.testing.assert_allclose(maze.to_gr((0.0, 0.0)), gr_maze.cell_rowcol_to_xy(np.array([si, sj])))
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        noise = env.goal - np.array(EXPECTED_GOAL_CENTRES[name])
        assert np.all((noise >= 0) & (noise <= 1.5))  # U(0, 1) + U(0, 0.5) per axis
        np.testing.assert_allclose(env.unwrapped.goal, maze.to_gr(env.goal))  # what GR checks
        assert maze.d4rl_xy_cell(env.goal) == maze.goal_cell
        assert obs.shape == (29,) and np.all(np.abs(obs[:2]) <= 0.1 + 1e-12)  # D4RL's start
        assert np.all(np.abs(obs[2:15] - env.unwrapped.ant_env.init_qpos[2:15]) <= 0.1 + 1e-12)
        assert not info["success"]


@pytest.mark.parametrize("name", list(MAZES))
def test_every_free_cell_centre_reads_back_in_d4rl_frame(envs, name):
    """(b) The ant placed at the D4RL-frame centre of every free cell: the wrapped observation's
    (x, y) is that position, and the simulated maze reports the matching cell as free."""
    env, maze = envs[name], MAZES[name]
    gr_maze = env.unwrapped.maze
    env.reset(seed=0)
    free = [cell for cell in _cells(maze) if maze.d4rl_map[cell[0]][cell[1]] == 0]
    assert len(free) == {"umaze": 7, "medium": 26, "large": 46}[name]
    for cell in free:
        centre = maze.d4rl_cell_xy(cell)
        obs = env.set_xy(centre)
        np.testing.assert_allclose(obs[:2], centre, atol=1e-12)
        qpos = env.unwrapped.ant_env.data.qpos
        gi, gj = gr_maze.cell_xy_to_rowcol(qpos[:2])
        assert (gi, gj) == maze.gr_cell(cell) and gr_maze.maze_map[gi][gj] == 0
        np.testing.assert_allclose(obs[2:15], qpos[2:15])
        obs, *_ = env.step(np.zeros(8))  # a physics step there: still in that cell
        assert maze.d4rl_xy_cell(obs[:2]) == cell


def test_d4rl_ant_physics_and_action_scaling(envs):
    env = envs["umaze"]
    ant = env.unwrapped.ant_env
    model = ant.model
    assert model.opt.timestep == 0.02 and ant.frame_skip == 5 and math.isclose(ant.dt, 0.1)
    np.testing.assert_array_equal(model.actuator_gear[:, 0], np.ones(8))
    np.testing.assert_array_equal(model.actuator_ctrlrange, np.tile([-30.0, 30.0], (8, 1)))
    np.testing.assert_allclose(model.geom_solref[:, :2], np.tile([0.02, 1.0], (model.ngeom, 1)))
    np.testing.assert_allclose(model.geom_solimp[:, :3], np.tile([0.8, 0.8, 0.01], (model.ngeom, 1)))
    env.reset(seed=0)
    a = np.array([1.5, -2.0, 0.5, -0.25, 0.0, 1.0, -1.0, 0.1])
    env.step(a)
    np.testing.assert_allclose(ant.data.ctrl, 30.0 * np.clip(a, -1, 1))  # NormalizedBoxEnv
    assert env.action_space.low.min() == -1 and env.observation_space.shape == (29,)


def test_goal_noise_per_run_and_per_episode():
    fixed, fresh = make_d4rl_antmaze("medium", goal_seed=run_goal_seed(0, 3)), make_d4rl_antmaze("medium")
    goals_fixed = [fixed.reset(seed=s)[1]["goal"] for s in range(3)]
    goals_fresh = [fresh.reset(seed=s)[1]["goal"] for s in range(3)]
    assert all(np.array_equal(g, goals_fixed[0]) for g in goals_fixed)
    assert len({tuple(g) for g in goals_fresh}) == 3
    assert run_goal_seed(0, 3) != run_goal_seed(0, 4) != run_goal_seed(1, 3)


class _TeleportToGoal(gym.Wrapper):
    """Puts the ant on the goal right after each reset."""

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        return self.env.set_xy(self.env.goal), info


def test_reaching_the_goal_scores_one_staying_at_start_scores_zero(monkeypatch):
    """(d) D4RL semantics: reward 1 and termination within 0.5 of the goal, so a reached goal is
    return 1 after one step, an ant that stays at the start returns 0 after the full 700 steps."""
    envs = [_TeleportToGoal(make_d4rl_antmaze("umaze")), make_d4rl_antmaze("umaze")]
    zero = lambda obs: np.zeros(obs.shape[:2] + (8,))
    out = play_episodes(zero, envs, 2, [11, 12])
    assert out["returns"].tolist() == [1.0, 0.0] and out["success"].tolist() == [True, False]
    assert out["lengths"].tolist() == [1, 700]

    real = antmaze.antmaze_env_fn
    teleport = lambda name, **kw: (lambda: _TeleportToGoal(real(name, **kw)()))
    monkeypatch.setattr(antmaze, "antmaze_env_fn", teleport)
    [at_goal] = evaluate_antmaze(zero, [0], "antmaze-umaze-v0", n_episodes=2)
    assert at_goal.returns == [1.0, 1.0] and at_goal.normalized_score == 100.0
    assert at_goal.normalized_score == normalized_score(at_goal.return_mean, 0.0, 1.0)
    monkeypatch.setattr(antmaze, "antmaze_env_fn", real)
    short = {"source": "d4rl", "maze": "umaze", "obs_layout": "d4rl", "max_episode_steps": 30}
    [at_start] = evaluate_antmaze(zero, [0], "antmaze-umaze-v0", n_episodes=1, entry=short)
    assert at_start.returns == [0.0] and at_start.normalized_score == 0.0
    assert at_start.episode_lengths == [30] and at_start.successes == [False]


SHORT_V2 = {"source": "d4rl", "maze": "umaze", "obs_layout": "d4rl", "max_episode_steps": 60,
            "goal_noise": "per_episode"}


def _random_policy(seed):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1, 1, size=obs.shape[:2] + (8,))


def test_random_rollout_of_two_seeds_is_finite_and_repeatable():
    """(e) 2 seeds x 2 episodes of random actions: finite, per-seed results, the same twice."""
    seen = []

    def policy(obs):
        seen.append(obs.shape)
        assert obs.dtype == np.float32 and np.isfinite(obs).all()
        return rng_policy(obs)

    rng_policy = _random_policy(0)
    first = evaluate_antmaze(policy, [0, 1], "antmaze-umaze-v2", n_episodes=2, eval_seed=7, entry=SHORT_V2)
    assert seen[0] == (2, 2, 29) and len(seen) == 60
    assert [r.seed for r in first] == [0, 1]
    for r in first:
        assert isinstance(r, AntMazeSeedEvaluation)
        assert all(math.isfinite(x) and x in (0.0, 1.0) for x in r.returns)
        assert r.normalized_score == pytest.approx(100 * r.success_rate)
        assert r.normalized_score == pytest.approx(normalized_score(r.return_mean, 0.0, 1.0))
        assert r.episode_lengths == [60, 60] and not r.nonfinite_actions
    rng_policy = _random_policy(0)
    again = evaluate_antmaze(policy, [0, 1], "antmaze-umaze-v2", n_episodes=2, eval_seed=7, entry=SHORT_V2)
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(r) for r in first]


def test_waves_of_envs_and_nonfinite_actions_are_per_seed():
    calls = []

    def policy(obs):
        calls.append(obs.shape)
        action = np.zeros(obs.shape[:2] + (8,))
        action[0] = np.nan  # seed 5 is broken
        return action

    res = evaluate_antmaze(policy, [5, 6], "antmaze-umaze-v2", n_episodes=3, entry=SHORT_V2, max_envs=2)
    assert {shape[:2] for shape in calls} == {(2, 1)}  # one episode per seed per wave, 3 waves
    assert res[0].nonfinite_actions and not res[1].nonfinite_actions
    assert all(len(r.returns) == 3 and all(math.isfinite(x) for x in r.returns) for r in res)


def test_makers_vectorise():
    envs = gym.vector.SyncVectorEnv([antmaze_env_fn("antmaze-large-play-v2", entry=None)] * 2)
    obs, _ = envs.reset(seed=[1, 2])
    assert obs.shape == (2, 29)
    obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 8)))
    assert obs.shape == (2, 29) and reward.shape == (2,) and "success" in info
    envs.close()


# ------------------------------------------------------------------ Minari layout
def test_minari_observation_is_position_observation_and_goal_in_gr_frame(tmp_path):
    """Without the dataset on disk: the fallback eval spec; obs = achieved_goal (2, the torso's
    x, y) + observation (27) + desired_goal (2), exactly as seemrl.data.minari_source flattens the data."""
    env = antmaze_env_fn("minari-antmaze-medium-diverse-v1", minari_root=tmp_path)()
    obs, info = env.reset(seed=3)
    u = env.unwrapped
    qpos, qvel = u.ant_env.data.qpos, u.ant_env.data.qvel
    assert obs.shape == (31,) and obs.dtype == np.float32 and env.observation_space.shape == (31,)
    np.testing.assert_allclose(obs[:2], qpos[:2], rtol=1e-6, atol=1e-6)  # the torso's x, y (GR frame)
    np.testing.assert_allclose(obs[2:15], qpos[2:15], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obs[15:29], qvel[:14], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obs[29:], u.goal, rtol=1e-6)  # GR frame, no offset
    # the eval map puts the goal in cell (6, 6) of Gymnasium-Robotics' map
    assert tuple(u.maze.cell_xy_to_rowcol(u.goal)) == (6, 6)
    assert env.spec.max_episode_steps == 1000 and u.continuing_task is True
    _, _, terminated, _, info = env.step(np.zeros(8))
    assert "success" in info and not terminated
    env.close()


def test_minari_eval_env_comes_from_the_dataset_metadata(tmp_path, monkeypatch):
    import tempfile

    import minari
    from minari.data_collector import EpisodeBuffer

    from seemrl.data.minari_source import use_minari_root

    # envs made here directly leave Gymnasium-Robotics' maze files in the temp dir: keep it ours
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    antmaze._register()  # the Gymnasium-Robotics envs
    custom = [[1, 1, 1, 1, 1], [1, "r", 0, "g", 1], [1, 1, 1, 1, 1]]
    spec = dataclasses.replace(gym.spec("AntMaze_UMaze-v5"), max_episode_steps=123, kwargs={
        "maze_map": custom, "reward_type": "sparse", "continuing_task": True,
        "reset_target": False, "include_cfrc_ext_in_observation": False})
    probe = gym.make(spec)
    rng = np.random.default_rng(0)
    buffer = EpisodeBuffer(
        id=0, observations={k: rng.normal(size=(4, s.shape[0])) for k, s in probe.observation_space.spaces.items()},
        actions=rng.uniform(-1, 1, size=(3, 8)).astype(np.float32), rewards=[0.0] * 3,
        terminations=[False] * 3, truncations=[False, False, True])
    with use_minari_root(tmp_path):
        minari.create_dataset_from_buffers("seemrl-test/antmaze/custom-v1", [buffer], env=probe.spec, eval_env=spec,
                                           algorithm_name="x", author="x", author_email="x", code_permalink="x",
                                           description="a custom AntMaze eval spec")
    probe.close()
    entry = {"source": "minari", "minari_id": "seemrl-test/antmaze/custom-v1", "env_id": "AntMaze_UMaze-v5",
             "maze": "umaze", "obs_layout": "minari_obs_goal", "max_episode_steps": 40}
    task = antmaze_task("my-antmaze", entry)
    got, source = antmaze.minari_eval_env_spec(task, tmp_path)
    assert "eval_env_spec" in source and got.kwargs["maze_map"] == custom
    env = antmaze_env_fn("my-antmaze", entry=entry, minari_root=tmp_path)()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (31,) and tuple(env.unwrapped.maze.cell_xy_to_rowcol(obs[29:])) == (1, 3)
    assert env.spec.max_episode_steps == 40  # the registry's cap
    env.close()
    res = evaluate_antmaze(lambda o: np.zeros(o.shape[:2] + (8,)), [0, 1], "my-antmaze", 1,
                           entry=entry, minari_root=tmp_path)
    assert [r.episode_lengths for r in res] == [[40], [40]] and all(r.normalized_score == 0.0 for r in res)


# ------------------------------------------------------------------ registry
def test_registry_antmaze_entries_carry_their_evaluation():
    import jsonschema

    registry = yaml.safe_load((ROOT / "config" / "datasets.yaml").read_text())
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "datasets.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(registry)
    names = [n for n in registry if "antmaze" in n]
    assert len(names) == 18
    for name in names:
        entry = registry[name]
        task = antmaze_task(name)  # read from the registry file
        assert task == antmaze_task(name, entry)
        maze = name.removeprefix("minari-").split("-")[1]
        assert task.maze is MAZES[maze] and task.max_episode_steps == MAZES[maze].max_episode_steps
        if entry["source"] == "d4rl":
            assert task.obs_layout == "d4rl" and entry["env_id"] == MAZES[maze].gr_env_id
            assert task.goal_noise == ("per_run" if name.endswith("-v0") else "per_episode")
        else:
            assert task.obs_layout == "minari_obs_goal" and task.goal_noise is None
            assert task.minari_id == "D4RL/antmaze/" + name.removeprefix("minari-antmaze-")
    with pytest.raises(ValueError, match="not an AntMaze"):
        antmaze_task("hopper-medium-v2")


# ------------------------------------------------------------------ worker processes
PAR_ENTRY = dict(SHORT_V2, max_episode_steps=25)


def _policy_of_obs(obs):
    """Deterministic, varied actions; seed 1 sometimes NaN."""
    action = np.tanh(3 * obs[..., :8] + np.sin(7 * obs[..., 8:16]))
    action[1, :, 3] = np.where(obs[1, :, 1] > obs[1, :, 0], np.nan, action[1, :, 3])
    return action


def test_workers_give_the_same_results_as_one_process():
    """2 seeds x 3 episodes in waves of 2 per seed (the second wave uses half the envs): 2 and 3
    worker processes give exactly the single-process results."""
    run = lambda workers: [dataclasses.asdict(r) for r in evaluate_antmaze(
        _policy_of_obs, [0, 1], "antmaze-umaze-v2", 3, eval_seed=3, entry=PAR_ENTRY, max_envs=4, workers=workers)]
    one = run(1)
    assert [r["nonfinite_actions"] for r in one] == [False, True]
    assert all(r["episode_lengths"] == [25] * 3 for r in one)
    assert run(2) == one and run(3) == one
    makers = [antmaze_env_fn("antmaze-umaze-v0", entry=PAR_ENTRY, goal_seed=s) for s in (4, 4, 5, 5)]
    direct = play_episodes(_policy_of_obs, [m() for m in makers], 2, [1, 2, 3, 4])
    pooled = play_episodes(_policy_of_obs, makers, 2, [1, 2, 3, 4], workers=2)
    assert all(np.array_equal(direct[k], pooled[k]) for k in direct)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _workers_now():
    return sorted((p for p in multiprocessing.active_children() if p.name.startswith("antmaze-eval-")),
                  key=lambda p: p.name)


def test_a_failing_policy_leaves_no_worker_behind():
    seen = []

    def policy(obs):
        seen.append([p.pid for p in _workers_now()])
        if len(seen) == 4:
            raise KeyError("policy broke")
        return np.zeros(obs.shape[:2] + (8,))

    with pytest.raises(KeyError, match="policy broke"):
        evaluate_antmaze(policy, [0, 1], "antmaze-umaze-v2", 2, entry=PAR_ENTRY, workers=2)
    assert len(seen[0]) == 2 and _workers_now() == []
    assert not any(map(_alive, seen[0]))


def test_a_killed_worker_is_named_in_the_error():
    def policy(obs):
        if policy.calls == 2:
            [victim] = [p for p in _workers_now() if p.name == "antmaze-eval-1"]
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()
        policy.calls += 1
        return np.zeros(obs.shape[:2] + (8,))

    policy.calls = 0
    with pytest.raises(RuntimeError, match=r"AntMaze evaluation worker 1 \(pid \d+\) died \(exit code -9\)"):
        evaluate_antmaze(policy, [0, 1], "antmaze-umaze-v2", 2, entry=PAR_ENTRY, workers=2)
    assert _workers_now() == []


def test_task_observation_widths_match_the_data_layouts():
    from seemrl.training.antmaze import antmaze_task

    assert antmaze_task("antmaze-umaze-v0").obs_dim == 29  # qpos[:15] + qvel[:14]
    assert antmaze_task("minari-antmaze-umaze-v1").obs_dim == 31  # achieved_goal + observation + desired_goal

