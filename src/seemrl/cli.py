"""Command line entry points, one per pipeline step; the Snakemake rules call these.

Each command reads its inputs, calls the library, and writes its outputs atomically, so a killed
job never leaves a file that looks finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from seemrl.training.devices import resolve_device

log = logging.getLogger("seemrl")


_LEASES = []  # device leases live as long as the process (the kernel frees them on exit)


def _job_device(a: argparse.Namespace) -> tuple[str, dict]:
    """The job's torch device, with a GPU of its own when it runs on CUDA (`seemrl.training.gpu_lease`),
    and what run.json records about it. Called before a command touches anything, so a job sent
    to a device this machine lacks fails without harm (its resume state is left as it was)."""
    import socket

    from seemrl.training.gpu_lease import lease_device

    try:
        device = resolve_device(a.device)
    except ValueError as exc:
        raise SystemExit(f"{exc} (host {socket.gethostname()}; the workflow's resources.device, "
                         f"exported to jobs as $SEEMRL_DEVICE)")
    lease = lease_device(device, a.lease_dir, a.gpu_slots, log=log.info)
    _LEASES.append(lease)
    if lease.device.startswith("cuda"):
        import torch

        torch.cuda.set_device(lease.device)  # kernels, graphs and allocations default to it
        return lease.device, {**lease.record(), "name": torch.cuda.get_device_name(lease.device)}
    return lease.device, lease.record()


def _run_settings(a: argparse.Namespace, config_cls, what: str):
    """A training command's parameters (JSON), its config, seeds and leased device."""
    from seemrl.config import build

    try:
        params = json.loads(a.params)
        cfg = build(config_cls, params, "params")
    except ValueError as exc:  # bad JSON, a field's type or value, an unknown field: named
        raise SystemExit(f"bad {what} training parameters {a.params!r}: {exc}")
    seeds = [int(s) for s in a.seeds.split(",")]
    return (params, cfg, seeds, *_job_device(a))


# torch computes on one CPU thread in every job: on the CPU, the number of threads changes how float
# sums are split (and so their rounding), and a job's numbers must not depend on the cores it got
COMPUTE_THREADS = 1


def _setup(compute: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if compute:
        import torch

        torch.set_num_threads(COMPUTE_THREADS)


# ------------------------------------------------------------------ data
def cmd_fetch_d4rl(a: argparse.Namespace) -> None:
    from seemrl.data import d4rl
    from seemrl.data.lockfile import verified_download

    _setup()
    url = f"{d4rl.base_url(a.base_url)}/{d4rl.file_key(a.name)}"
    verified_download(d4rl.file_key(a.name), url, Path(a.out), Path(a.lock), log=log.info)


def cmd_fetch_minari(a: argparse.Namespace) -> None:
    from seemrl.data.minari_source import fetch_minari
    from seemrl.io import sha256_file, write_json_atomic

    _setup()
    path = fetch_minari(a.minari_id, a.minari_root, remote=a.remote)
    files = sorted((path / "data").glob("*"))
    write_json_atomic(a.marker, {"minari_id": a.minari_id, "minari_root": str(Path(a.minari_root)),
                                 "files": {f.name: sha256_file(f) for f in files if f.is_file()}})


def cmd_recipe_train(a: argparse.Namespace) -> None:
    from seemrl.generate.recipe import recipe_train_main

    _setup(compute=True)
    device, _ = _job_device(a)

    def monitor(cfg):
        from seemrl.train import monitor

        return monitor(a.progress, [cfg.train_seed], cfg.sac_steps, "recipe_train", _labels(a),
                       {"env_id": a.env_id, **cfg.to_dict()})

    recipe_train_main(a.env_id, a.out, a.recipe, device=device, resume_dir=a.resume_dir,
                      resume_every_s=a.resume_every_s, monitor_factory=monitor, eval_workers=a.eval_workers)


def cmd_recipe_dataset(a: argparse.Namespace) -> None:
    from seemrl.generate.recipe import recipe_dataset_main
    from seemrl.io import write_json_atomic

    _setup(compute=True)
    dataset_id = recipe_dataset_main(a.level, a.env_id, a.training, a.recipe, a.minari_root)
    write_json_atomic(a.marker, {"minari_id": dataset_id, "minari_root": a.minari_root,
                                 "level": a.level, "env_id": a.env_id})


def cmd_table(a: argparse.Namespace) -> None:
    """Any source's raw dataset -> the Parquet transition table and its card."""
    from seemrl.data.d4rl import read_d4rl_hdf5
    from seemrl.data.minari_source import minari_to_transitions
    from seemrl.data.transitions import dataset_card, write_transitions
    from seemrl.io import sha256_file, write_json_atomic

    _setup()
    entry = json.loads(a.entry)
    if entry["source"] == "d4rl":
        t = read_d4rl_hdf5(a.raw, a.dataset, entry["env_id"])
        t.meta["d4rl_file_sha256"] = sha256_file(a.raw)
    else:  # minari and generate both leave a marker naming a Minari dataset
        marker = json.loads(Path(a.raw).read_text())
        t = minari_to_transitions(marker["minari_id"], marker["minari_root"])
    if t.meta.get("ref_max_score") is None and "ref_max_score" in entry:
        t.meta.update(ref_min_score=entry["ref_min_score"], ref_max_score=entry["ref_max_score"],
                      ref_source=f"registry ({entry['source']})")
    # the entry travels with the data: evaluation (e.g. AntMaze's maze, goal noise, episode cap)
    # follows the registry the workflow was run with, not the package's copy
    t.meta.update(registry_name=a.dataset, eval_env_id=entry["env_id"], registry_entry=entry)
    write_transitions(a.out, t)
    card = dataset_card(t, a.out)
    write_json_atomic(a.card, card)
    log.info("wrote %s: %s", a.out, json.dumps(card))


def cmd_subset(a: argparse.Namespace) -> None:
    from seemrl.data.subsets import make_subset

    _setup()
    make_subset(a.src, a.out, percent=a.percent, seed=a.seed, min_transitions=a.min_transitions)


# ------------------------------------------------------------------ training
def _labels(a: argparse.Namespace) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in a.label)


def _outputs(a: argparse.Namespace):
    from seemrl.train import Outputs

    return Outputs(checkpoints=a.checkpoints, metrics=a.metrics, run=a.run, evaluations=a.evaluations,
                   episodes=getattr(a, "episodes", None), resume_dir=a.resume_dir, progress=a.progress)


def cmd_train(a: argparse.Namespace) -> None:
    from seemrl.algos import trainer_module
    from seemrl.train import train_offline

    _setup(compute=True)
    params, cfg, seeds, device, device_info = _run_settings(a, trainer_module(a.trainer).Config, a.trainer)
    train_offline(a.trainer, cfg, params, seeds, a.data, _outputs(a), device=device, device_info=device_info,
                  labels=_labels(a), eval_workers=a.threads, eval_overlap=a.eval_overlap)


def cmd_train_together(a: argparse.Namespace) -> None:
    from seemrl.algos import trainer_module
    from seemrl.train import Cell, check_together_trainer, train_offline_together

    _setup(compute=True)
    check_together_trainer(a.trainer)
    a.seeds = "0"  # each cell names its own
    params, cfg, _, device, device_info = _run_settings(a, trainer_module(a.trainer).Config, a.trainer)
    try:
        specs = json.loads(a.cells)
        if not isinstance(specs, list):
            raise ValueError("not a JSON list")
        cells = [Cell.from_json(spec) for spec in specs]
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"bad --cells {a.cells[:200]!r}: {exc}")
    train_offline_together(a.trainer, cfg, params, cells, device=device, device_info=device_info,
                           resume_dir=a.resume_dir, eval_workers=a.threads, eval_overlap=a.eval_overlap)


def cmd_train_online(a: argparse.Namespace) -> None:
    from seemrl.algos.online_sac import OnlineSACConfig
    from seemrl.train import train_online

    _setup(compute=True)
    params, cfg, seeds, device, device_info = _run_settings(a, OnlineSACConfig, "online SAC")
    train_online(cfg, params, seeds, a.env_id, _outputs(a), device=device, device_info=device_info, labels=_labels(a))


def cmd_report_online(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report.plots.online import plot_online

    _setup()
    plot_online(pd.concat(_labelled_frames(a.metrics, a.runs), ignore_index=True), a.out)


# ------------------------------------------------------------------ analysis and report
def cmd_seem(a: argparse.Namespace) -> None:
    from seemrl.analysis.seem import analyse_run, divergence_verdict, training_rewards
    from seemrl.data.transitions import read_transitions
    from seemrl.io import atomic_path

    _setup(compute=True)
    t = read_transitions(a.data)
    arrays = {"obs": t.obs, "action": t.action, "next_obs": t.next_obs,
              "reward": training_rewards(t, a.checkpoints), "terminal": t.terminal}
    df = analyse_run(a.checkpoints, arrays, n_samples=a.samples, sample_seed=a.sample_seed,
                     device=_job_device(a)[0], replace=not a.without_replacement, solver=a.solver)
    with atomic_path(a.out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("verdict per seed:\n%s", divergence_verdict(df).to_string())


def _labelled_frames(paths: list[str], run_paths: list[str]):
    """Each run's Parquet table (SEEM, metrics) with the cell labels of its run.json added."""
    import pandas as pd

    if len(paths) != len(run_paths):
        raise SystemExit("report: the tables and --runs must list the same runs in the same order")
    return [pd.read_parquet(path).assign(**json.loads(Path(run_path).read_text())["labels"])
            for path, run_path in zip(paths, run_paths)]


def cmd_report_tables(a: argparse.Namespace) -> None:
    from seemrl.report import tables

    _setup()
    import pandas as pd

    frames = _labelled_frames(a.seem, a.runs)
    runs = [json.loads(Path(p).read_text()) for p in a.runs]
    scores = pd.DataFrame([row for run in runs for row in tables.evaluation_rows(run["labels"], run.get("evaluation"))])
    per_seed = tables.sort_cells(tables.seed_table(frames, scores=scores))
    summary = tables.summary_table(frames, scores=scores)
    tables.write_table_csv(per_seed, a.seeds)
    tables.write_table_csv(summary, a.summary)
    tables.write_table_markdown(tables.merge_mean_std(summary), a.markdown)  # "mean ± std" per quantity
    log.info("summary:\n%s", summary.to_string())


def cmd_report_scores(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.io import atomic_path
    from seemrl.report import tables

    _setup()
    rows, frames = [], []
    for eval_path, run_path in zip(a.evaluations, a.runs, strict=True):
        run, evaluations = json.loads(Path(run_path).read_text()), pd.read_parquet(eval_path)
        rows += tables.score_rows(evaluations, run)
        frames.append(evaluations.assign(**{k: run["labels"][k] for k in tables.CELL_COLUMNS}))
    tables.write_table_csv(tables.scores_table(rows), a.scores)
    with atomic_path(a.all_evaluations) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)


def _read_yaml(path):
    import yaml

    return yaml.safe_load(Path(path).read_text()) if path else {}


def cmd_paper_table(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.io import write_text_atomic
    from seemrl.report import tables

    _setup()
    spec, paper = json.loads(a.spec), _read_yaml(a.paper)
    key = spec.get("paper") or a.name
    if key not in (paper.get("tables") or {}):
        raise SystemExit(f"paper-table: {key!r} is not a table of {a.paper}")
    known = paper["tables"][key]
    table = tables.paper_table(pd.read_csv(a.scores), a.name, spec, known)
    display = tables.paper_table_display(table)
    caption = tables.paper_table_caption(table, known.get("title", a.name), known.get("where", ""),
                                         json.loads(a.sources))
    tables.write_table_csv(table, a.csv)
    write_text_atomic(a.markdown, f"## {known.get('title', a.name)}\n\n{caption}\n\n{tables.to_markdown(display)}\n")
    tables.write_latex(display, a.latex, caption)
    log.info("%s:\n%s", a.name, display.to_string())


def cmd_report_totals(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report import tables

    _setup()
    spec, paper = json.loads(a.spec), _read_yaml(a.paper)
    points = ((paper.get("totals") or {}).get(spec.get("paper")) or {}).get("points", []) if spec.get("paper") else []
    scores = pd.read_csv(a.scores)
    totals = tables.totals_table(scores, spec, points)
    tables.write_table_csv(totals, a.out)
    tables.write_table_csv(tables.performance_profile(scores, spec), a.profile)
    log.info("totals:\n%s", totals.to_string())


def cmd_plot_totals(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report.plots.totals import plot_profiles, plot_task_totals, plot_totals

    _setup()
    totals = pd.read_csv(a.totals)
    plot_totals(totals, a.out, title=Path(a.totals).stem)
    plot_task_totals(totals, a.tasks)
    plot_profiles(totals, pd.read_csv(a.profile), a.profiles)


def cmd_plot_curves(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report.plots.curves import plot_curves

    _setup()
    evaluations = pd.read_parquet(a.evaluations)
    plot_curves(evaluations[evaluations["dataset"] == a.dataset], a.out, seeds=a.seeds, title=a.dataset)


def cmd_plot_seem_q(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report.plots.seem_q import plot_seem_and_q

    _setup()
    plot_seem_and_q(pd.concat(_labelled_frames(a.seem, a.runs), ignore_index=True), a.out)


def cmd_plot_growth(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.report.plots.growth import plot_growth

    _setup()
    plot_growth(pd.concat(_labelled_frames(a.metrics, a.runs), ignore_index=True), pd.read_csv(a.predictions), a.out)


def cmd_plot_seem_gamma(a: argparse.Namespace) -> None:
    from seemrl.report.plots.seem_q import plot_seem_vs_gamma, seem_vs_gamma_frame

    _setup()  # run.json holds the resolved config: every run names its gamma
    gammas = [json.loads(Path(path).read_text())["config"]["gamma"] for path in a.runs]
    plot_seem_vs_gamma(seem_vs_gamma_frame(_labelled_frames(a.seem, a.runs), gammas), a.out)


def cmd_report_claims(a: argparse.Namespace) -> None:
    import pandas as pd

    from seemrl.io import write_text_atomic
    from seemrl.report import claims, tables

    _setup()
    read = lambda paths: pd.read_csv(paths[0]) if paths else None
    ev = claims.Evidence(scores=read(a.scores), seeds=read(a.seeds), predictions=read(a.predictions),
                         paper=_read_yaml(a.paper[0] if a.paper else None), spec=json.loads(a.spec),
                         theory={Path(p).name: pd.read_csv(p) for p in a.theory or ()},
                         online=pd.concat(_labelled_frames(a.online_metrics, a.online_runs), ignore_index=True)
                         if a.online_metrics else None,
                         online_variants=json.loads(a.online_variants))
    table = claims.claims_table(ev)
    tables.write_table_csv(table, a.csv)
    write_text_atomic(a.markdown, claims.claims_markdown(table, claims.scale_note(ev)))
    log.info("claims:\n%s", table[["claim", "verdict"]].to_string())


def cmd_predictions(a: argparse.Namespace) -> None:
    from seemrl.analysis.predictions import (
        load_run,
        predictions_table,
        summary_markdown,
    )
    from seemrl.io import write_text_atomic
    from seemrl.report.tables import write_table_csv

    _setup()
    table = predictions_table([load_run(d) for d in a.runs])
    write_table_csv(table, a.csv)
    write_text_atomic(a.markdown, summary_markdown(table))
    log.info("predictions for %d seeds of %d runs written to %s", len(table), len(a.runs), a.csv)


def cmd_run_metadata(a: argparse.Namespace) -> None:
    from seemrl.report.run_metadata import write_run_metadata

    _setup()
    if a.print_environment:
        from seemrl.report.run_metadata import environment

        print(json.dumps(environment(), sort_keys=True))
        return
    if not (a.commit and a.run_command and a.config and a.json and a.markdown):
        raise SystemExit("run-metadata needs --commit, --run-command, --config, --json and --markdown")
    env = None
    if a.environment:
        try:
            env = json.loads(Path(a.environment).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--environment {a.environment}: {exc}")
    try:
        meta = write_run_metadata(a.benchmarks, a.json, a.markdown, commit=a.commit, command=a.run_command,
                                  config=a.config, wall_seconds=a.wall_seconds, jobs_csv=a.jobs_csv, env=env)
    except ValueError as exc:  # a bad benchmark file (named) or a bad --environment
        raise SystemExit(f"run-metadata: {exc}" + (f" (--environment {a.environment})" if env is not None else ""))
    log.info("metadata of %d jobs (%d rules) written to %s", meta["jobs"], len(meta["rules"]), a.json)


def cmd_status(a: argparse.Namespace) -> None:
    from seemrl.status import main as status

    status(a.root, all_jobs=a.all, watch=a.watch)


# ------------------------------------------------------------------ parser
def _device_args(sp: argparse.ArgumentParser) -> None:
    """Where a job runs: the workflow exports these to its jobs' environment (never as rule
    parameters), so changing them changes no result and reruns nothing."""
    import os

    from seemrl.training.gpu_lease import DEFAULT_LOCK_DIR

    sp.add_argument("--device", default=os.environ.get("SEEMRL_DEVICE") or "auto",
                    help="auto | cpu | cuda | cuda:N; default $SEEMRL_DEVICE or auto")
    sp.add_argument("--gpu-slots", type=int, default=int(os.environ.get("SEEMRL_GPU_SLOTS") or 1),
                    help="jobs that may share one GPU (small networks); default $SEEMRL_GPU_SLOTS or 1")
    sp.add_argument("--lease-dir", default=os.environ.get("SEEMRL_LEASE_DIR") or DEFAULT_LOCK_DIR,
                    help="lock files of the GPU leases, shared by every job of the host, whichever "
                         f"checkout it comes from (default $SEEMRL_LEASE_DIR or {DEFAULT_LOCK_DIR})")


def _eval_overlap_arg(sp: argparse.ArgumentParser) -> None:
    """How an offline training job evaluates (the workflow's resources.eval_overlap, through the
    environment like the device): it changes no result and reruns nothing."""
    import os

    sp.add_argument("--eval-overlap", type=int, choices=(0, 1), default=int(os.environ.get("SEEMRL_EVAL_OVERLAP") or 1),
                    help="1: play policy evaluations in a background thread while training goes on (the same "
                    "evaluations); default $SEEMRL_EVAL_OVERLAP or 1")


def _progress_args(sp: argparse.ArgumentParser, label: bool = True) -> None:
    """A training job's progress file (`seemrl status` reads it) and the labels that name it."""
    sp.add_argument("--progress", help="progress file (JSON), rewritten while the job runs; read by `seemrl status`")
    if label:
        sp.add_argument("--label", action="append", default=[], help="key=value naming the job")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seemrl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("fetch-d4rl", cmd_fetch_d4rl, "download an original D4RL HDF5 file, verified by the lock")
    sp.add_argument("--name", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--lock", required=True)
    sp.add_argument("--base-url")

    sp = add("fetch-minari", cmd_fetch_minari, "a Minari dataset: pre-seeded store or hub download")
    sp.add_argument("--minari-id", required=True)
    sp.add_argument("--minari-root", required=True)
    sp.add_argument("--remote")
    sp.add_argument("--marker", required=True)

    sp = add("recipe-train", cmd_recipe_train, "D4RL's recipe, step 1: online SAC with snapshots")
    sp.add_argument("--env-id", required=True)
    sp.add_argument("--recipe", required=True, help="JSON of RecipeConfig fields")
    sp.add_argument("--out", required=True)
    sp.add_argument("--resume-dir", help="where the SAC state is kept between attempts; not an output: "
                    "continued if it matches this recipe, deleted when the recipe completes")
    sp.add_argument("--resume-every-s", type=float, default=600.0,
                    help="seconds between saves of the SAC state (at snapshot steps)")
    sp.add_argument("--eval-workers", type=int, default=1,
                    help="CPU processes evaluating the snapshots after training (the numbers do not depend on it)")
    _device_args(sp)
    _progress_args(sp)

    sp = add("recipe-dataset", cmd_recipe_dataset, "D4RL's recipe, step 2: one level's Minari dataset")
    sp.add_argument("--level", required=True)
    sp.add_argument("--env-id", required=True)
    sp.add_argument("--training", required=True)
    sp.add_argument("--recipe", required=True)
    sp.add_argument("--minari-root", required=True)
    sp.add_argument("--marker", required=True)

    sp = add("table", cmd_table, "a dataset of any source -> Parquet transition table + card")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--entry", required=True, help="the registry entry as JSON")
    sp.add_argument("--raw", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--card", required=True)

    sp = add("subset", cmd_subset, "write a seeded X%% transition subset")
    sp.add_argument("--src", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--percent", type=float, required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--min-transitions", type=int, default=2560)

    sp = add("train", cmd_train, "train all seeds of one cell offline")
    sp.add_argument("--data", required=True)
    sp.add_argument("--trainer", default="td3", help="algorithm module (seemrl.algos.TRAINERS)")
    sp.add_argument("--params", required=True, help="JSON of the algorithm's Config fields")
    sp.add_argument("--seeds", required=True, help="comma-separated seeds")
    sp.add_argument("--label", action="append", default=[], help="key=value stored in run.json")
    sp.add_argument("--threads", type=int, default=1, help="worker processes of the AntMaze evaluation; torch "
                    "computes on one thread whatever this says, so results never depend on it")
    sp.add_argument("--checkpoints", required=True)
    sp.add_argument("--metrics", required=True)
    sp.add_argument("--run", required=True)
    sp.add_argument("--evaluations", help="Parquet of policy evaluations (empty when eval_every is 0)")
    _device_args(sp)
    _eval_overlap_arg(sp)
    _progress_args(sp, label=False)
    sp.add_argument("--resume-dir", help="where resumable state is kept between attempts; not an output: "
                    "continued if it matches this run, deleted when the run completes")

    sp = add("train-together", cmd_train_together, "train several cells of one algorithm config in one stack, "
             "each with the outputs it would have alone")
    sp.add_argument("--trainer", default="td3", help="algorithm module: td3, iql, cql or diffql")
    sp.add_argument("--params", required=True, help="JSON of the algorithm's Config fields (shared by the cells)")
    sp.add_argument("--cells", required=True, help="JSON list of cells: {data, seeds, labels, checkpoints, metrics, "
                    "evaluations, run, progress}")
    sp.add_argument("--threads", type=int, default=1, help="as for train")
    _device_args(sp)
    _eval_overlap_arg(sp)
    sp.add_argument("--resume-dir", help="as for train, for the whole stack")

    sp = add("train-online", cmd_train_online, "online SAC, all seeds in one process (paper Fig. 11)")
    sp.add_argument("--env-id", required=True)
    sp.add_argument("--params", required=True, help="JSON of OnlineSACConfig fields")
    sp.add_argument("--seeds", required=True, help="comma-separated seeds")
    sp.add_argument("--label", action="append", default=[], help="key=value stored in run.json")
    sp.add_argument("--resume-dir")
    for out in ("checkpoints", "metrics", "evaluations", "episodes", "run"):
        sp.add_argument(f"--{out}", required=True)
    _device_args(sp)
    _progress_args(sp, label=False)

    sp = add("report-online", cmd_report_online, "figure of online SAC runs (Q and return over steps)")
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--runs", nargs="+", required=True)
    sp.add_argument("--out", required=True)

    sp = add("seem", cmd_seem, "SEEM and companions over a run's checkpoints")
    sp.add_argument("--checkpoints", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--samples", type=int, required=True)
    sp.add_argument("--sample-seed", type=int, default=0)
    sp.add_argument("--without-replacement", action="store_true",
                    help="draw the SEEM batch without replacement (default: with, as the authors)")
    sp.add_argument("--solver", choices=("krylov", "full"), default="krylov",
                    help="the rightmost eigenvalue alone (Krylov-Schur; default) or all of them, as the authors")
    sp.add_argument("--out", required=True)
    _device_args(sp)

    sp = add("predictions", cmd_predictions, "the paper's predictions checked against what the runs did")
    sp.add_argument("--runs", nargs="+", required=True, help="run directories (seem.parquet, metrics, run.json)")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--markdown", required=True)

    sp = add("status", cmd_status, "the training jobs of a running workflow: steps/s, ETA, latest Q and score")
    sp.add_argument("--root", default=".", help="the project (its results/ holds the progress files)")
    sp.add_argument("--all", action="store_true", help="finished jobs too")
    sp.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="refresh every SECONDS")

    sp = add("report-tables", cmd_report_tables, "SEEM summary per cell and per seed from SEEM outputs")
    sp.add_argument("--seem", nargs="+", required=True)
    sp.add_argument("--runs", nargs="+", required=True)
    for flag in ("--summary", "--markdown", "--seeds"):
        sp.add_argument(flag, required=True)
    sp = add("report-scores", cmd_report_scores, "per-seed scores and all evaluations of the evaluated runs")
    sp.add_argument("--evaluations", nargs="+", required=True)
    sp.add_argument("--runs", nargs="+", required=True)
    sp.add_argument("--scores", required=True)
    sp.add_argument("--all-evaluations", required=True)
    sp = add("paper-table", cmd_paper_table, "one of the paper's tables from the runs, its numbers beside ours")
    for flag in ("--name", "--spec", "--sources", "--scores", "--paper", "--csv", "--markdown", "--latex"):
        sp.add_argument(flag, required=True)
    sp = add("report-totals", cmd_report_totals, "totals of the score over datasets per line, critic option, X%")
    for flag in ("--spec", "--scores", "--out"):
        sp.add_argument(flag, required=True)
    sp.add_argument("--profile", required=True, help="performance profiles (CSV)")
    sp.add_argument("--paper", help="the paper's numbers (YAML)")
    sp = add("plot-totals", cmd_plot_totals, "figure of the totals against X% (Fig. 8/9, 12)")
    sp.add_argument("--totals", required=True)
    sp.add_argument("--out", nargs="+", required=True, help="one file per format (.png, .pdf)")
    sp.add_argument("--tasks", required=True, help="per-task panels")
    sp.add_argument("--profile", required=True, help="the performance profiles (CSV of report-totals)")
    sp.add_argument("--profiles", required=True, help="their figure, with the IQM over all runs")
    sp = add("plot-curves", cmd_plot_curves, "learning curves of one dataset")
    for flag in ("--evaluations", "--dataset", "--out"):
        sp.add_argument(flag, required=True)
    sp.add_argument("--seeds", action="store_true", help="each seed as a thin line too")
    for name, fn, what in (("plot-seem-q", cmd_plot_seem_q, "SEEM and Q over training (Fig. 1, 4, 6)"),
                           ("plot-seem-gamma", cmd_plot_seem_gamma, "SEEM against gamma (Fig. 3 left)")):
        sp = add(name, fn, what)
        sp.add_argument("--seem", nargs="+", required=True)
        sp.add_argument("--runs", nargs="+", required=True)
        sp.add_argument("--out", required=True)
    sp = add("plot-growth", cmd_plot_growth, "growth of Q and the parameter norm after divergence (Fig. 4)")
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--runs", nargs="+", required=True)
    for flag in ("--predictions", "--out"):
        sp.add_argument(flag, required=True)
    sp = add("run-metadata", cmd_run_metadata, "commit, GPU, versions and wall time per rule of a workflow run")
    sp.add_argument("--benchmarks", default="results/benchmarks", help="the rules' Snakemake benchmark files")
    for flag, what in (("--commit", "the commit that ran"), ("--run-command", "the command that ran"),
                       ("--config", "its config file(s)"), ("--json", "output"), ("--markdown", "output")):
        sp.add_argument(flag, help=what + " (required unless --print-environment)")
    sp.add_argument("--wall-seconds", type=float, help="the whole run's wall time")
    sp.add_argument("--jobs-csv", help="every job's row (CSV)")
    sp.add_argument("--print-environment", action="store_true",
                    help="only print this host's environment (JSON), to record it on the run host")
    sp.add_argument("--environment", help="the run host's environment (a --print-environment JSON), when the "
                    "metadata is written on another host (default: this host's)")
    sp = add("report-claims", cmd_report_claims, "the paper's claims against the runs (CSV and Markdown)")
    for flag in ("--scores", "--seeds", "--predictions", "--paper", "--theory", "--online-metrics", "--online-runs"):
        sp.add_argument(flag, nargs="+", default=[])
    sp.add_argument("--spec", default="{}", help="the config's report section (JSON)")
    sp.add_argument("--online-variants", default="{}", help="the config's online variants (JSON)")
    sp.add_argument("--csv", required=True)
    sp.add_argument("--markdown", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
