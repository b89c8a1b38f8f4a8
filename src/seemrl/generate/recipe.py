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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from seemrl.data.d4rl import D4RL_REF_SCORES
from seemrl.io import atomic_path, sha256_file, write_json_atomic
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
        from seemrl.generate.behaviour_sac import SACConfig

        return SACConfig(
            total_steps=self.sac_steps,
            learning_starts=self.learning_starts,
            buffer_size=self.sac_steps,  # never wraps: medium-replay is a prefix of it
            batch_size=self.batch_size,
            hidden=self.hidden,
            eval_episodes=self.eval_episodes,
            log_every=max(self.snapshot_every, 1_000),
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


def run_recipe_training(env_id: str, cfg: RecipeConfig, out_dir: str | os.PathLike,
                        device: str = "auto",
                        log: Callable[[str], None] = logger.info,
                        resume_dir: str | os.PathLike | None = None,
                        resume_every_s: float = 600.0, monitor=None) -> dict[str, Any]:
    """Train SAC, pick expert and medium, write the policies, the buffer prefix and the report.

    With `resume_dir` (outside the outputs) the SAC run saves its state there every
    `resume_every_s` seconds (at snapshot steps) and continues from a state of the same env and
    training settings found there; the directory is removed once the report is written.
    Returns the report (also written to out_dir/recipe.json, last).
    """
    import torch

    from seemrl.generate.behaviour_sac import train_sac_run
    from seemrl.training.resume import ResumeDir

    device = resolve_device(device)  # before anything is touched: a wrong device fails here
    out = Path(out_dir)
    (out / REPORT_FILE).unlink(missing_ok=True)  # a stale report must not vouch for new files
    resume = None if resume_dir is None else ResumeDir(resume_dir, run_identity(env_id, cfg))
    log(f"recipe {env_id}: training SAC for {cfg.sac_steps} steps on {device}, "
        f"snapshot every {cfg.snapshot_every}")
    run = train_sac_run(env_id, cfg.sac_config(), seed=cfg.train_seed, log=log, device=device,
                        snapshot_every=cfg.snapshot_every, resume=resume, resume_every_s=resume_every_s,
                        monitor=monitor)

    expert = run.agent
    expert_return = expert.info["eval_return_mean"]
    medium = run.snapshots[select_medium_snapshot(
        [s.step for s in run.snapshots], [s.eval_return for s in run.snapshots],
        expert_return, expert_step=cfg.sac_steps, fraction=cfg.medium_fraction)]
    threshold = cfg.medium_fraction * expert_return
    log(f"recipe {env_id}: expert return {expert_return:.1f}; medium = snapshot at step "
        f"{medium.step} with return {medium.eval_return:.1f} (target {threshold:.1f})")

    replay = run.buffer.prefix(medium.step)
    n_replay_episodes = int(len(np.unique(replay["episode_id"])))

    expert.save(out / EXPERT_FILE)
    medium.agent.save(out / MEDIUM_FILE)
    with atomic_path(out / REPLAY_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, **replay)  # a file object: np.savez would append .npz to a path

    refs = D4RL_REF_SCORES.get(env_name(env_id))
    report = {
        "format": RECIPE_FORMAT,
        "env_id": env_id,
        "config": cfg.to_dict(),
        "device": device,
        "torch_version": torch.__version__,
        "train_seconds": expert.info["train_seconds"],
        "expert": {
            "step": cfg.sac_steps,
            "eval_return": expert_return,
            "eval_returns": expert.info["eval_returns"],
            "d4rl_normalized": _normalized(expert_return, refs),
        },
        "medium": {
            "rule": f"snapshot before the final step whose deterministic eval return is closest "
                    f"to {cfg.medium_fraction:g} x the expert's (earliest on a tie)",
            "threshold": threshold,
            "step": medium.step,
            "eval_return": medium.eval_return,
            "eval_returns": medium.eval_returns,
            "d4rl_normalized": _normalized(medium.eval_return, refs),
        },
        "medium_replay": {"n_transitions": medium.step, "n_episodes": n_replay_episodes},
        "snapshots": [{"step": s.step, "eval_return": s.eval_return} for s in run.snapshots],
        "levels": {
            level: {"dataset_id": level_dataset_id(env_id, level), "n_transitions": n}
            for level, n in (("random", cfg.n_transitions), ("medium", cfg.n_transitions),
                             ("medium-replay", medium.step), ("expert", cfg.n_transitions),
                             ("medium-expert", 2 * cfg.n_transitions))
        },
        "files": {name: sha256_file(out / name) for name in (EXPERT_FILE, MEDIUM_FILE, REPLAY_FILE)},
    }
    write_json_atomic(out / REPORT_FILE, report)
    if resume is not None:  # every output is written: nothing left to resume
        resume.clear()
    return report


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
                      resume_every_s: float = 600.0, monitor_factory: Callable | None = None) -> dict[str, Any]:
    """Step 1 from a rule: cfg_json is a JSON object string, a JSON file path, a dict or None;
    monitor_factory(cfg) -> a `seemrl.training.tracking.Monitor` context for the SAC run."""
    _setup_logging()
    cfg = RecipeConfig.from_json(cfg_json)
    if monitor_factory is None:
        return run_recipe_training(env_id, cfg, out_dir, device, resume_dir=resume_dir, resume_every_s=resume_every_s)
    with monitor_factory(cfg) as monitor:
        return run_recipe_training(env_id, cfg, out_dir, device, resume_dir=resume_dir,
                                   resume_every_s=resume_every_s, monitor=monitor)


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
    "run_recipe_training",
    "select_medium_snapshot",
]
