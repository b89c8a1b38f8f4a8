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
from typing import Any, Callable

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


class PolicyEvaluation:
    """evaluate(nets) -> one result per seed: `play` of the policy, acting from a CPU copy where it
    is deterministic (`OfflineNets.host_policy`). With `overlap`, the training loop plays it in
    the background while training goes on (`seemrl.training.loop.train_loop`): snapshot(nets) is
    a copy of the policy at the step (`OfflineNets.policy_snapshot`), run(copy) plays it,
    state(copy) / restore(nets, state) carry a copy through a resume state. The same policy plays
    the same episodes either way. A policy acting on a GPU computes its float32 matmuls in the
    run's `matmul_precision`, held for the whole evaluation: an evaluation in the background
    would otherwise take whichever the training steps had set at each of its matmuls."""

    def __init__(self, play: Callable, overlap: bool = False, precision: str = "tf32"):
        self.play, self.overlap, self.precision = play, overlap, precision

    def _play(self, nets):
        from seemrl.training.devices import matmul_precision

        if nets.obs_mean.device.type != "cuda":
            return self.play(nets)
        with matmul_precision(self.precision):
            return self.play(nets)

    def __call__(self, nets):
        return self._play(nets.host_policy())

    def snapshot(self, nets):
        return nets.policy_snapshot()

    def run(self, copy):
        return self._play(copy)

    def state(self, copy) -> dict:
        state = {name: {k: v.detach().clone() for k, v in getattr(copy, name).state_dict().items()}
                 for name in copy.POLICY_MODULES}
        return {**state, "_eval_rng": copy.eval_rng_states()}

    def restore(self, nets, state: dict):
        copy = nets.policy_snapshot()
        for name, tensors in state.items():
            if not name.startswith("_"):
                getattr(copy, name).load_state_dict(tensors)
        copy.set_eval_rng_states(state.get("_eval_rng", []))
        return copy


def evaluator(meta: dict, cfg, seeds: list[int], data_path: str, workers: int = 1, overlap: bool = False):
    """The `PolicyEvaluation` of a run (None without evaluation) and what run.json says of it.
    AntMaze datasets are evaluated in the maze, start and goal of their data
    (`seemrl.training.antmaze`, stepped by `workers` processes); everything else in the
    registry's evaluation environment. `overlap`: play in the background while training goes on
    (a copy of the nets' `POLICY_MODULES`; `seemrl.algos.base.NetsEvaluation`)."""
    if not cfg.eval_every:
        return None, None
    name = meta.get("registry_name") or meta.get("name", "")
    ref = {"ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")}
    if "antmaze" in name:
        import numpy as np
        import torch

        from seemrl.training.antmaze import evaluate_antmaze

        def play(nets):
            @torch.no_grad()
            def policy_fn(obs: np.ndarray) -> np.ndarray:
                x = torch.as_tensor(obs, dtype=torch.float32, device=nets.obs_mean.device)
                return nets.policy(nets.normalize(x)).cpu().numpy()
            return evaluate_antmaze(policy_fn, seeds, name, cfg.eval_episodes, eval_seed=cfg.eval_seed,
                                    entry=meta.get("registry_entry"), workers=workers)
        return PolicyEvaluation(play, overlap, cfg.matmul_precision), {
            "env_id": f"antmaze evaluation of {name} (seemrl.training.antmaze)", "eval_workers": workers, **ref}
    from seemrl.training.evaluation import evaluate_policies

    env_id = meta.get("eval_env_id") or meta.get("env_id")
    if not env_id:
        raise SystemExit(f"eval_every={cfg.eval_every} but {data_path} names no eval_env_id or env_id")
    play = functools.partial(evaluate_policies, seeds=seeds, env_id=env_id, n_episodes=cfg.eval_episodes,
                             eval_seed=cfg.eval_seed, ref_min=ref["ref_min_score"], ref_max=ref["ref_max_score"])
    return PolicyEvaluation(play, overlap, cfg.matmul_precision), {"env_id": env_id, **ref}


def _write_frames(frames: dict[str, Any]) -> None:
    for path, frame in frames.items():
        if path:
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp, index=False)


def _evaluation_record(cfg, info: dict, evaluations) -> dict | None:
    """run.json's `evaluation`: where and how the policies were evaluated, and the per-seed summary."""
    from seemrl.training.evaluation import summarize

    if not cfg.eval_every:
        return None
    return {**info, "every": cfg.eval_every, **({"from": cfg.eval_from} if cfg.eval_from else {}),
            "episodes": cfg.eval_episodes, "per_seed": summarize(evaluations)}


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
                  device: str, device_info: dict, labels: dict, eval_workers: int = 1,
                  eval_overlap: bool = False) -> dict:
    """Train one cell's seeds of an offline algorithm on a transition table; returns run.json.
    `eval_overlap`: evaluations play in the background while training goes on (same results)."""
    from seemrl.algos import trainer_module
    from seemrl.data.preparation import prepare
    from seemrl.data.transitions import read_transitions
    from seemrl.training.draws import OfflineData

    algo = trainer_module(trainer)
    t = read_transitions(data_path)
    evaluate, eval_info = evaluator(t.meta, cfg, seeds, data_path, workers=eval_workers, overlap=eval_overlap)
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
    evaluation = _evaluation_record(cfg, eval_info, result.evaluations)
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


# ------------------------------------------------------------------ cells trained together
TOGETHER_TRAINERS = ("td3", "iql", "cql", "diffql")


def check_together_trainer(trainer: str) -> None:
    """Refuse, by name, a trainer that cannot train cells together."""
    if trainer not in TOGETHER_TRAINERS:
        raise SystemExit(f"trainer {trainer!r} cannot train cells together (only {', '.join(TOGETHER_TRAINERS)})")


@dataclass
class Cell:
    """One cell of a job that trains several cells together: its data, seeds, labels, outputs and,
    for a cell of a sweep, its own algorithm settings (`params`; default: the job's)."""

    data: str
    seeds: list[int]
    labels: dict
    outputs: Outputs
    params: dict | None = None

    @classmethod
    def from_json(cls, spec: dict) -> Cell:
        """A cell from its JSON form: data, seeds, labels, params and the `Outputs` fields."""
        unknown = set(spec) - {"data", "seeds", "labels", "params", *Outputs.__dataclass_fields__}
        if unknown or not {"data", "seeds", "checkpoints", "metrics", "run"} <= set(spec):
            raise ValueError(f"a cell needs data, seeds, checkpoints, metrics and run (and may have labels, "
                             f"params, evaluations, progress); got keys {sorted(spec)}")
        outputs = Outputs(**{k: v for k, v in spec.items() if k in Outputs.__dataclass_fields__})
        params = spec.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"a cell's params must be a JSON object of its algorithm's settings, got {params!r}")
        return cls(spec["data"], [int(x) for x in spec["seeds"]], dict(spec.get("labels") or {}), outputs, params)


def cell_configs(config_cls, cfg, params: dict, cells: list[Cell]) -> tuple[list, list[dict], dict[str, list[float]]]:
    """Each cell's config and given params (its own `params`, else the job's) and the settings
    that differ between them: name -> one value per member, for the trainer (`member_settings`).
    Cells whose configs differ in a setting outside `config_cls.MEMBER_SETTINGS` cannot share a
    stack: refused, naming the setting and the cells."""
    from seemrl.config import build

    cfgs, given = [], []
    for cell in cells:
        if cell.params is None:
            cfgs.append(cfg)
            given.append(params)
            continue
        try:
            cfgs.append(build(config_cls, cell.params, f"params of cell {cell.data}"))
        except ValueError as exc:
            raise SystemExit(f"bad params of the cell of {cell.data}: {exc}")
        given.append(cell.params)
    first = dataclasses.asdict(cfgs[0])
    differ = sorted({k for c in cfgs[1:] for k, v in dataclasses.asdict(c).items() if v != first[k]})
    allowed = getattr(config_cls, "MEMBER_SETTINGS", ())
    if set(differ) - set(allowed):
        raise SystemExit(f"cells {cells[0].data} and others differ in {', '.join(k for k in differ if k not in allowed)}: "
                         f"only cells that differ in {', '.join(allowed) or 'nothing'} besides their data and seeds "
                         f"can share a stack")
    settings = {k: [float(getattr(c, k)) for c, cell in zip(cfgs, cells) for _ in cell.seeds] for k in differ}
    return cfgs, given, settings


def load_members(dst, src, members: slice, modules) -> None:
    """Copy stack members `members` of the networks `modules` of nets `src` into nets `dst`,
    built for those members alone. A tensor without a member axis (same shape in both) is copied."""
    for name in modules:
        have, want = getattr(src, name).state_dict(), getattr(dst, name).state_dict()
        out = {}
        for key, w in want.items():
            v = have[key]
            if v.shape != w.shape:
                v = v[members]
                if v.shape != w.shape:
                    raise ValueError(f"{name}.{key}: members {members} of shape {tuple(have[key].shape)} do not "
                                     f"fit {tuple(w.shape)}")
            out[key] = v
        getattr(dst, name).load_state_dict(out)


class _Fanout:
    """The loop's monitor for cells trained together: each cell's `Monitor` gets its members' rows."""

    def __init__(self, monitors: list, spans: list[slice], n_members: int):
        self.monitors, self.spans, self.n = monitors, spans, n_members

    def _split(self, rows) -> list:
        rows = list(rows)
        return [rows[span] for span in self.spans] if len(rows) == self.n else [rows] * len(self.spans)

    def metrics(self, step, rows):
        for m, part in zip(self.monitors, self._split(rows)):
            m.metrics(step, part)

    def evaluations(self, step, rows):
        for m, part in zip(self.monitors, self._split(rows)):
            m.evaluations(step, part)

    def progress(self, step, rate):
        for m in self.monitors:
            m.progress(step, rate)


class _CellsEvaluation:
    """The evaluation of cells trained together: each cell's `PolicyEvaluation` of a copy of its
    members' networks with its own state statistics (`load_members`), results in member order."""

    def __init__(self, evaluations: list, cell_nets: list, spans: list[slice], modules, overlap: bool):
        self.evaluations, self.cell_nets, self.spans, self.modules = evaluations, cell_nets, spans, modules
        self.overlap = overlap

    def _cells(self, stack_nets):
        for k, nets in enumerate(self.cell_nets):
            load_members(nets, stack_nets, self.spans[k], self.modules)
            nets.adopt_members(stack_nets, self.spans[k])  # e.g. Diffusion-QL's evaluation generators
            yield self.evaluations[k], nets

    def __call__(self, stack_nets):
        return [r for e, nets in self._cells(stack_nets) for r in e(nets)]

    def snapshot(self, stack_nets):
        return [e.snapshot(nets) for e, nets in self._cells(stack_nets)]

    def run(self, copies):
        return [r for e, copy in zip(self.evaluations, copies) for r in e.run(copy)]

    def state(self, copies) -> list:
        return [e.state(copy) for e, copy in zip(self.evaluations, copies)]

    def restore(self, stack_nets, states: list):
        return [e.restore(nets, st) for e, nets, st in zip(self.evaluations, self.cell_nets, states)]


def _member_rows(frame, span: slice, n_members: int):
    """The rows of members `span` of a table written n_members rows at a time (metrics, evaluations)."""
    if frame.empty:
        return frame
    import numpy as np

    keep = np.isin(np.arange(len(frame)) % n_members, np.arange(n_members)[span])
    return frame[keep].reset_index(drop=True)


def train_offline_together(trainer: str, cfg, params: dict, cells: list[Cell], *, device: str, device_info: dict,
                           resume_dir: str | None = None, eval_workers: int = 1,
                           eval_overlap: bool = False) -> list[dict]:
    """Train several cells of one algorithm config (e.g. one dataset's X% subsets) in one stack:
    each cell's seeds sample only its own table, and each cell gets the outputs, evaluations and
    checkpoints it would get alone (`train_offline`); returns each cell's run.json. Cells of a
    sweep may carry their own `params`, differing in the algorithm's MEMBER_SETTINGS
    (`cell_configs`); each member then trains with its cell's values.

    The stack's checkpoints go to a temporary directory (or, with `resume_dir`, stay resumable
    there) and are split into the cells' checkpoint directories at the end, atomically per cell.
    """
    import contextlib
    import tempfile

    from seemrl.algos import trainer_module
    from seemrl.data.preparation import prepare
    from seemrl.data.transitions import read_transitions
    from seemrl.training.draws import OfflineData
    from seemrl.training.resume import checkpoint_paths

    check_together_trainer(trainer)
    if len(cells) < 2:
        raise SystemExit(f"training together needs at least two cells, got {len(cells)}")
    algo = trainer_module(trainer)
    cfgs, given, settings = cell_configs(algo.Config, cfg, params, cells)
    cfg = cfgs[0]  # the stack's; the settings that differ go per member
    tables, prepared, evaluators, spans, members = [], [], [], [], []
    for cell, cell_cfg in zip(cells, cfgs):
        t = read_transitions(cell.data)
        if tables and (t.obs_dim, t.act_dim) != (tables[0].obs_dim, tables[0].act_dim):
            raise SystemExit(f"{cell.data}: state/action sizes {t.obs_dim}/{t.act_dim} differ from "
                             f"{cells[0].data}'s {tables[0].obs_dim}/{tables[0].act_dim}: these cells cannot share a stack")
        tables.append(t)
        prepared.append(prepare(t, dataclasses.asdict(cell_cfg)))
        evaluators.append(evaluator(t.meta, cell_cfg, cell.seeds, cell.data, workers=eval_workers))
        spans.append(slice(len(members), len(members) + len(cell.seeds)))
        members += cell.seeds
    obs_dim, act_dim = tables[0].obs_dim, tables[0].act_dim
    data = OfflineData.stack([OfflineData.from_prepared(p, device) for p in prepared], [len(c.seeds) for c in cells])
    nets = algo.build_nets(cfg, members, obs_dim, act_dim)  # states come normalised per cell (the data, cell_nets)
    cell_nets = [algo.build_nets(cc, c.seeds, obs_dim, act_dim, p.obs_mean, p.obs_std).to(device)
                 for cc, c, p in zip(cfgs, cells, prepared)]
    modules = type(nets).MODULES
    hashes = [sha256_file(c.data) for c in cells]
    resume = ResumeDir(resume_dir, {"together": [algo.run_identity(cc, c.seeds, h)
                                                 for cc, c, h in zip(cfgs, cells, hashes)]}) if resume_dir else None

    evaluate = _CellsEvaluation([e for e, _ in evaluators], cell_nets, spans, modules, eval_overlap) \
        if cfg.eval_every else None

    log.info("training %s, %d cells together (%d members) on %s transitions, device %s, config %s%s", trainer,
             len(cells), len(members), "+".join(str(len(t)) for t in tables), device, json.dumps(given[0], sort_keys=True),
             "".join(f", {k} per cell {sorted(set(v), key=v.index)}" for k, v in settings.items()))
    with contextlib.ExitStack() as stack:
        monitors = [stack.enter_context(monitor(c.outputs.progress, c.seeds, cfg.steps, "train", c.labels,
                                                {"algorithm": trainer, **dataclasses.asdict(cc)}))
                    for cc, c in zip(cfgs, cells)]
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=".together-", dir=Path(cells[0].outputs.checkpoints).parent)))
        combined = work / "checkpoints"
        combined.mkdir()
        result = algo.train(cfg, members, data, nets, combined, device=device, log=log.info,
                            evaluate=evaluate, resume=resume,
                            monitor=_Fanout(monitors, spans, len(members)), settings=settings)
        # the stack's checkpoints, split: each cell's as its own run would have written them
        cell_dirs = [stack.enter_context(atomic_path(c.outputs.checkpoints, is_dir=True)) for c in cells]
        for path in checkpoint_paths(combined):
            ck = algo.load_checkpoint(path)
            for k, cell in enumerate(cells):
                load_members(cell_nets[k], ck.nets, spans[k], modules)
                algo.save_checkpoint(cell_dirs[k] / path.name, cell_nets[k], cfgs[k], cell.seeds, ck.step,
                                     ck.diverged_step[spans[k]])
    runs = []
    others = [c.labels for c in cells]
    for k, (cell, cell_cfg, p, t) in enumerate(zip(cells, cfgs, prepared, tables)):
        metrics = _member_rows(result.metrics, spans[k], len(members))
        evaluations = _member_rows(result.evaluations, spans[k], len(members))
        _write_frames({cell.outputs.metrics: metrics, cell.outputs.evaluations: evaluations})
        evaluation = _evaluation_record(cell_cfg, evaluators[k][1], evaluations)
        part = dataclasses.replace(result, diverged_step=result.diverged_step[spans[k]])
        run = _run_record(
            trainer, cell_cfg, given[k], cell.seeds, cell.labels, part, device_info,
            data_preparation=p.info, evaluation=evaluation, steps=cfg.steps,
            data={"path": cell.data, "n_transitions": len(t),
                  **{key: t.meta.get(key) for key in ("name", "env_id", "subset_percent", "subset_seed", "parent_sha256")}},
            trained_together={"cells": others, "members": len(members),
                              "seed_steps_per_second": None if result.steps_per_second is None
                              else result.steps_per_second * len(members)})
        write_json_atomic(cell.outputs.run, run)
        runs.append(run)
    if resume is not None:
        resume.clear()
        log.info("removed resume state %s", resume.path)
    log.info("done: %s steps/s for %d members, diverged_step per member %s", "-" if result.steps_per_second is None
             else f"{result.steps_per_second:.0f}", len(members), result.diverged_step)
    return runs


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
