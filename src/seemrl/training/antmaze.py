"""AntMaze evaluation environments that match the AntMaze datasets of the registry.

Both kinds of AntMaze data (the original D4RL files, with D4RL's maze frame and fixed goal, and
Minari's datasets, with the goal in the observation) are evaluated on Gymnasium-Robotics'
`AntMaze_*-v5`, set up to reproduce the evaluation the data was made for: the maze, start and
goal, the goal noise, the success radius and the episode cap, all from the registry entry. The
normalised score is 100 x the success rate; episodes can be stepped by worker processes.
`docs/engine.md` explains the frames and what was checked.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import tempfile
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from seemrl.training.evaluation import SeedEvaluation, episode_seed

log = logging.getLogger(__name__)

SCALING = 4.0  # maze_size_scaling of D4RL's AntMaze envs and of Gymnasium-Robotics'
D4RL_SUCCESS_RADIUS = 0.5  # GoalReachingEnv: sparse reward and eval termination
D4RL_ACTION_LIMIT = 30.0  # ctrlrange of D4RL's ant motors (gear 1)
D4RL_RESET_NOISE = 0.1  # AntEnv.reset_model: U(-0.1, 0.1) on qpos, 0.1 * N(0, 1) on qvel
D4RL_OBS_DIM = 29
LAYOUTS = ("d4rl", "minari_obs_goal")
GOAL_NOISE = ("per_run", "per_episode")

# D4RL's maze maps (d4rl/locomotion/maze_env.py, the *_TEST maps of the antmaze envs), walls 1,
# free 0; the reset cell "r" and the goal cell "g" are given separately.
_UMAZE = ((1, 1, 1, 1, 1),
          (1, 0, 0, 0, 1),
          (1, 1, 1, 0, 1),
          (1, 0, 0, 0, 1),
          (1, 1, 1, 1, 1))
_MEDIUM = ((1, 1, 1, 1, 1, 1, 1, 1),
           (1, 0, 0, 1, 1, 0, 0, 1),
           (1, 0, 0, 1, 0, 0, 0, 1),
           (1, 1, 0, 0, 0, 1, 1, 1),
           (1, 0, 0, 1, 0, 0, 0, 1),
           (1, 0, 1, 0, 0, 1, 0, 1),
           (1, 0, 0, 0, 1, 0, 0, 1),
           (1, 1, 1, 1, 1, 1, 1, 1))
_LARGE = ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
          (1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1),
          (1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1),
          (1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1),
          (1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1),
          (1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1),
          (1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1),
          (1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1),
          (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1))


@dataclass(frozen=True)
class Maze:
    """One of D4RL's three AntMaze mazes and its place in Gymnasium-Robotics' frame."""
    name: str
    d4rl_map: tuple[tuple[int, ...], ...]
    start_cell: tuple[int, int]  # D4RL (row, col) of "r"
    goal_cell: tuple[int, int]  # D4RL (row, col) of "g" in the *_TEST map
    max_episode_steps: int
    gr_env_id: str  # the Gymnasium-Robotics env whose map we replace

    @property
    def height(self) -> int:
        return len(self.d4rl_map)

    @property
    def width(self) -> int:
        return len(self.d4rl_map[0])

    @property
    def torso(self) -> np.ndarray:
        """D4RL's (torso_x, torso_y): SCALING * (col, row) of the reset cell."""
        return SCALING * np.array([self.start_cell[1], self.start_cell[0]], float)

    @property
    def offset(self) -> np.ndarray:
        """d4rl_xy = gr_xy + offset (Gymnasium-Robotics built on `gr_map`)."""
        return np.array([SCALING * (self.width - 1) / 2, SCALING * (self.height - 1) / 2]) - self.torso

    def gr_map(self) -> list[list[int]]:
        """D4RL's map with its rows reversed: Gymnasium-Robotics' y runs against the row index."""
        return [list(row) for row in reversed(self.d4rl_map)]

    def gr_cell(self, d4rl_cell: Sequence[int]) -> tuple[int, int]:
        return (self.height - 1 - int(d4rl_cell[0]), int(d4rl_cell[1]))

    def d4rl_cell_xy(self, cell: Sequence[int]) -> np.ndarray:
        """Centre of D4RL cell (row, col) in D4RL's frame (`MazeEnv._rowcol_to_xy`, no noise)."""
        return SCALING * np.array([cell[1], cell[0]], float) - self.torso

    def d4rl_xy_cell(self, xy: Sequence[float]) -> tuple[int, int]:
        """The D4RL cell (row, col) whose square (side SCALING, around its centre) holds xy."""
        col, row = np.floor((np.asarray(xy, float) + self.torso) / SCALING + 0.5).astype(int)
        return int(row), int(col)

    def to_gr(self, d4rl_xy) -> np.ndarray:
        return np.asarray(d4rl_xy, float) - self.offset

    def to_d4rl(self, gr_xy) -> np.ndarray:
        return np.asarray(gr_xy, float) + self.offset


MAZES: dict[str, Maze] = {
    "umaze": Maze("umaze", _UMAZE, (1, 1), (3, 1), 700, "AntMaze_UMaze-v5"),
    "medium": Maze("medium", _MEDIUM, (1, 1), (6, 6), 1000, "AntMaze_Medium-v5"),
    "large": Maze("large", _LARGE, (1, 1), (7, 9), 1000, "AntMaze_Large-v5"),
}

# The evaluation env of Minari's D4RL/antmaze datasets when the dataset's own metadata is not on
# disk: what Minari's generation script (minari-dataset-generation-scripts, scripts/D4RL/antmaze)
# sets: the collection env's spec with `maze_map` replaced by an eval map; continuing task, goal
# not reset. NOT checked against the published metadata (no hub access here).
_R, _G = "r", "g"
MINARI_EVAL_FALLBACK: dict[str, dict[str, Any]] = {
    # the script's umaze eval map is D4RL's U_MAZE_EVAL: a U opening to the other side
    "umaze": {"maze_map": [[1, 1, 1, 1, 1], [1, 0, 0, _R, 1], [1, 0, 1, 1, 1], [1, 0, 0, _G, 1],
                           [1, 1, 1, 1, 1]]},
    "medium": {"maze_map": [[1 if v == 1 else 0 for v in row] for row in _MEDIUM]},
    "large": {"maze_map": [[1 if v == 1 else 0 for v in row] for row in _LARGE]},
}
MINARI_EVAL_FALLBACK["medium"]["maze_map"][1][1] = _R
MINARI_EVAL_FALLBACK["medium"]["maze_map"][6][6] = _G
MINARI_EVAL_FALLBACK["large"]["maze_map"][1][1] = _R
MINARI_EVAL_FALLBACK["large"]["maze_map"][7][9] = _G
_MINARI_COMMON_KWARGS = {"continuing_task": True, "reset_target": False,
                         "include_cfrc_ext_in_observation": False}


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class AntMazeTask:
    """What evaluating policies trained on one AntMaze dataset of the registry needs."""
    dataset: str
    source: str  # d4rl | minari
    maze: Maze
    obs_layout: str  # d4rl | minari_obs_goal
    max_episode_steps: int
    goal_noise: str | None  # d4rl: per_run (v0) | per_episode (v2); minari: None
    env_id: str
    minari_id: str | None = None

    @property
    def obs_dim(self) -> int:
        # d4rl: qpos[:15] + qvel[:14]; minari: achieved_goal 2 + observation 27 + desired_goal 2
        return D4RL_OBS_DIM if self.obs_layout == "d4rl" else 2 + 27 + 2


_NAME = re.compile(r"^(?P<minari>minari-)?antmaze-(?P<maze>umaze|medium|large)(-(?P<kind>diverse|play))?"
                   r"-v(?P<version>\d+)$")


def default_registry_path() -> Path:
    return Path(__file__).resolve().parents[3] / "config" / "datasets.yaml"


def _registry_entry(name: str, registry_path: str | os.PathLike | None) -> dict | None:
    path = Path(registry_path) if registry_path else default_registry_path()
    if not path.is_file():
        return None
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(name)


def antmaze_task(name: str, entry: dict | None = None,
                 registry_path: str | os.PathLike | None = None) -> AntMazeTask:
    """The AntMaze task of registry dataset `name`, from its registry entry (`entry`, else the
    registry file), with what the entry leaves out derived from the name."""
    m = _NAME.match(name)
    if entry is None:
        entry = _registry_entry(name, registry_path)
    if m is None and (entry is None or "maze" not in entry):
        raise ValueError(f"{name!r} is not an AntMaze dataset (antmaze-<maze>[-play|-diverse]-v<N> "
                         f"or minari-antmaze-..., or a registry entry with `maze`)")
    entry = dict(entry or {})
    source = entry.get("source") or ("minari" if m and m["minari"] else "d4rl")
    if source not in ("d4rl", "minari"):
        raise ValueError(f"{name}: AntMaze evaluation needs source d4rl or minari, not {source!r}")
    maze = MAZES[entry.get("maze") or m["maze"]]
    layout = entry.get("obs_layout") or ("d4rl" if source == "d4rl" else "minari_obs_goal")
    if layout not in LAYOUTS:
        raise ValueError(f"{name}: obs_layout {layout!r} is not one of {LAYOUTS}")
    goal_noise = None
    if layout == "d4rl":
        version = int(m["version"]) if m else 2
        goal_noise = entry.get("goal_noise") or ("per_run" if version < 2 else "per_episode")
        if goal_noise not in GOAL_NOISE:
            raise ValueError(f"{name}: goal_noise {goal_noise!r} is not one of {GOAL_NOISE}")
    minari_id = entry.get("minari_id")
    if source == "minari" and minari_id is None and m:
        minari_id = f"D4RL/antmaze/{name.removeprefix('minari-antmaze-')}"
    return AntMazeTask(
        dataset=name, source=source, maze=maze, obs_layout=layout,
        max_episode_steps=int(entry.get("max_episode_steps") or maze.max_episode_steps),
        goal_noise=goal_noise, env_id=entry.get("env_id") or maze.gr_env_id, minari_id=minari_id)


# ------------------------------------------------------------------ the D4RL ant
def _register() -> None:
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def d4rl_ant_xml_text() -> str:
    """Gymnasium's ant.xml with D4RL's AntMaze physics (`docs/engine.md`, AntMaze)."""
    import gymnasium.envs.mujoco as mj

    tree = ET.parse(Path(mj.__file__).parent / "assets" / "ant.xml")
    root = tree.getroot()
    root.find("option").set("timestep", "0.02")
    default_geom = root.find("default/geom")
    default_geom.set("solref", ".02 1")
    default_geom.set("solimp", ".8 .8 .01")
    motors = root.findall("actuator/motor")
    for motor in motors:
        motor.set("ctrlrange", f"-{D4RL_ACTION_LIMIT} {D4RL_ACTION_LIMIT}")
        motor.set("ctrllimited", "true")
        motor.set("gear", "1")
    assert len(motors) == 8, "Gymnasium's ant.xml changed: expected 8 motors"
    return ET.tostring(root, encoding="unicode")


def d4rl_ant_xml() -> str:
    """Path of the D4RL ant model, written once per content into the temp directory."""
    text = d4rl_ant_xml_text()
    path = Path(tempfile.gettempdir()) / f"seemrl-d4rl-ant-{hashlib.sha256(text.encode()).hexdigest()[:12]}.xml"
    if not path.is_file() or path.read_text() != text:
        fd, tmp = tempfile.mkstemp(prefix=".seemrl-ant-", suffix=".xml", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return str(path)


def _forget_maze_xml(env: gym.Env) -> None:
    """Gymnasium-Robotics writes each maze's model to $TMPDIR/ant_maze<time>.xml and never
    removes it; the model is compiled by now, so drop the file."""
    path = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


class D4RLAntMaze(gym.Wrapper):
    """D4RL's AntMaze evaluation env (`docs/engine.md`) on a Gymnasium-Robotics maze.

    Observation: float64 [29] = qpos[:15] + qvel[:14] in D4RL's frame. Action: [-1, 1]^8, scaled
    to +-30 and clipped. Reward 1.0 and termination within D4RL_SUCCESS_RADIUS of the goal;
    info["success"] says the same. `goal_seed` fixes the goal noise (one goal per run, as D4RL v0);
    None draws it at each reset from the env's generator (D4RL v2).
    """

    def __init__(self, env: gym.Env, maze: Maze, goal_seed: int | None = None):
        super().__init__(env)
        self.maze = maze
        self.goal_seed = goal_seed
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (D4RL_OBS_DIM,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
        self._goal_d4rl = maze.d4rl_cell_xy(maze.goal_cell)

    @property
    def goal(self) -> np.ndarray:
        """The current goal in D4RL's frame."""
        return self._goal_d4rl.copy()

    @property
    def _ant(self):
        return self.env.unwrapped.ant_env

    def d4rl_obs(self) -> np.ndarray:
        data = self._ant.data
        obs = np.concatenate([data.qpos[:15], data.qvel[:14]]).astype(np.float64)
        obs[:2] += self.maze.offset
        return obs

    def xy(self) -> np.ndarray:
        """The ant's (x, y) in D4RL's frame."""
        return self._ant.data.qpos[:2] + self.maze.offset

    def set_xy(self, d4rl_xy) -> np.ndarray:
        """Teleport the ant to `d4rl_xy` (D4RL frame), keeping the rest of its state; the
        observation there."""
        qpos = self._ant.data.qpos.copy()
        qpos[:2] = self.maze.to_gr(d4rl_xy)
        self._ant.set_state(qpos, self._ant.data.qvel.copy())
        return self.d4rl_obs()

    def _draw_goal(self) -> np.ndarray:
        rng = np.random.default_rng(self.goal_seed) if self.goal_seed is not None \
            else self.env.unwrapped.np_random
        centre = self.maze.d4rl_cell_xy(self.maze.goal_cell)
        # _rowcol_to_xy(add_random_noise=True): x then y += U(0, 0.25 s); goal_sampler: += U(0, 0.5) * 0.25 s
        first = rng.uniform(0.0, 0.25 * SCALING, size=2)
        second = rng.uniform(0.0, 0.5, size=2) * 0.25 * SCALING
        return np.maximum(centre + first + second, 0.0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        maze = self.maze
        self.env.reset(seed=seed, options={"reset_cell": np.array(maze.gr_cell(maze.start_cell)),
                                           "goal_cell": np.array(maze.gr_cell(maze.goal_cell))})
        u = self.env.unwrapped
        self._goal_d4rl = self._draw_goal()
        u.goal = maze.to_gr(self._goal_d4rl)
        u.update_target_site_pos()
        # AntEnv.reset_model of D4RL: qpos0 (torso at the start cell) + U(-0.1, 0.1), qvel 0.1 N(0, 1)
        ant, rng = self._ant, u.np_random
        qpos = ant.init_qpos.copy()
        qpos[:2] = maze.to_gr(maze.d4rl_cell_xy(maze.start_cell))
        qpos += rng.uniform(-D4RL_RESET_NOISE, D4RL_RESET_NOISE, size=ant.model.nq)
        qvel = ant.init_qvel + D4RL_RESET_NOISE * rng.standard_normal(ant.model.nv)
        ant.set_state(qpos, qvel)
        u.reset_pos = qpos[:2].copy()
        return self.d4rl_obs(), {"success": False, "goal": self.goal}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0) * D4RL_ACTION_LIMIT
        _, _, _, truncated, info = self.env.step(a)
        success = bool(np.linalg.norm(self.xy() - self._goal_d4rl) <= D4RL_SUCCESS_RADIUS)
        info = dict(info, success=success, goal=self.goal)
        return self.d4rl_obs(), float(success), success, truncated, info


class MinariAntMaze(gym.ObservationWrapper):
    """Flattens the dict observation as the Minari data is flattened
    (achieved_goal + observation + desired_goal)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        dim = sum(space[k].shape[0] for k in ("achieved_goal", "observation", "desired_goal") if k in space.spaces)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, observation):
        from seemrl.data.minari_source import flatten_observations

        return flatten_observations(observation)


def make_d4rl_antmaze(maze: Maze | str, goal_seed: int | None = None,
                      max_episode_steps: int | None = None) -> D4RLAntMaze:
    """D4RL's evaluation env of `maze` (see D4RLAntMaze); time limit D4RL's unless given."""
    _register()
    maze = MAZES[maze] if isinstance(maze, str) else maze
    env = gym.make(maze.gr_env_id, maze_map=maze.gr_map(), xml_file=d4rl_ant_xml(),
                   continuing_task=False, reset_target=False, include_cfrc_ext_in_observation=False,
                   max_episode_steps=max_episode_steps or maze.max_episode_steps,
                   disable_env_checker=True)
    _forget_maze_xml(env)
    return D4RLAntMaze(env, maze, goal_seed)


def minari_eval_env_spec(task: AntMazeTask, minari_root: str | os.PathLike | None = None):
    """(EnvSpec, where it came from) of the Minari dataset's evaluation env."""
    from gymnasium.envs.registration import EnvSpec

    root = minari_root or os.environ.get("MINARI_DATASETS_PATH")
    if root and task.minari_id:
        data = Path(root) / task.minari_id / "data"
        if data.is_dir():
            from minari.dataset.minari_storage import MinariStorage

            metadata = MinariStorage.read_raw_metadata(data)
            for key in ("eval_env_spec", "env_spec"):
                raw = metadata.get(key)
                if raw:  # as minari.MinariDataset does, for gymnasium 1.x
                    raw = (raw.replace('"order_enforce": true,', "")
                           .replace('"apply_api_compatibility": false,', "")
                           .replace('"autoreset": false, ', ""))
                    return EnvSpec.from_json(raw), f"{data} ({key})"
    _register()
    spec = gym.spec(task.env_id)
    kwargs = dict(spec.kwargs, **_MINARI_COMMON_KWARGS, **MINARI_EVAL_FALLBACK[task.maze.name])
    log.warning("Minari dataset %s not found under %s: evaluating in the built-in fallback spec "
                "(Minari's generation script), not the dataset's own eval_env_spec",
                task.minari_id, root)
    return dataclasses.replace(spec, kwargs=kwargs), "builtin MINARI_EVAL_FALLBACK"


def make_minari_antmaze(spec, max_episode_steps: int) -> MinariAntMaze:
    _register()
    env = gym.make(spec, max_episode_steps=max_episode_steps, disable_env_checker=True)
    _forget_maze_xml(env)
    return MinariAntMaze(env)


@dataclass(frozen=True)
class AntMazeEnvMaker:
    """A picklable maker (no arguments) of the evaluation env of `task`: what a worker process
    of `play_episodes` builds its envs from. `goal_seed`: the D4RL layout's fixed goal noise;
    `minari_spec`: the Minari layout's EnvSpec (`minari_eval_env_spec`)."""
    task: AntMazeTask
    goal_seed: int | None = None
    minari_spec: Any = None

    def __call__(self) -> gym.Env:
        if self.task.obs_layout == "d4rl":
            return make_d4rl_antmaze(self.task.maze, self.goal_seed, self.task.max_episode_steps)
        return make_minari_antmaze(self.minari_spec, self.task.max_episode_steps)


def antmaze_env_fn(dataset_name: str, *, goal_seed: int | None = None, entry: dict | None = None,
                   minari_root: str | os.PathLike | None = None,
                   registry_path: str | os.PathLike | None = None) -> AntMazeEnvMaker:
    """A maker (no arguments, picklable) of the evaluation env of registry dataset
    `dataset_name`; makers go straight into `gymnasium.vector.SyncVectorEnv`. `goal_seed` only
    matters for the D4RL layout (fixed goal noise, as in a v0 run)."""
    task = antmaze_task(dataset_name, entry, registry_path)
    if task.obs_layout == "d4rl":
        return AntMazeEnvMaker(task, goal_seed)
    return AntMazeEnvMaker(task, minari_spec=minari_eval_env_spec(task, minari_root)[0])


def run_goal_seed(eval_seed: int, seed: int) -> int:
    """Goal-noise seed of training seed `seed` when the goal is drawn once per run (D4RL v0)."""
    return int(np.random.SeedSequence([eval_seed, seed], spawn_key=(1,)).generate_state(1)[0])


# ------------------------------------------------------------------ evaluation
@dataclass
class AntMazeSeedEvaluation(SeedEvaluation):
    """SeedEvaluation with normalized_score = 100 x success rate, and the episodes' details."""
    successes: list[bool]
    success_rate: float
    episode_lengths: list[int]


PolicyFn = Callable[[np.ndarray], np.ndarray]


class _Envs:
    """Envs stepped in this process (and, in each worker process, that worker's chunk).
    `index`: which envs, ascending."""

    def __init__(self, envs: Sequence[gym.Env]):
        self.envs = list(envs)

    def reset(self, index: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return np.stack([self.envs[i].reset(seed=int(s))[0] for i, s in zip(index, seeds)])

    def step(self, index: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """obs, reward, terminated, truncated, success (info["success"]) of one step of each."""
        steps = [self.envs[i].step(a) for i, a in zip(index, actions)]
        obs, reward, terminated, truncated, info = zip(*steps)
        return (np.stack(obs), np.array(reward, float), np.array(terminated, bool),
                np.array(truncated, bool), np.array([bool(x.get("success", False)) for x in info]))

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, makers: Sequence[Callable[[], gym.Env]]) -> None:
    """A worker process: builds its envs, then runs the parent's (method, index, array) calls on
    them until it receives None (or the parent is gone); answers ("ok", result) or ("error",
    traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    envs = None
    try:
        envs = _Envs([make() for make in makers])
        conn.send(("ok", None))
        while (call := conn.recv()) is not None:
            method, *args = call
            conn.send(("ok", getattr(envs, method)(*args)))
    except EOFError:
        pass
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        if envs is not None:
            envs.close()


class _EnvPool:
    """The envs of `makers` split into `workers` contiguous chunks, each built and stepped by one
    worker process; the same calls as `_Envs`. Workers are spawned (fresh interpreters that import
    this module, not torch), so a caller's script needs the usual `if __name__ == "__main__":`
    guard, as for any spawned multiprocessing."""

    def __init__(self, makers: Sequence[Callable[[], gym.Env]], workers: int):
        chunks = np.array_split(np.arange(len(makers)), workers)
        self.owner = np.repeat(np.arange(workers), [len(c) for c in chunks])  # env -> its worker
        self.local = np.concatenate([c - c[0] for c in chunks])  # env -> its index in its worker
        # not forked: the parent holds CUDA and torch threads; not a forkserver: its socket lives
        # in $TMPDIR, whose path (the workflow's is inside the project) can be too long for one
        ctx = multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        try:
            for w, chunk in enumerate(chunks):
                conn, child = ctx.Pipe()
                self.conns.append(conn)
                self.procs.append(ctx.Process(target=_worker, args=(child, [makers[i] for i in chunk]),
                                              name=f"antmaze-eval-{w}", daemon=True))
                self.procs[-1].start()
                child.close()  # the worker holds the only other end: its death is our EOF
            for w in range(workers):
                self._recv(w)  # built
        except BaseException:
            self.close()
            raise

    def _dead(self, w: int) -> RuntimeError:
        p = self.procs[w]
        p.join(1.0)
        return RuntimeError(f"AntMaze evaluation worker {w} (pid {p.pid}) died (exit code {p.exitcode})")

    def _recv(self, w: int):
        try:
            status, value = self.conns[w].recv()
        except (EOFError, OSError):
            raise self._dead(w) from None
        if status == "error":
            raise RuntimeError(f"AntMaze evaluation worker {w} (pid {self.procs[w].pid}) failed:\n{value}")
        return value

    def _call(self, method: str, index: np.ndarray, values: np.ndarray):
        """Envs[index].method(values), each worker its part, in parallel; results in index order."""
        busy = []
        for w in range(len(self.procs)):
            part = self.owner[index] == w
            if part.any():
                try:
                    self.conns[w].send((method, self.local[index[part]], values[part]))
                except OSError:
                    raise self._dead(w) from None
                busy.append(w)
        out = [self._recv(w) for w in busy]
        return tuple(map(np.concatenate, zip(*out))) if isinstance(out[0], tuple) else np.concatenate(out)

    def reset(self, index: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return self._call("reset", index, seeds)

    def step(self, index: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._call("step", index, actions)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for p in self.procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()


def _env_group(makers: Sequence[Callable[[], gym.Env]], workers: int) -> _Envs | _EnvPool:
    workers = min(workers, len(makers))
    return _EnvPool(makers, workers) if workers > 1 else _Envs([make() for make in makers])


def _play(policy_fn: PolicyFn, envs: _Envs | _EnvPool, index: np.ndarray, n_seeds: int,
          reset_seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """play_episodes in envs[index] (ascending)."""
    n = len(index)
    if n % n_seeds:
        raise ValueError(f"{n} envs are not {n_seeds} seeds x E episodes")
    E = n // n_seeds
    obs = envs.reset(index, np.asarray(reset_seeds, np.int64)).astype(np.float32)
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    success, running = np.zeros(n, bool), np.ones(n, bool)
    nonfinite = np.zeros(n_seeds, bool)
    while running.any():
        actions = np.asarray(policy_fn(obs.reshape(n_seeds, E, -1)), np.float64)
        if actions.ndim != 3 or actions.shape[:2] != (n_seeds, E):
            raise ValueError(f"policy_fn returned shape {actions.shape}; expected ({n_seeds}, {E}, act_dim)")
        bad = ~np.isfinite(actions)
        nonfinite |= bad.reshape(n_seeds, -1).any(1)
        actions = np.clip(np.where(bad, 0.0, actions), -1.0, 1.0).reshape(n, -1)
        live = np.flatnonzero(running)
        stepped, reward, terminated, truncated, ok = envs.step(index[live], actions[live])
        obs[live] = stepped
        returns[live] += reward
        lengths[live] += 1
        success[live] |= ok
        running[live] = ~(terminated | truncated)
    return {"returns": returns, "success": success, "lengths": lengths, "nonfinite": nonfinite}


def play_episodes(policy_fn: PolicyFn, envs: Sequence[gym.Env] | Sequence[Callable[[], gym.Env]],
                  n_seeds: int, reset_seeds: Sequence[int], workers: int = 1) -> dict[str, np.ndarray]:
    """One episode in each of n_seeds * E envs (env i = s * E + k), all seeds' actions from one
    policy_fn call per step: obs [S, E, obs_dim] float32 -> actions [S, E, act_dim].

    Finished envs are not stepped again (their last observation is still passed). Non-finite
    actions become 0 and flag their seed. Returns per env: return, success (info["success"] at
    any step), length; per seed: nonfinite.

    workers = 1: `envs` are envs, stepped here. workers > 1: `envs` are picklable env makers
    (`AntMazeEnvMaker`), split into `workers` contiguous chunks, each built and stepped by one
    worker process; the policy stays here. The results do not depend on `workers`.
    """
    index = np.arange(len(envs))
    if workers <= 1:
        return _play(policy_fn, _Envs(envs), index, n_seeds, reset_seeds)
    if any(isinstance(env, gym.Env) for env in envs):
        raise TypeError("play_episodes with workers > 1 takes picklable env makers, not envs")
    pool = _env_group(envs, workers)
    try:
        return _play(policy_fn, pool, index, n_seeds, reset_seeds)
    finally:
        pool.close()


def evaluate_antmaze(policy_fn: PolicyFn, seeds: Sequence[int], dataset_name: str, n_episodes: int,
                     eval_seed: int = 0, *, entry: dict | None = None,
                     minari_root: str | os.PathLike | None = None,
                     registry_path: str | os.PathLike | None = None,
                     goal_noise: str | None = None, max_envs: int = 256,
                     workers: int = 1) -> list[AntMazeSeedEvaluation]:
    """Play `n_episodes` episodes with each seed's policy in the evaluation env of AntMaze
    dataset `dataset_name`; one result per seed, in `seeds` order.

    Episode k of seed s resets with `episode_seed(eval_seed, s, k)` (start noise, and goal noise
    with goal_noise per_episode); with per_run (D4RL v0; default from the registry) the goal noise
    comes from `run_goal_seed(eval_seed, s)`. At most `max_envs` envs exist at once: episodes are
    played in waves of max(1, max_envs // S) per seed, so policy_fn sees [S, E_wave, obs_dim].
    `workers` > 1: the envs are stepped by that many worker processes (`play_episodes`), with
    the same results.
    """
    task = antmaze_task(dataset_name, entry, registry_path)
    goal_noise = goal_noise or task.goal_noise
    if task.obs_layout == "d4rl" and goal_noise not in GOAL_NOISE:
        raise ValueError(f"goal_noise must be one of {GOAL_NOISE}, not {goal_noise!r}")
    S = len(seeds)
    wave = max(1, min(n_episodes, max_envs // max(S, 1)))
    if task.obs_layout == "d4rl":
        makers = [antmaze_env_fn(dataset_name, entry=entry, registry_path=registry_path,
                                 goal_seed=run_goal_seed(eval_seed, s) if goal_noise == "per_run" else None)
                  for s in seeds]
    else:
        maker = antmaze_env_fn(dataset_name, entry=entry, minari_root=minari_root,
                               registry_path=registry_path)
        makers = [maker] * S
    envs = _env_group([makers[i] for i in range(S) for _ in range(wave)], workers)
    out = {"returns": np.zeros((S, n_episodes)), "success": np.zeros((S, n_episodes), bool),
           "lengths": np.zeros((S, n_episodes), np.int64)}
    nonfinite = np.zeros(S, bool)
    try:
        for start in range(0, n_episodes, wave):
            ks = list(range(start, min(start + wave, n_episodes)))
            used = np.array([i * wave + j for i in range(S) for j in range(len(ks))])
            played = _play(policy_fn, envs, used, S, [episode_seed(eval_seed, s, k) for s in seeds for k in ks])
            for key in out:
                out[key][:, ks] = played[key].reshape(S, len(ks))
            nonfinite |= played["nonfinite"]
    finally:
        envs.close()

    results = []
    for i, seed in enumerate(seeds):
        r, ok = out["returns"][i], out["success"][i]
        rate = float(ok.mean())
        results.append(AntMazeSeedEvaluation(
            seed=seed, returns=r.tolist(), return_mean=float(r.mean()), return_std=float(r.std()),
            normalized_score=100.0 * rate, nonfinite_actions=bool(nonfinite[i]),
            successes=ok.tolist(), success_rate=rate, episode_lengths=out["lengths"][i].tolist()))
    return results


def describe_frames() -> dict[str, dict[str, Any]]:
    """Per maze: the offset d4rl_xy = gr_xy + offset, start and goal cells in both frames."""
    return {name: {"offset": m.offset.tolist(), "d4rl_start_cell": m.start_cell,
                   "gr_start_cell": m.gr_cell(m.start_cell), "d4rl_goal_cell": m.goal_cell,
                   "gr_goal_cell": m.gr_cell(m.goal_cell),
                   "d4rl_goal_centre": m.d4rl_cell_xy(m.goal_cell).tolist(),
                   "max_episode_steps": m.max_episode_steps} for name, m in MAZES.items()}


if __name__ == "__main__":
    print(json.dumps(describe_frames(), indent=1))
