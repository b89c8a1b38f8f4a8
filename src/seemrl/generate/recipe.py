"""D4RL's dataset recipe, reproduced on Gymnasium MuJoCo v5 (the "generate" dataset source).

Step 1 (`recipe_train_main`) trains SAC online and keeps policy snapshots with their returns:
expert = the final policy, medium = the snapshot closest to a third of the expert's return,
medium-replay = the replay buffer up to it. Step 2 (`recipe_dataset_main`) rolls out one level
(random, medium, expert, medium-expert, medium-replay) into a Minari dataset with D4RL's
reference scores. `docs/data.md` gives the details.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from seemrl.data.d4rl import D4RL_REF_SCORES
from seemrl.io import atomic_path, sha256_file, write_json_atomic
from seemrl.training.resume import checkpoint_name
from seemrl.training.devices import resolve_device

RECIPE_FORMAT = "seemrl.recipe.v1"
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
EXPERT_FILE, MEDIUM_FILE, REPLAY_FILE, REPORT_FILE = (
    "expert.pt", "medium.pt", "medium_replay.npz", "recipe.json"
)

logger = logging.getLogger("seemrl.recipe")


@dataclass
class RecipeConfig:
    """Sizes and seeds of the recipe (defaults: D4RL's 1M transitions per dataset)."""

    sac_steps: int = 1_000_000  # SAC environment steps; the expert is the policy at the end
    learning_starts: int = 10_000  # uniformly random warm-up steps before the first SAC update
    batch_size: int = 256  # SAC minibatch size
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of the SAC actor and critics
    snapshot_every: int = 10_000  # environment steps between policy snapshots (medium candidates)
    eval_episodes: int = 10  # deterministic evaluation episodes per snapshot and for the expert
    medium_fraction: float = 1 / 3  # medium = snapshot with return closest to this x expert's
    n_transitions: int = 1_000_000  # transitions in each of random, medium and expert
    train_seed: int = 0  # seed of SAC training (networks, noise, warm-up actions, env)
    random_seed: int = 1  # seed of the random dataset's collection
    medium_seed: int = 2  # seed of the medium dataset's collection
    expert_seed: int = 3  # seed of the expert dataset's collection

    # fields that determine the training step's outputs (the rest only affect datasets)
    TRAINING_FIELDS = ("sac_steps", "learning_starts", "batch_size", "hidden", "snapshot_every",
                       "eval_episodes", "medium_fraction", "train_seed")

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if not 0 < self.snapshot_every < self.sac_steps:
            raise ValueError(f"snapshot_every ({self.snapshot_every}) must be in "
                             f"(0, sac_steps={self.sac_steps}): medium needs a snapshot before the end")
        if self.eval_episodes < 1 or self.n_transitions < 1:
            raise ValueError("eval_episodes and n_transitions must be positive")

    def sac_config(self):
        """The online SAC engine's settings: a checkpoint (a snapshot) every `snapshot_every` steps;
        the usual SAC hyperparameters otherwise (learning
        rates 3e-4, tau 0.005, gamma 0.99, alpha from 1 towards entropy -act_dim); each step's
        action comes from the policy before that step's update, so the environment steps while
        the GPU updates."""
        from seemrl.algos.online_sac import OnlineSACConfig

        return OnlineSACConfig(
            steps=self.sac_steps,
            learning_starts=self.learning_starts,
            buffer_size=self.sac_steps,  # never wraps
            batch_size=self.batch_size,
            hidden=self.hidden,
            checkpoint_every=self.snapshot_every,
            eval_every=0,  # the snapshots are evaluated afterwards, on CPU cores (`evaluate_snapshots`)
            eval_episodes=self.eval_episodes,
            eval_seed=self.train_seed,
            log_every=min(self.snapshot_every, 1_000),
            act_before_update=True,
        )

    @classmethod
    def from_json(cls, cfg_json: str | os.PathLike | dict | None) -> RecipeConfig:
        """From a JSON object string, a path to a JSON file, a dict, or None/"" (defaults).
        Unknown keys are an error."""
        if cfg_json is None or cfg_json == "":
            return cls()
        if isinstance(cfg_json, dict):
            return cls(**cfg_json)
        text = str(cfg_json)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls(**json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (hidden as a list), so that from_json(json.dumps(to_dict())) == self."""
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}


def env_name(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper' (the name used in dataset ids and D4RL_REF_SCORES)."""
    return env_id.rsplit("-v", 1)[0].lower()


def level_dataset_id(env_id: str, level: str) -> str:
    """Minari id of a level's dataset, e.g. seemrl/hopper-medium-replay-v0."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    return f"seemrl/{env_name(env_id)}-{level}-v0"


def reference_scores(env_id: str, ref_min: float | None = None,
                     ref_max: float | None = None) -> tuple[float, float]:
    """(ref_min, ref_max): the given values, else D4RL's constants for the env."""
    if ref_min is None or ref_max is None:
        if env_name(env_id) not in D4RL_REF_SCORES:
            raise ValueError(f"no D4RL reference scores for {env_id}; pass ref_min and ref_max")
        default_min, default_max = D4RL_REF_SCORES[env_name(env_id)]
        ref_min = default_min if ref_min is None else ref_min
        ref_max = default_max if ref_max is None else ref_max
    return float(ref_min), float(ref_max)


def select_medium_snapshot(steps: Sequence[int], returns: Sequence[float], expert_return: float,
                           expert_step: int, fraction: float = 1 / 3) -> int:
    """Index of the medium snapshot: among those taken before `expert_step`, the one whose
    return is closest to fraction * expert_return; the earliest on a tie."""
    steps = np.asarray(steps)
    returns = np.asarray(returns, dtype=np.float64)
    candidates = np.flatnonzero(steps < expert_step)
    if candidates.size == 0:
        raise ValueError(f"no snapshot before step {expert_step} to choose the medium policy from")
    gaps = np.abs(returns[candidates] - fraction * expert_return)
    return int(candidates[np.argmin(gaps)])  # argmin: the first of equal minima


# ------------------------------------------------------------------ step 1: train SAC
def run_identity(env_id: str, cfg: RecipeConfig) -> dict[str, Any]:
    """What a saved SAC state must match to be continued: the env and the training settings."""
    return {"format": RECIPE_FORMAT, "env_id": env_id,
            "training": {k: v for k, v in cfg.to_dict().items() if k in RecipeConfig.TRAINING_FIELDS}}


def evaluate_snapshots(checkpoint_dir: str | os.PathLike, env_id: str, episodes: int, eval_seed: int,
                       workers: int = 1) -> list[tuple[int, list[float]]]:
    """(step, returns) of every snapshot after step 0 in `checkpoint_dir`: `episodes` deterministic
    episodes of its policy on the CPU, episode k reset with a seed of (eval_seed, seed, k), the same
    for every snapshot. `workers` > 1 evaluates snapshots in that many processes at once; the
    numbers do not depend on it (one torch thread per evaluation)."""
    from seemrl.training.resume import checkpoint_paths

    jobs = [(str(p), env_id, episodes, eval_seed) for p in checkpoint_paths(Path(checkpoint_dir))]
    jobs = [j for j in jobs if not Path(j[0]).name == checkpoint_name(0)]
    if workers <= 1 or len(jobs) <= 1:
        return [_evaluate_snapshot(j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_evaluate_snapshot, jobs))


def _evaluate_snapshot(job: tuple[str, str, int, int]) -> tuple[int, list[float]]:
    import torch

    from seemrl.algos import online_sac as osac

    path, env_id, episodes, eval_seed = job
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = osac.load_checkpoint(path)
        (result,) = osac.evaluate(ckpt.nets.to("cpu"), ckpt.seeds, env_id, episodes, eval_seed)
    finally:
        torch.set_num_threads(threads)
    return ckpt.step, [float(r) for r in result.returns]


def run_recipe_training(env_id: str, cfg: RecipeConfig, out_dir: str | os.PathLike,
                        device: str = "auto",
                        log: Callable[[str], None] = logger.info,
                        resume_dir: str | os.PathLike | None = None,
                        resume_every_s: float = 600.0, monitor=None, eval_workers: int = 1) -> dict[str, Any]:
    """Train SAC, pick expert and medium, write the policies, the buffer prefix and the report.

    SAC runs on the stacked online SAC engine (`seemrl.algos.online_sac`, one seed; the update a
    CUDA graph on a GPU); its snapshots are evaluated afterwards on the CPU, in `eval_workers`
    processes (`evaluate_snapshots`). With `resume_dir` (outside the outputs) the run saves its state there
    at a snapshot step once `resume_every_s` seconds have passed since the last save, and
    continues from a state of the same env and training settings found there; the directory
    is removed once the report is written. Returns the report (also written to
    out_dir/recipe.json, last).
    """
    import tempfile

    import torch

    from seemrl.algos import online_sac as osac
    from seemrl.generate.behaviour_sac import transitions_prefix
    from seemrl.training.resume import ResumeDir

    device = resolve_device(device)  # before anything is touched: a wrong device fails here
    out = Path(out_dir)
    (out / REPORT_FILE).unlink(missing_ok=True)  # a stale report must not vouch for new files
    resume = None if resume_dir is None else ResumeDir(resume_dir, run_identity(env_id, cfg))
    sac_cfg = cfg.sac_config()
    log(f"recipe {env_id}: training SAC for {cfg.sac_steps} steps on {device}, "
        f"snapshot every {cfg.snapshot_every}")
    # the snapshots live outside the outputs: a killed run must not leave a half-made output
    # directory for Snakemake to take as done
    with tempfile.TemporaryDirectory(prefix="seemrl-recipe-snapshots-") as tmp:
        result = osac.train(sac_cfg, [cfg.train_seed], env_id, Path(tmp) / "checkpoints", device, log=log,
                            resume=resume, monitor=monitor, record=True, resume_every_s=resume_every_s)
        t0 = time.perf_counter()
        evaluated = evaluate_snapshots(Path(tmp) / "checkpoints", env_id, cfg.eval_episodes, cfg.train_seed,
                                       eval_workers)
        eval_seconds = time.perf_counter() - t0
        log(f"recipe {env_id}: {len(evaluated)} snapshots evaluated ({cfg.eval_episodes} episodes each) "
            f"in {eval_seconds:.1f} s on {max(1, eval_workers)} CPU process(es)")
        steps = np.array([step for step, _ in evaluated])
        returns = np.array([np.mean(r) for _, r in evaluated], dtype=np.float64)
        std = np.array([np.std(r) for _, r in evaluated], dtype=np.float64)
        expert_return = float(returns[steps == cfg.sac_steps][0])
        m = select_medium_snapshot(steps, returns, expert_return, expert_step=cfg.sac_steps,
                                   fraction=cfg.medium_fraction)
        medium_step, medium_return = int(steps[m]), float(returns[m])
        threshold = cfg.medium_fraction * expert_return
        log(f"recipe {env_id}: expert return {expert_return:.1f}; medium = snapshot at step "
            f"{medium_step} with return {medium_return:.1f} (target {threshold:.1f})")
        policies = {}
        for name, step, ret in ((EXPERT_FILE, cfg.sac_steps, expert_return), (MEDIUM_FILE, medium_step, medium_return)):
            ckpt = osac.load_checkpoint(Path(tmp) / "checkpoints" / checkpoint_name(step))
            policies[name] = engine_agent(ckpt, {"env_id": env_id, "seed": cfg.train_seed, "step": step,
                                                 "eval_return_mean": ret, "eval_episodes": cfg.eval_episodes})
    replay = transitions_prefix(result.transitions.arrays(0), medium_step)
    n_replay_episodes = int(len(np.unique(replay["episode_id"])))
    out.mkdir(parents=True, exist_ok=True)

    for name, agent in policies.items():
        agent.save(out / name)
    with atomic_path(out / REPLAY_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, **replay)  # a file object: np.savez would append .npz to a path

    refs = D4RL_REF_SCORES.get(env_name(env_id))
    episodes = result.episodes
    report = {
        "format": RECIPE_FORMAT,
        "env_id": env_id,
        "config": cfg.to_dict(),
        "device": device,
        "torch_version": torch.__version__,
        "sac": {"implementation": "seemrl.algos.online_sac (stacked engine, 1 seed)",
                "update_mode": result.update_mode, "act_before_update": sac_cfg.act_before_update,
                "train_seconds": result.wall_seconds, "env_steps_per_second": result.steps_per_second,
                "snapshot_eval_seconds": eval_seconds, "snapshot_eval_workers": max(1, eval_workers),
                "training_episodes": len(episodes),
                "last_10_training_returns": [float(r) for r in episodes["return"].to_numpy()[-10:]]},
        "train_seconds": result.wall_seconds,
        "expert": {
            "step": cfg.sac_steps,
            "eval_return": expert_return,
            "eval_return_std": float(std[steps == cfg.sac_steps][0]),
            "d4rl_normalized": _normalized(expert_return, refs),
        },
        "medium": {
            "rule": f"snapshot before the final step whose deterministic eval return is closest "
                    f"to {cfg.medium_fraction:g} x the expert's (earliest on a tie)",
            "threshold": threshold,
            "step": medium_step,
            "eval_return": medium_return,
            "eval_return_std": float(std[m]),
            "d4rl_normalized": _normalized(medium_return, refs),
        },
        "medium_replay": {"n_transitions": medium_step, "n_episodes": n_replay_episodes},
        "snapshots": [{"step": int(s), "eval_return": float(r), "eval_return_std": float(sd)}
                      for s, r, sd in zip(steps, returns, std)],
        "snapshot_eval": {"episodes": cfg.eval_episodes, "policy": "deterministic (tanh of the mean)",
                          "device": "cpu"},
        "levels": {
            level: {"dataset_id": level_dataset_id(env_id, level), "n_transitions": n}
            for level, n in (("random", cfg.n_transitions), ("medium", cfg.n_transitions),
                             ("medium-replay", medium_step), ("expert", cfg.n_transitions),
                             ("medium-expert", 2 * cfg.n_transitions))
        },
        "files": {name: sha256_file(out / name) for name in (EXPERT_FILE, MEDIUM_FILE, REPLAY_FILE)},
    }
    write_json_atomic(out / REPORT_FILE, report)
    if resume is not None:  # every output is written: nothing left to resume
        resume.clear()
    return report


def engine_agent(ckpt, info: dict[str, Any]):
    """The engine checkpoint's policy (seed 0 of its stack) as the recipe's saved `SACAgent`:
    the same tanh-squashed Gaussian, rescaled to the action box."""
    import torch

    from seemrl.generate.behaviour_sac import Actor, SACAgent, SACConfig

    nets = ckpt.nets
    obs_dim, act_dim = nets.actor.dims[0], nets.act_dim
    actor = Actor(obs_dim, act_dim, ckpt.config.hidden, nets.action_low.cpu().numpy(), nets.action_high.cpu().numpy())
    linears = [m for m in actor.trunk if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(linears, nets.actor.weights, nets.actor.biases, strict=True):
            lin.weight.copy_(w[0].T)
            lin.bias.copy_(b[0, 0])
    cfg = SACConfig(total_steps=ckpt.config.steps, learning_starts=ckpt.config.learning_starts,
                    batch_size=ckpt.config.batch_size, hidden=ckpt.config.hidden, eval_episodes=ckpt.config.eval_episodes)
    return SACAgent(actor, cfg, obs_dim, act_dim, info)


def _normalized(ret: float, refs: tuple[float, float] | None) -> float | None:
    return None if refs is None else 100 * (ret - refs[0]) / (refs[1] - refs[0])


# ------------------------------------------------------------------ step 2: one level's dataset
def build_level_dataset(level: str, env_id: str, recipe_dir: str | os.PathLike, cfg: RecipeConfig,
                        minari_root: str | os.PathLike, ref_min: float | None = None,
                        ref_max: float | None = None,
                        log: Callable[[str], None] = logger.info) -> str:
    """Write the Minari dataset of `level` from the recipe in `recipe_dir`; returns its id.

    An existing dataset of the same id is replaced (atomically).
    """
    from seemrl.data.minari_source import collect_episodes, write_minari_dataset
    from seemrl.generate.behaviour_sac import SACAgent, split_episodes

    dataset_id = level_dataset_id(env_id, level)
    ref_min, ref_max = reference_scores(env_id, ref_min, ref_max)
    recipe_dir = Path(recipe_dir)
    report = _read_report(recipe_dir, env_id, cfg)
    expert_step = report["expert"]["step"]
    medium_step = report["medium"]["step"]

    if level == "random":
        episodes = collect_episodes(env_id, None, cfg.n_transitions, seed=cfg.random_seed)
        algorithm = "uniform random actions"
        about = "uniformly random actions"
    elif level in ("medium", "expert"):
        agent = SACAgent.load(_checked(recipe_dir, MEDIUM_FILE if level == "medium" else EXPERT_FILE,
                                       report))
        seed = cfg.medium_seed if level == "medium" else cfg.expert_seed
        episodes = collect_episodes(env_id, agent, cfg.n_transitions, seed=seed,
                                    deterministic=False)
        algorithm = "SAC (seemrl D4RL recipe)"
        step = medium_step if level == "medium" else expert_step
        about = (f"stochastic rollouts of the SAC policy after {step} steps (deterministic eval "
                 f"return {report[level]['eval_return']:.1f})")
    elif level == "medium-replay":
        with np.load(_checked(recipe_dir, REPLAY_FILE, report)) as z:
            episodes = split_episodes({k: z[k] for k in z.files})
        algorithm = "SAC (seemrl D4RL recipe)"
        about = f"the SAC replay buffer up to the medium policy's step {medium_step}"
    elif level == "medium-expert":
        episodes = []
        for part in ("medium", "expert"):
            episodes += _read_episodes(level_dataset_id(env_id, part), minari_root,
                                       cfg.n_transitions)
        algorithm = "SAC (seemrl D4RL recipe)"
        about = "the medium dataset's episodes followed by the expert dataset's"
    else:
        raise AssertionError(level)  # level_dataset_id has rejected it

    n = sum(len(ep["rewards"]) for ep in episodes)
    log(f"recipe {env_id} {level}: {len(episodes)} episodes, {n} transitions -> {dataset_id}")
    write_minari_dataset(
        dataset_id, episodes, env_id, ref_min, ref_max, minari_root,
        algorithm_name=algorithm,
        description=f"D4RL-style {level} data on {env_id} (seemrl recipe): {about}. "
                    f"Reference scores {ref_min} / {ref_max}.",
        overwrite=True,
    )
    return dataset_id


def _read_report(recipe_dir: Path, env_id: str, cfg: RecipeConfig) -> dict[str, Any]:
    """The recipe report, checked against the env and the training part of `cfg`."""
    path = recipe_dir / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recipe report; run the training step first")
    report = json.loads(path.read_text())
    if report.get("format") != RECIPE_FORMAT or report.get("env_id") != env_id:
        raise ValueError(f"{path}: not a {RECIPE_FORMAT} recipe for {env_id}")
    trained = RecipeConfig(**report["config"])
    differ = [k for k in RecipeConfig.TRAINING_FIELDS if getattr(trained, k) != getattr(cfg, k)]
    if differ:
        raise ValueError(f"{path}: trained with different {', '.join(differ)} than the config")
    return report


def _checked(recipe_dir: Path, name: str, report: dict[str, Any]) -> Path:
    """recipe_dir/name, after checking it is the file the report was written for."""
    path = recipe_dir / name
    if sha256_file(path) != report["files"][name]:
        raise ValueError(f"{path} is not the file recipe.json describes (sha256 differs)")
    return path


def _read_episodes(dataset_id: str, minari_root: str | os.PathLike,
                   n_transitions: int) -> list[dict[str, Any]]:
    """A Minari dataset's episodes as episode dicts, checked to hold n_transitions steps."""
    import minari

    from seemrl.data.minari_source import use_minari_root

    with use_minari_root(minari_root) as root:
        if not (root / dataset_id).exists():
            raise FileNotFoundError(f"{root / dataset_id}: build {dataset_id} first")
        dataset = minari.load_dataset(dataset_id)
        episodes = [
            {
                "observations": np.asarray(ep.observations),
                "actions": np.asarray(ep.actions, np.float32),
                "rewards": np.asarray(ep.rewards, np.float64),
                "terminations": np.asarray(ep.terminations, bool),
                "truncations": np.asarray(ep.truncations, bool),
                "seed": None,
            }
            for ep in dataset.iterate_episodes()
        ]
    n = sum(len(ep["rewards"]) for ep in episodes)
    if n != n_transitions:
        raise ValueError(f"{dataset_id} under {minari_root} holds {n} transitions, the config "
                         f"says {n_transitions}: rebuild it")
    return episodes


# ------------------------------------------------------------------ entry points for Snakemake
def recipe_train_main(env_id: str, out_dir: str | os.PathLike, cfg_json=None,
                      device: str = "auto", resume_dir: str | os.PathLike | None = None,
                      resume_every_s: float = 600.0, monitor_factory: Callable | None = None,
                      eval_workers: int = 1) -> dict[str, Any]:
    """Step 1 from a rule: cfg_json is a JSON object string, a JSON file path, a dict or None;
    monitor_factory(cfg) -> a `seemrl.training.tracking.Monitor` context for the SAC run."""
    _setup_logging()
    cfg = RecipeConfig.from_json(cfg_json)
    kw = {"resume_dir": resume_dir, "resume_every_s": resume_every_s, "eval_workers": eval_workers}
    if monitor_factory is None:
        return run_recipe_training(env_id, cfg, out_dir, device, **kw)
    with monitor_factory(cfg) as monitor:
        return run_recipe_training(env_id, cfg, out_dir, device, monitor=monitor, **kw)


def recipe_dataset_main(level: str, env_id: str, recipe_dir: str | os.PathLike, cfg_json,
                        minari_root: str | os.PathLike, ref_min: float | None = None,
                        ref_max: float | None = None) -> str:
    """Step 2 from a rule, for one level; ref_min/ref_max None: D4RL's constants."""
    _setup_logging()
    return build_level_dataset(level, env_id, recipe_dir, RecipeConfig.from_json(cfg_json),
                               minari_root, ref_min, ref_max)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # no-op if set up
    logger.setLevel(logging.INFO)


__all__ = [
    "D4RL_REF_SCORES",
    "LEVELS",
    "RecipeConfig",
    "build_level_dataset",
    "level_dataset_id",
    "recipe_dataset_main",
    "recipe_train_main",
    "reference_scores",
    "evaluate_snapshots",
    "run_recipe_training",
    "select_medium_snapshot",
]
