"""A training job from start to finish: read the data, prepare it, build the networks, train all
seeds, write the outputs atomically and record the run.

`train_offline` serves `seemrl train` (any offline algorithm of `seemrl.algos`), `train_online`
serves `seemrl train-online`. run.json records the resolved config (every field, defaults
included), so no later stage needs an algorithm's module to learn what a run used.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seemrl.io import atomic_path, sha256_file, write_json_atomic
from seemrl.training.resume import ResumeDir

log = logging.getLogger("seemrl")


@dataclass
class Outputs:
    """Where a training job writes: checkpoints (a directory), metrics, run.json, evaluations
    and, online, episodes (Parquet); resume_dir keeps its resumable state between attempts."""

    checkpoints: str
    metrics: str
    run: str
    evaluations: str | None = None
    episodes: str | None = None
    resume_dir: str | None = None
    progress: str | None = None


def monitor(progress: str | None, seeds: list[int], total: int, job: str, labels: dict, config: dict):
    """A job's `seemrl.training.tracking.Monitor`: its progress file and, if the workflow's
    `tracking:` says so, TensorBoard and W&B; named after its labels (dataset/percent/algo/norm)."""
    from seemrl.training.tracking import Monitor

    name = "/".join(f"{v}pct" if k == "percent" else v for k, v in labels.items()) or job
    return Monitor(name, seeds, total, job=job, labels=labels, config=config, progress=progress)


def evaluator(meta: dict, cfg, seeds: list[int], data_path: str, workers: int = 1):
    """The evaluate(nets) function of a run (None without evaluation) and what run.json says of
    it. AntMaze datasets are evaluated in the maze, start and goal of their data
    (`seemrl.training.antmaze`, stepped by `workers` processes); everything else in the
    registry's evaluation environment."""
    if not cfg.eval_every:
        return None, None
    name = meta.get("registry_name") or meta.get("name", "")
    ref = {"ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")}
    if "antmaze" in name:
        import numpy as np
        import torch

        from seemrl.training.antmaze import evaluate_antmaze

        def evaluate(nets):
            nets = nets.host_policy()

            @torch.no_grad()
            def policy_fn(obs: np.ndarray) -> np.ndarray:
                x = torch.as_tensor(obs, dtype=torch.float32, device=nets.obs_mean.device)
                return nets.policy(nets.normalize(x)).cpu().numpy()
            return evaluate_antmaze(policy_fn, seeds, name, cfg.eval_episodes, eval_seed=cfg.eval_seed,
                                    entry=meta.get("registry_entry"), workers=workers)
        return evaluate, {"env_id": f"antmaze evaluation of {name} (seemrl.training.antmaze)", "eval_workers": workers,
                          **ref}
    from seemrl.training.evaluation import evaluate_policies

    env_id = meta.get("eval_env_id") or meta.get("env_id")
    if not env_id:
        raise SystemExit(f"eval_every={cfg.eval_every} but {data_path} names no eval_env_id or env_id")
    play = functools.partial(evaluate_policies, seeds=seeds, env_id=env_id, n_episodes=cfg.eval_episodes,
                             eval_seed=cfg.eval_seed, ref_min=ref["ref_min_score"], ref_max=ref["ref_max_score"])

    def evaluate(nets):
        return play(nets.host_policy())
    return evaluate, {"env_id": env_id, **ref}


def _write_frames(frames: dict[str, Any]) -> None:
    for path, frame in frames.items():
        if path:
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)


def _run_record(algorithm: str, cfg, params: dict, seeds: list[int], labels: dict, result, device_info: dict,
                **extra) -> dict:
    import torch

    rate = result.steps_per_second
    return {
        "algorithm": algorithm,
        "labels": labels,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),  # resolved: every field
        "config_given": params,
        "seeds": seeds,
        "diverged_step": dict(zip(map(str, seeds), result.diverged_step)),
        **extra,
        "resumed_from_step": result.resumed_from_step,
        "steps_per_second": rate,  # of this process, i.e. since the resumed step
        "seed_steps_per_second": None if rate is None else rate * len(seeds),
        "wall_seconds": result.wall_seconds,
        "device": device_info,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _train_with_outputs(fn, outputs: Outputs, resume: ResumeDir | None, **kw):
    """fn(checkpoint_dir, resume=..., **kw): without a resume directory the checkpoints go straight
    into a temporary twin of the output directory; with one, into the resume directory, copied
    into the output directory (atomically) at the end."""
    if resume is None:
        with atomic_path(outputs.checkpoints, is_dir=True) as ckpt_dir:
            return fn(Path(ckpt_dir), **kw)
    return fn(Path(outputs.checkpoints), resume=resume, **kw)


def train_offline(trainer: str, cfg, params: dict, seeds: list[int], data_path: str, outputs: Outputs, *,
                  device: str, device_info: dict, labels: dict, eval_workers: int = 1) -> dict:
    """Train one cell's seeds of an offline algorithm on a transition table; returns run.json."""
    from seemrl.algos import trainer_module
    from seemrl.data.preparation import prepare
    from seemrl.data.transitions import read_transitions
    from seemrl.training.draws import OfflineData
    from seemrl.training.evaluation import summarize

    algo = trainer_module(trainer)
    t = read_transitions(data_path)
    evaluate, eval_info = evaluator(t.meta, cfg, seeds, data_path, workers=eval_workers)
    prepared = prepare(t, dataclasses.asdict(cfg))
    data = OfflineData.from_prepared(prepared, device)
    nets = algo.build_nets(cfg, seeds, t.obs_dim, t.act_dim, prepared.obs_mean, prepared.obs_std)
    # the data file's hash, not its path, decides whether a saved state belongs to this run
    resume = ResumeDir(outputs.resume_dir, algo.run_identity(cfg, seeds, sha256_file(data_path))) \
        if outputs.resume_dir else None
    log.info("training %s, %d seeds on %d transitions from %s, device %s, config %s", trainer, len(seeds), len(t),
             data_path, device, json.dumps(params, sort_keys=True))
    config = {"algorithm": trainer, **dataclasses.asdict(cfg)}
    with monitor(outputs.progress, seeds, cfg.steps, "train", labels, config) as mon:
        result = _train_with_outputs(functools.partial(algo.train, cfg, seeds, data, nets), outputs, resume,
                                     device=device, log=log.info, evaluate=evaluate, monitor=mon)
    _write_frames({outputs.metrics: result.metrics, outputs.evaluations: result.evaluations})
    evaluation = None
    if cfg.eval_every:
        evaluation = {**eval_info, "every": cfg.eval_every, "episodes": cfg.eval_episodes,
                      "per_seed": summarize(result.evaluations)}
    run = _run_record(
        trainer, cfg, params, seeds, labels, result, device_info,
        data_preparation=prepared.info, evaluation=evaluation, steps=cfg.steps,
        data={"path": data_path, "n_transitions": len(t),
              **{k: t.meta.get(k) for k in ("name", "env_id", "subset_percent", "subset_seed", "parent_sha256")}})
    write_json_atomic(outputs.run, run)
    if resume is not None:  # every output is written: nothing left to resume
        resume.clear()
        log.info("removed resume state %s", resume.path)
    rate = result.steps_per_second
    log.info("done: %s steps/s, diverged_step per seed %s", "-" if rate is None else f"{rate:.0f}",
             result.diverged_step)
    return run


def train_online(cfg, params: dict, seeds: list[int], env_id: str, outputs: Outputs, *, device: str,
                 device_info: dict, labels: dict) -> dict:
    """Online SAC on `env_id`, all seeds in one process (paper Fig. 11); returns run.json."""
    from seemrl.algos import online_sac
    from seemrl.data.d4rl import D4RL_REF_SCORES

    ref_min, ref_max = D4RL_REF_SCORES.get(env_id.split("-")[0].lower(), (None, None))
    resume = ResumeDir(outputs.resume_dir, online_sac.run_identity(cfg, seeds, env_id)) \
        if outputs.resume_dir else None
    log.info("online SAC on %s, seeds %s, device %s, config %s", env_id, seeds, device,
             json.dumps(params, sort_keys=True))
    config = {"algorithm": "online_sac", **dataclasses.asdict(cfg)}
    with monitor(outputs.progress, seeds, cfg.steps, "train_online", labels, config) as mon:
        result = _train_with_outputs(functools.partial(online_sac.train, cfg, seeds, env_id), outputs, resume,
                                     device=device, log=log.info, ref_min=ref_min, ref_max=ref_max, monitor=mon)
    _write_frames({outputs.metrics: result.metrics, outputs.evaluations: result.evaluations,
                   outputs.episodes: result.episodes})
    run = _run_record(
        "online_sac", cfg, params, seeds, labels, result, device_info, env_id=env_id,
        nonfinite_actions=dict(zip(map(str, seeds), map(int, result.nonfinite_actions))),
        ref_min_score=ref_min, ref_max_score=ref_max, update_mode=result.update_mode)
    write_json_atomic(outputs.run, run)
    if resume is not None:
        resume.clear()
    log.info("done: diverged_step per seed %s", result.diverged_step)
    return run
