"""What the Snakemake rules ask of the config, as plain, unit-tested Python.

`Plan(config, project)` reads the dataset registry, expands the experiment grid(s) into cells
(dataset, percent, algorithm, critic normalisation) with their seeds, checks every name and
every typed setting against the code (errors name the config key), and answers the rules: the
params of a job as JSON, the code a job depends on, the files a stage makes, and the shell
prefix that gives every job its environment. `workflow/rules/common.smk` wraps it in one-line
functions; nothing here runs a job.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from seemrl.config import build, check_dataclass_fields, check_fields, critic_spec_schema

RUN = "results/runs/{dataset}/{percent}pct/{algo}/{norm}"
ONLINE_RUN = "results/online/{env}/{variant}"
# Snakemake's `benchmark:` files (wall time, memory, CPU time of each job); `seemrl run-metadata` sums them per rule
BENCHMARKS = "results/benchmarks"
RUN_BENCHMARK = RUN.replace("results/runs", f"{BENCHMARKS}/runs")
ONLINE_BENCHMARK = ONLINE_RUN.replace("results/online", f"{BENCHMARKS}/online")
# package modules every training job runs (besides its algorithm's file and algos/base.py)
TRAINING_CODE = (*(f"training/{m}.py" for m in ("draws", "trainer", "loop", "nets", "evaluation", "antmaze", "resume",
                                                "devices")), "data/preparation.py", "config.py", "train.py")
# the report of every config with offline runs (results/report/); the rest depends on the runs
REPORT_FILES = ("summary.csv", "summary.md", "seeds.csv", "predictions.csv", "predictions.md")
# The theory experiments (seemrl.theory) write these into results/theory/<experiment>/
THEORY_FILES = {
    "toy": ["toy_steps.parquet", "toy_summary.csv", "toy.png", "toy_meta.json"],
    "ntk_map": ["ntk_map_grid.parquet", "ntk_map_summary.csv", "ntk_map.png", "ntk_map_meta.json"],
    "baird": ["baird_trajectory.parquet", "baird_summary.csv", "baird.png", "baird_meta.json"],
    "homogeneity": ["homogeneity_table.csv", "homogeneity_paper_table.csv", "homogeneity.png", "homogeneity_meta.json"],
}


# (state, action) sizes of the MuJoCo locomotion tasks by env id prefix (Gymnasium v5, as D4RL's v2
# datasets); AntMaze's come from its task (the observation layout decides). Known before any data exists.
LOCOMOTION_DIMS = {"Hopper": (11, 3), "Walker2d": (17, 6), "HalfCheetah": (17, 6)}
ANTMAZE_ACT_DIM = 8


def percent_label(p) -> str:
    """10 -> '10', 0.5 -> '0.5': the {percent} wildcard of a subset."""
    return str(int(p)) if float(p).is_integer() else repr(float(p))


def load_registry(path: str | os.PathLike, schema: str | os.PathLike) -> dict:
    """The dataset registry, validated against its schema; errors name the file."""
    from snakemake.utils import validate

    try:
        registry = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"config key registry: cannot read dataset registry {path}: {exc}")
    validate(registry, str(schema))
    return registry


class Plan:
    """The experiment a validated config asks for, checked against the registry and the code."""

    def __init__(self, config: dict, project: str | os.PathLike, registry: dict | None = None):
        self.config, self.project = config, Path(project)
        self.registry = registry if registry is not None else load_registry(
            config["registry"], self.project / "workflow/schemas/datasets.schema.yaml")
        experiment = config["experiment"]
        self.grids = experiment if isinstance(experiment, list) else [experiment]
        self.check_references()
        self.cell_seeds = self._cell_seeds()
        self.check_typed_sections()

    # -------------------------------------------------------------- checks
    def registry_entry(self, name: str) -> dict:
        if name not in self.registry:
            close = difflib.get_close_matches(name, self.registry, n=3)
            raise ValueError(f"unknown dataset {name!r}: not in {self.config['registry']}"
                             f"{f'; did you mean {close}?' if close else ''}")
        return self.registry[name]

    def dataset_dims(self, name: str) -> tuple[int, int] | None:
        """A registry dataset's (state, action) sizes where its environment tells them before the data
        exists (MuJoCo locomotion, AntMaze); None for any other."""
        entry = self.registry_entry(name)
        env = str(entry.get("env_id") or "")
        if env.startswith("AntMaze") or "maze" in entry:
            from seemrl.training.antmaze import antmaze_task

            return antmaze_task(name, entry).obs_dim, ANTMAZE_ACT_DIM
        return next((dims for prefix, dims in LOCOMOTION_DIMS.items() if env.startswith(prefix)), None)

    def registry_entry_json(self, name: str) -> str:
        """A registry entry as the JSON a `dataset_table` job gets (the data carries it onward)."""
        return json.dumps(self.registry_entry(name), sort_keys=True)

    def check_references(self) -> None:
        """Names in `experiment` and the registry must resolve; say which key is wrong."""
        config = self.config
        sections = {"algorithms": config["algorithms"], "critic_norms": config["critic_norms"],
                    "datasets": self.registry}
        for section, defined in sections.items():
            unknown = [n for exp in self.grids for n in exp[section] if n not in defined]
            if unknown:
                where = config["registry"] if section == "datasets" else section
                raise ValueError(f"config key experiment.{section}: unknown name(s) {unknown}; defined in {where}: "
                                 + str(difflib.get_close_matches(unknown[0], defined, n=5) or sorted(defined)[:10]))
        for name in {d for exp in self.grids for d in exp["datasets"]}:
            entry = self.registry[name]
            if entry["source"] == "generate" and entry["recipe"] not in config.get("recipes", {}):
                raise ValueError(f"dataset {name} in {config['registry']}: recipe {entry['recipe']!r} is not a key of "
                                 f"`recipes` in the config (defined: {sorted(config.get('recipes', {}))})")

    def _cell_seeds(self) -> dict[tuple[str, str, str, str], list[int]]:
        """(dataset, percent, algo, norm) -> seeds, over every grid; a cell in two grids must agree."""
        seeds = {}
        for i, exp in enumerate(self.grids):
            for key in ((d, percent_label(p), a, n) for d in exp["datasets"] for p in exp["percents"]
                        for a in exp["algorithms"] for n in exp["critic_norms"]):
                if key in seeds and seeds[key] != exp["seeds"]:
                    raise ValueError(f"config key experiment[{i}]: cell {key} is in two grids with "
                                     f"different seeds ({seeds[key]} and {exp['seeds']})")
                seeds[key] = exp["seeds"]
        return seeds

    def check_typed_sections(self) -> None:
        """Every setting that becomes a dataclass is typed by it (`seemrl.config`): each algorithm
        against its trainer's Config, each critic spec, each recipe, the online settings; then
        each algorithm used by a cell builds its Config with each critic spec it meets, so a bad
        value fails now, naming its key, instead of inside a job."""
        from seemrl.algos import trainer_module
        from seemrl.algos.online_sac import OnlineSACConfig
        from seemrl.generate.recipe import RecipeConfig

        config = self.config
        for name, spec in config["critic_norms"].items():
            check_fields(critic_spec_schema(), spec, f"critic_norms.{name}")
        for name, settings in config["algorithms"].items():
            check_dataclass_fields(trainer_module(settings["trainer"]).Config, self.algorithm_fields(name),
                                   f"algorithms.{name}")
        for name, settings in (config.get("recipes") or {}).items():
            build(RecipeConfig, settings, f"recipes.{name}")
        online = config.get("online") or {}
        check_dataclass_fields(OnlineSACConfig, online.get("settings") or {}, "online.settings")
        for name, variant in (online.get("variants") or {}).items():
            build(OnlineSACConfig, {**(online.get("settings") or {}), **variant}, f"online.variants.{name}")
        self.resolved = {}  # (algo, norm) -> the Config its jobs train with
        for algo, norm in sorted({(c["algo"], c["norm"]) for c in self.cells()}):
            self.resolved[algo, norm] = build(trainer_module(config["algorithms"][algo]["trainer"]).Config,
                                              {**self.algorithm_fields(algo), "critic": config["critic_norms"][norm]},
                                              f"algorithms.{algo} (with critic_norms.{norm})")
        self.check_report()

    # -------------------------------------------------------------- the grid
    def cells(self) -> list[dict[str, str]]:
        """Every (dataset, percent, algo, norm) of the experiment's grid(s), in order; seeds share a job."""
        return [dict(dataset=d, percent=p, algo=a, norm=n) for d, p, a, n in self.cell_seeds]

    def seeds(self, dataset: str, percent: str, algo: str, norm: str) -> str:
        return ",".join(str(s) for s in self.cell_seeds[dataset, percent, algo, norm])

    def train_groups(self) -> dict[str, list[dict[str, str]]]:
        """Cells that train together in one job (a grid's `train_together`: the grid axes whose
        cells share a stack, e.g. [percents]): group name -> its cells (two or more); every other
        cell trains in its own job. Along `algorithms`, cells share a stack where their algorithms
        differ only in their trainer's MEMBER_SETTINGS (a sweep, or e.g. Diffusion-QL's per-maze
        gradient clips). Cells that differ only along a grid's axes share a stack across grids
        too. A cell in two groups is an error naming the grid, and so are datasets of different
        state or action sizes in one group (one stack holds one shape)."""
        from seemrl.algos import trainer_module
        from seemrl.train import TOGETHER_TRAINERS

        axes_of = {"datasets": 0, "percents": 1, "algorithms": 2}
        owner: dict[tuple, tuple] = {}
        groups: dict[tuple, list[tuple]] = {}
        shapes: dict[tuple, tuple[str, tuple[int, int]]] = {}  # a group's first dataset of known sizes
        for i, exp in enumerate(self.grids):
            axes = {axes_of[a] for a in exp.get("train_together") or []}
            if not axes:
                continue
            for a in exp["algorithms"]:
                trainer = self.config["algorithms"][a]["trainer"]
                if trainer not in TOGETHER_TRAINERS:
                    raise ValueError(f"config key experiment[{i}].train_together: algorithm {a} (trainer {trainer}) "
                                     f"cannot train cells together (only {', '.join(TOGETHER_TRAINERS)})")
            for key in ((d, percent_label(p), a, n) for d in exp["datasets"] for p in exp["percents"]
                        for a in exp["algorithms"] for n in exp["critic_norms"]):
                gkey = tuple("all" if j in axes else v for j, v in enumerate(key))
                if 2 in axes:  # along algorithms: the trainer and the settings one stack shares
                    trainer = self.config["algorithms"][key[2]]["trainer"]
                    per_member = trainer_module(trainer).Config.MEMBER_SETTINGS
                    shared = {k: v for k, v in dataclasses.asdict(self.resolved[key[2], key[3]]).items()
                              if k not in per_member}
                    gkey = (*gkey[:2], (trainer, json.dumps(shared, sort_keys=True, default=str)), gkey[3])
                if owner.get(key, gkey) != gkey:
                    raise ValueError(f"config key experiment[{i}].train_together: cell {key} is also in another "
                                     f"group of cells trained together; a cell trains in one job")
                owner[key] = gkey
                dims = self.dataset_dims(key[0]) if 0 in axes else None
                if dims is not None:
                    first, first_dims = shapes.setdefault(gkey, (key[0], dims))
                    if dims != first_dims:
                        raise ValueError(f"config key experiment[{i}].train_together: datasets {first} (state, action "
                                         f"sizes {first_dims}) and {key[0]} ({dims}) cannot train in one stack; "
                                         "group only datasets of one environment's sizes")
                groups.setdefault(gkey, [])
                if key not in groups[gkey]:
                    groups[gkey].append(key)
        named: dict[str, list[tuple]] = {}
        for gkey, keys in groups.items():
            if len(keys) < 2:
                continue
            algos = list(dict.fromkeys(k[2] for k in keys))
            algo = algos[0] if len(algos) == 1 else f"{algos[0]}_and_{len(algos) - 1}_more"
            name = re.sub(r"[^A-Za-z0-9]+", "_", "_".join((gkey[0], f"{gkey[1]}pct", algo, gkey[3])))
            if name in named:
                raise ValueError(f"config key experiment: two groups of cells trained together are both named {name}")
            named[name] = keys
        return {name: [dict(dataset=d, percent=p, algo=a, norm=n) for d, p, a, n in keys]
                for name, keys in named.items()}

    def together_cells_json(self, group: str) -> str:
        """The `--cells` of a group's `seemrl train-together` job (data, seeds, labels, outputs)."""
        cells, members = [], self.train_groups()[group]
        sweep = len({c["algo"] for c in members}) > 1  # then each cell names its own settings
        for c in members:
            run = RUN.format(**c)
            own = {"params": json.loads(self.train_params(c["algo"], c["norm"]))} if sweep else {}
            cells.append({**own, "data": f"resources/datasets/{c['dataset']}/subset-{c['percent']}pct.parquet",
                          "seeds": self.cell_seeds[c["dataset"], c["percent"], c["algo"], c["norm"]],
                          "labels": {"dataset": c["dataset"], "percent": c["percent"], "algo": c["algo"],
                                     "critic_norm": c["norm"]},
                          "checkpoints": f"{run}/checkpoints", "metrics": f"{run}/metrics.parquet",
                          "evaluations": f"{run}/evaluations.parquet", "run": f"{run}/run.json",
                          "progress": f"{run}/progress.json"})
        return json.dumps(cells, sort_keys=True)

    def run_paths(self, name: str) -> list[str]:
        return [f"{RUN}/{name}".format(**c) for c in self.cells()]

    # -------------------------------------------------------------- the report
    def report_spec(self) -> dict:
        """The config's `report` section; an artefact set to null (removed by a merged config) is left out."""
        spec = dict(self.config.get("report") or {})
        for kind in ("tables", "totals"):
            spec[kind] = {k: v for k, v in (spec.get(kind) or {}).items() if v is not None}
        return spec

    def check_report(self) -> None:
        """The report's tables name the paper's tables by key; say which key is wrong."""
        spec = self.report_spec()
        paper = self.paper_results()
        for kind, known in (("tables", paper.get("tables") or {}), ("totals", paper.get("totals") or {})):
            for name, artefact in (spec.get(kind) or {}).items():
                key = artefact.get("paper", name if kind == "tables" else None)
                if key is not None and key not in known:
                    raise ValueError(f"config key report.{kind}.{name}.paper: {key!r} is not in "
                                     f"{spec.get('paper_results')} (has {sorted(known)})")

    def paper_results(self) -> dict:
        path = self.report_spec().get("paper_results")
        if not path:
            return {}
        try:
            return yaml.safe_load(Path(path).read_text()) or {}  # like the registry: from the working directory
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"config key report.paper_results: cannot read {path}: {exc}")

    def evaluated_cells(self) -> list[dict[str, str]]:
        """Cells whose runs evaluate their policies (eval_every > 0): they have scores."""
        return [c for c in self.cells() if self.resolved[c["algo"], c["norm"]].eval_every > 0]

    def _matching(self, selector: dict, cells: list[dict]) -> list[dict]:
        """The cells a report selector picks (`seemrl.report.tables.select`, the rule the report applies)."""
        import pandas as pd

        from seemrl.report.tables import select

        if not cells:
            return []
        frame = pd.DataFrame(cells).rename(columns={"norm": "critic_norm"})
        return [c for c, keep in zip(cells, select(frame, selector)) if keep]

    def report_tables(self) -> list[str]:
        """The paper's tables the config names that at least one evaluated run fills."""
        cells = self.evaluated_cells()
        return [name for name, t in (self.report_spec().get("tables") or {}).items()
                if any(self._matching(sel, cells) for sel in t["columns"].values())]

    def report_totals(self) -> list[str]:
        cells = self.evaluated_cells()
        out = []
        for name, t in (self.report_spec().get("totals") or {}).items():
            base = {k: t[k] for k in ("datasets", "percents", "critic_norms") if k in t}
            lines = t.get("lines") or {"all": {}}
            if any(self._matching({**base, **sel}, cells) for sel in lines.values()):
                out.append(name)
        return out

    def report_artefact(self, kind: str, name: str) -> str:
        """One table's or figure's spec as JSON (its params: editing it reruns that artefact only)."""
        spec = dict(self.report_spec()[kind][name])
        spec.setdefault("paper", name if kind == "tables" else None)
        return json.dumps(spec, sort_keys=True)

    def dataset_sources(self) -> str:
        """Where each dataset of the experiment comes from, in words, for the captions (JSON)."""
        out = {}
        for name in sorted({c["dataset"] for c in self.cells()}):
            e = self.registry_entry(name)
            out[name] = {"d4rl": f"D4RL file ({e.get('env_id', name)})", "minari": f"Minari {e.get('minari_id', name)}",
                         "generate": f"generated here by D4RL's recipe '{e.get('recipe')}' ({e.get('env_id')}, "
                                     f"{e.get('level')})"}.get(e["source"], e["source"])
        return json.dumps(out, sort_keys=True)

    def gamma_varies(self) -> bool:
        return len({cfg.gamma for cfg in self.resolved.values()}) > 1

    def datasets(self, evaluated: bool = False) -> list[str]:
        cells = self.evaluated_cells() if evaluated else self.cells()
        return sorted({c["dataset"] for c in cells})

    def dataset_run_paths(self, dataset: str, name: str) -> list[str]:
        return [f"{RUN}/{name}".format(**c) for c in self.cells() if c["dataset"] == dataset]

    def evaluated_run_paths(self, name: str) -> list[str]:
        return [f"{RUN}/{name}".format(**c) for c in self.evaluated_cells()]

    def report_outputs(self) -> list[str]:
        """Every artefact of the report the config's runs can fill (results/report/)."""
        out = []
        if self.cells():
            out += [f"results/report/{name}" for name in REPORT_FILES]
            out += [f"results/report/seem_q/{d}.png" for d in self.datasets()] + ["results/report/growth.png"]
            if self.gamma_varies():
                out.append("results/report/seem_vs_gamma.png")
        if self.evaluated_cells():
            out.append("results/report/scores.csv")
            out += [f"results/report/curves/{d}.png" for d in self.datasets(evaluated=True)]
            out += [f"results/report/tables/{t}.{ext}" for t in self.report_tables() for ext in ("csv", "md", "tex")]
            out += [f"results/report/totals/{f}{suffix}" for f in self.report_totals()
                    for suffix in (".csv", ".png", ".pdf", "_tasks.png", "_profile.csv", "_profiles.png")]
        if self.claims_wanted():
            out += ["results/report/claims.csv", "results/report/claims.md"]
        return out

    def what_ran(self, cells: list[dict]) -> str:
        """What a set of cells ran, in words (seeds, steps, data), for an artefact's caption."""
        if not cells:
            return "no runs"
        seeds = sorted({len(self.cell_seeds[c["dataset"], c["percent"], c["algo"], c["norm"]]) for c in cells})
        steps = sorted({self.resolved[c["algo"], c["norm"]].steps for c in cells})
        sources = json.loads(self.dataset_sources())
        data = sorted({f"{c['dataset']} ({sources[c['dataset']]})" for c in cells})
        return (f"{len(cells)} runs; {'/'.join(map(str, seeds))} seeds each; "
                f"{'/'.join(f'{s:,}' for s in steps)} gradient steps; data: {'; '.join(data)}")

    def caption(self, kind: str, name: str) -> str:
        """`what_ran` for one artefact: a table or totals figure by name, a dataset's figures."""
        cells = self.evaluated_cells() if kind in ("tables", "totals", "curves") else self.cells()
        if kind == "tables":
            spec = self.report_spec()["tables"][name]
            cells = [c for sel in spec["columns"].values() for c in self._matching(sel, cells)]
        elif kind == "totals":
            spec = self.report_spec()["totals"][name]
            base = {k: spec[k] for k in ("datasets", "percents", "critic_norms") if k in spec}
            lines = (spec.get("lines") or {"all": {}}).values()
            cells = [c for sel in lines for c in self._matching({**base, **sel}, cells)]
        elif kind in ("curves", "seem_q"):
            cells = [c for c in cells if c["dataset"] == name]
        unique = list({tuple(c.values()): c for c in cells}.values())
        return self.what_ran(unique)

    def claims_wanted(self) -> bool:
        online = (self.config.get("online") or {}).get("envs")
        return bool(self.cells() or online or self.config.get("theory"))

    def claims_inputs(self) -> dict[str, list[str]]:
        """What the claims report reads: whatever of the runs, theory and online SAC the config has."""
        theory = self.config.get("theory") or {}
        summaries = {"toy": "toy_summary.csv", "ntk_map": "ntk_map_summary.csv", "baird": "baird_summary.csv",
                     "homogeneity": "homogeneity_table.csv"}
        inputs = {"theory": [f"results/theory/{e}/{summaries[e]}" for e in theory],
                  "online_metrics": self.online_paths("metrics.parquet"), "online_runs": self.online_paths("run.json")}
        if self.cells():
            inputs.update(seeds=["results/report/seeds.csv"], predictions=["results/report/predictions.csv"])
        if self.evaluated_cells():
            inputs["scores"] = ["results/report/scores.csv"]
        if self.report_spec().get("paper_results"):
            inputs["paper"] = [self.report_spec()["paper_results"]]
        return inputs

    # -------------------------------------------------------------- params
    def algorithm_fields(self, algo: str) -> dict[str, Any]:
        return {k: v for k, v in self.config["algorithms"][algo].items() if k != "trainer"}

    def train_params(self, algo: str, norm: str) -> str:
        """Algorithm and critic-normalisation settings of one cell, as one JSON string."""
        return json.dumps({**self.algorithm_fields(algo), "critic": self.config["critic_norms"][norm]}, sort_keys=True)

    def recipe_json(self, recipe: str, training_only: bool = False) -> str:
        """A recipe's settings as JSON; the training step sees only what changes its outputs, so
        that e.g. a new dataset size re-collects data without retraining SAC."""
        from seemrl.generate.recipe import RecipeConfig

        settings = self.config["recipes"][recipe]
        if training_only:
            settings = {k: v for k, v in settings.items() if k in RecipeConfig.TRAINING_FIELDS}
        return json.dumps(settings, sort_keys=True)

    def raw_dataset_input(self, dataset: str) -> str:
        """What `dataset_table` converts, by the dataset's source."""
        entry = self.registry_entry(dataset)
        if entry["source"] == "d4rl":
            return f"resources/d4rl/{dataset}.hdf5"
        if entry["source"] == "minari":
            return f"resources/minari-fetched/{dataset}.json"
        return f"resources/generated/{entry['recipe']}/{entry['env_id']}/{entry['level']}.json"

    # -------------------------------------------------------------- online SAC and theory
    def online_params(self, variant: str) -> str:
        """The shared online settings with one variant's overrides, as one JSON string."""
        online = self.config["online"]
        return json.dumps({**(online.get("settings") or {}), **online["variants"][variant]}, sort_keys=True)

    def online_paths(self, name: str) -> list[str]:
        online = self.config.get("online") or {}
        return [f"{ONLINE_RUN}/{name}".format(env=e, variant=v) for e in online.get("envs", [])
                for v in online.get("variants", {})]

    def online_outputs(self) -> list[str]:
        return ["results/report/online_sac.png"] if (self.config.get("online") or {}).get("envs") else []

    def theory_flags(self, experiment: str) -> str:
        """An experiment's settings as command-line flags (so that changing one reruns the job)."""
        flags = []
        for key, value in sorted((self.config.get("theory") or {}).get(experiment, {}).items()):
            name = key.replace("_", "-")
            if isinstance(value, bool):
                flags.append(f"--{name}" if value else f"--no-{name}")
            elif isinstance(value, list):
                flags.append(f"--{name} {' '.join(str(v) for v in value)}")
            elif value is not None:
                flags.append(f"--{name} {value}")
        return " ".join(flags)

    def theory_outputs(self) -> list[str]:
        return [f"results/theory/{e}/{f}" for e in (self.config.get("theory") or {}) for f in THEORY_FILES[e]]

    # -------------------------------------------------------------- code and environment
    def code(self, *modules: str) -> list[str]:
        """Package modules a rule's output depends on, as inputs: Snakemake tracks a rule's shell
        text and params but not the Python it calls, so editing one of these reruns the rule (and
        what depends on it) and nothing else. Relative to the working directory, so that a
        project moved elsewhere (results included) is up to date where it lands. The CLI plumbing
        (seemrl/cli.py) is deliberately left out."""
        return [os.path.relpath(self.project / "src" / "seemrl" / m) for m in modules]

    def train_code(self, algo: str) -> list[str]:
        """The training stage plus the algorithm's own file and its base."""
        trainer = self.config["algorithms"][algo]["trainer"]
        return self.code(*TRAINING_CODE, f"algos/{trainer}.py", "algos/base.py")

    def job_shell_prefix(self, python_dir: str | None) -> str:
        """What every job's shell runs first. Where and how a job runs (device, GPU slots, the GPU
        lease directory, tracking, caches, the interpreter: `python_dir`, None under conda)
        reaches it here, through the environment, never through params or inputs: changing any
        of it changes no result and reruns nothing. Braces doubled: Snakemake formats the prefix."""
        res, tracking = self.config["resources"], self.config.get("tracking") or {}
        lines = ["set -euo pipefail"]
        if python_dir is not None:  # the interpreter running Snakemake (a venv's); a conda job uses its env's own
            lines.append(f'export PATH={shlex.quote(python_dir)}:"$PATH"')
        lines.append(f"export PYTHONPATH={shlex.quote(str(self.project / 'src'))}${{PYTHONPATH:+:$PYTHONPATH}}")
        # caches and datasets inside the project (never $HOME), unless the user's environment says otherwise
        for name, path in (("MINARI_DATASETS_PATH", "resources/minari"), ("MPLCONFIGDIR", ".cache/matplotlib"),
                           ("XDG_CACHE_HOME", ".cache")):
            lines.append(f'export {name}="${{{name}:-{Path(path).resolve()}}}"')
        exports = {"SEEMRL_DEVICE": res.get("device", "auto"), "SEEMRL_GPU_SLOTS": res.get("gpu_slots", 1),
                   "SEEMRL_EVAL_OVERLAP": int(res.get("eval_overlap", True)),
                   "SEEMRL_TRACKING": json.dumps(tracking, sort_keys=True)}
        if res.get("lease_dir"):
            exports["SEEMRL_LEASE_DIR"] = res["lease_dir"]
        lines += [f"export {name}={shlex.quote(str(value))}" for name, value in exports.items()]
        return ("; ".join(lines) + "; ").replace("{", "{{").replace("}", "}}")
