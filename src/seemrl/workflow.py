"""What the Snakemake rules ask of the config, as plain, unit-tested Python.

`Plan(config, project)` reads the dataset registry, expands the experiment grid(s) into cells
(dataset, percent, algorithm, critic normalisation) with their seeds, checks every name and
every typed setting against the code (errors name the config key), and answers the rules: the
params of a job as JSON, the code a job depends on, the files a stage makes, and the shell
prefix that gives every job its environment. `workflow/rules/common.smk` wraps it in one-line
functions; nothing here runs a job.
"""
from __future__ import annotations

import difflib
import json
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from seemrl.config import build, check_dataclass_fields, check_fields, critic_spec_schema

RUN = "results/runs/{dataset}/{percent}pct/{algo}/{norm}"
ONLINE_RUN = "results/online/{env}/{variant}"
# package modules every training job runs (besides its algorithm's file and algos/base.py)
TRAINING_CODE = (*(f"training/{m}.py" for m in ("draws", "trainer", "loop", "nets", "evaluation", "antmaze", "resume",
                                                "devices")), "data/preparation.py", "config.py", "train.py")
REPORT_FILES = ("summary.csv", "summary.md", "seeds.csv", "seem_q.png", "seem_vs_gamma.png", "predictions.csv",
                "predictions.md")
# The theory experiments (seemrl.theory) write these into results/theory/<experiment>/
THEORY_FILES = {
    "toy": ["toy_steps.parquet", "toy_summary.csv", "toy.png", "toy_meta.json"],
    "ntk_map": ["ntk_map_grid.parquet", "ntk_map_summary.csv", "ntk_map.png", "ntk_map_meta.json"],
    "baird": ["baird_trajectory.parquet", "baird_summary.csv", "baird.png", "baird_meta.json"],
    "homogeneity": ["homogeneity_table.csv", "homogeneity_paper_table.csv", "homogeneity.png", "homogeneity_meta.json"],
}


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
        for algo, norm in sorted({(c["algo"], c["norm"]) for c in self.cells()}):
            build(trainer_module(config["algorithms"][algo]["trainer"]).Config,
                  {**self.algorithm_fields(algo), "critic": config["critic_norms"][norm]},
                  f"algorithms.{algo} (with critic_norms.{norm})")

    # -------------------------------------------------------------- the grid
    def cells(self) -> list[dict[str, str]]:
        """Every (dataset, percent, algo, norm) of the experiment's grid(s), in order; seeds share a job."""
        return [dict(dataset=d, percent=p, algo=a, norm=n) for d, p, a, n in self.cell_seeds]

    def seeds(self, dataset: str, percent: str, algo: str, norm: str) -> str:
        return ",".join(str(s) for s in self.cell_seeds[dataset, percent, algo, norm])

    def run_paths(self, name: str) -> list[str]:
        return [f"{RUN}/{name}".format(**c) for c in self.cells()]

    def report_outputs(self) -> list[str]:
        """The report of the offline runs; none without training cells."""
        return [f"results/report/{name}" for name in REPORT_FILES] if self.cells() else []

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
                   "SEEMRL_TRACKING": json.dumps(tracking, sort_keys=True)}
        if res.get("lease_dir"):
            exports["SEEMRL_LEASE_DIR"] = res["lease_dir"]
        lines += [f"export {name}={shlex.quote(str(value))}" for name, value in exports.items()]
        return ("; ".join(lines) + "; ").replace("{", "{{").replace("}", "}}")
