# What the rules share: the dataset registry and the experiment grid, the config checked against
# the code, the package modules each rule runs, and the environment of every job. Functions and
# constants only; the rules live in their stage's file.
import difflib
import json
import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate as _validate

PROJECT = Path(workflow.basedir)
# the workflow's own package, whatever interpreter runs Snakemake (its jobs get it on PYTHONPATH)
sys.path.insert(0, str(PROJECT.joinpath("src")))

from seemrl.config import build, check_dataclass_fields, check_fields, critic_spec_schema  # noqa: E402

CONDA_ENV = "../../envs/jobs-cpu.yaml"  # rules that compute on the CPU
CONDA_ENV_GPU = "../../envs/jobs-gpu.yaml"  # rules that may use a GPU (resources: gpu=1)
RUN = "results/runs/{dataset}/{percent}pct/{algo}/{norm}"
# Resumable state of a train job. Not an output: Snakemake deletes outputs before a job starts,
# and this must survive a killed attempt. `seemrl train` creates it, continues from it when it
# matches the run, and deletes it when the job completes; the rule itself creates nothing there.
RESUME = "results/resume/{dataset}/{percent}pct/{algo}/{norm}"
ONLINE_RUN = "results/online/{env}/{variant}"
# Job temp files (the profile's tmpdir resource) stay in the project.
Path(".cache/tmp").mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ the jobs' environment
def job_shell_prefix():
    """What every job's shell runs first. Where and how a job runs (device, GPU slots, the GPU
    lease directory, tracking, caches, the interpreter) reaches it here, through the environment,
    and never through params or inputs: changing any of it changes no result and reruns nothing."""
    res, tracking = config["resources"], config.get("tracking") or {}
    lines = ["set -euo pipefail"]
    in_conda = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
    if not in_conda:  # the interpreter running Snakemake (a venv's); a conda job uses its env's own
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    lines.append(f"export PYTHONPATH={shlex.quote(str(PROJECT / 'src'))}${{PYTHONPATH:+:$PYTHONPATH}}")
    # caches and datasets inside the project (never $HOME), unless the user's environment says otherwise
    for name, path in (
        ("MINARI_DATASETS_PATH", "resources/minari"),
        ("MPLCONFIGDIR", ".cache/matplotlib"),
        ("XDG_CACHE_HOME", ".cache"),
    ):
        lines.append(f'export {name}="${{{name}:-{Path(path).resolve()}}}"')
    exports = {
        "SEEMRL_DEVICE": res.get("device", "auto"),
        "SEEMRL_GPU_SLOTS": res.get("gpu_slots", 1),
        "SEEMRL_TRACKING": json.dumps(tracking, sort_keys=True),
    }
    if res.get("lease_dir"):
        exports["SEEMRL_LEASE_DIR"] = res["lease_dir"]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in exports.items()]
    return ("; ".join(lines) + "; ").replace("{", "{{").replace("}", "}}")  # Snakemake formats the prefix


shell.prefix(job_shell_prefix())


# ------------------------------------------------------------------ registry and experiment grid
def _load_registry(path):
    """The dataset registry, validated against its schema; errors name the file."""
    try:
        registry = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"config key registry: cannot read dataset registry {path}: {exc}")
    _validate(registry, str(PROJECT / "workflow/schemas/datasets.schema.yaml"))
    return registry


REGISTRY = _load_registry(config["registry"])
GRIDS = config["experiment"] if isinstance(config["experiment"], list) else [config["experiment"]]


def registry_entry(name):
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        raise ValueError(
            f"unknown dataset {name!r}: not in {config['registry']}{f'; did you mean {close}?' if close else ''}"
        )
    return REGISTRY[name]


def _check_references():
    """Names in `experiment` and the registry must resolve; say which key is wrong."""
    sections = {"algorithms": config["algorithms"], "critic_norms": config["critic_norms"], "datasets": REGISTRY}
    for section, defined in sections.items():
        unknown = [n for exp in GRIDS for n in exp[section] if n not in defined]
        if unknown:
            where = config["registry"] if section == "datasets" else section
            raise ValueError(
                f"config key experiment.{section}: unknown name(s) {unknown}; defined in {where}: "
                + str(difflib.get_close_matches(unknown[0], defined, n=5) or sorted(defined)[:10])
            )
    for name in {d for exp in GRIDS for d in exp["datasets"]}:
        entry = REGISTRY[name]
        if entry["source"] == "generate" and entry["recipe"] not in config.get("recipes", {}):
            raise ValueError(
                f"dataset {name} in {config['registry']}: recipe {entry['recipe']!r} is not a key of "
                f"`recipes` in the config (defined: {sorted(config.get('recipes', {}))})"
            )


def percent_label(p):
    """10 -> '10', 0.5 -> '0.5': the {percent} wildcard of a subset."""
    return str(int(p)) if float(p).is_integer() else repr(float(p))


def _cell_seeds():
    """(dataset, percent, algo, norm) -> seeds, over every grid; a cell in two grids must agree."""
    seeds = {}
    for i, exp in enumerate(GRIDS):
        for key in (
            (d, percent_label(p), a, n)
            for d in exp["datasets"]
            for p in exp["percents"]
            for a in exp["algorithms"]
            for n in exp["critic_norms"]
        ):
            if key in seeds and seeds[key] != exp["seeds"]:
                raise ValueError(
                    f"config key experiment[{i}]: cell {key} is in two grids with "
                    f"different seeds ({seeds[key]} and {exp['seeds']})"
                )
            seeds[key] = exp["seeds"]
    return seeds


_check_references()
CELL_SEEDS = _cell_seeds()


def cells():
    """Every (dataset, percent, algo, norm) of the experiment's grid(s), in order; seeds share a job."""
    return [dict(dataset=d, percent=p, algo=a, norm=n) for d, p, a, n in CELL_SEEDS]


# ------------------------------------------------------------------ the config against the code
def _check_typed_sections():
    """Every setting that becomes a dataclass is typed by it (seemrl.config): each algorithm
    against its trainer's Config, each critic spec, each recipe, the online settings; then each
    algorithm used by a cell builds its Config with each critic spec it meets, so a bad value
    fails now, naming its key, instead of inside a job."""
    from seemrl.algos import trainer_module
    from seemrl.algos.online_sac import OnlineSACConfig
    from seemrl.data.recipe import RecipeConfig

    for name, spec in config["critic_norms"].items():
        check_fields(critic_spec_schema(), spec, f"critic_norms.{name}")
    for name, settings in config["algorithms"].items():
        fields = {k: v for k, v in settings.items() if k != "trainer"}
        check_dataclass_fields(trainer_module(settings["trainer"]).Config, fields, f"algorithms.{name}")
    for name, settings in (config.get("recipes") or {}).items():
        build(RecipeConfig, settings, f"recipes.{name}")
    online = config.get("online") or {}
    check_dataclass_fields(OnlineSACConfig, online.get("settings") or {}, "online.settings")
    for name, variant in (online.get("variants") or {}).items():
        build(OnlineSACConfig, {**(online.get("settings") or {}), **variant}, f"online.variants.{name}")
    for algo, norm in sorted({(c["algo"], c["norm"]) for c in cells()}):
        build(
            trainer_module(config["algorithms"][algo]["trainer"]).Config,
            {**_algorithm_fields(algo), "critic": config["critic_norms"][norm]},
            f"algorithms.{algo} (with critic_norms.{norm})",
        )


def _algorithm_fields(algo):
    return {k: v for k, v in config["algorithms"][algo].items() if k != "trainer"}


_check_typed_sections()


# ------------------------------------------------------------------ what each rule runs
def code(*modules):
    """Package modules a rule's output depends on, as inputs: Snakemake tracks a rule's shell
    text and params but not the Python it calls, so editing one of these reruns the rule (and what
    depends on it) and nothing else. Relative to the working directory, so that a project moved
    elsewhere (results included) is up to date where it lands. The CLI plumbing (seemrl/cli.py) is
    deliberately left out."""
    return [os.path.relpath(PROJECT / "src" / "seemrl" / m) for m in modules]


TRAINING_CODE = ("engine.py", "nets.py", "evaluation.py", "antmaze.py", "resume.py", "devices.py", "config.py")


def train_code(wildcards):
    """The training engine plus the algorithm's own module(s)."""
    trainer = config["algorithms"][wildcards.algo]["trainer"]
    return code(*TRAINING_CODE, f"algos/{trainer}.py", "algos/td3.py", "algos/common.py")


# ------------------------------------------------------------------ params and paths
def recipe_json(recipe, training_only=False):
    """A recipe's settings as JSON; the training step sees only what changes its outputs, so that
    e.g. a new dataset size re-collects data without retraining SAC."""
    from seemrl.data.recipe import RecipeConfig

    settings = config["recipes"][recipe]
    if training_only:
        settings = {k: v for k, v in settings.items() if k in RecipeConfig.TRAINING_FIELDS}
    return json.dumps(settings, sort_keys=True)


def raw_dataset_input(wildcards):
    """What `dataset_table` converts, by the dataset's source."""
    entry = registry_entry(wildcards.dataset)
    if entry["source"] == "d4rl":
        return f"resources/d4rl/{wildcards.dataset}.hdf5"
    if entry["source"] == "minari":
        return f"resources/minari-fetched/{wildcards.dataset}.json"
    return f"resources/generated/{entry['recipe']}/{entry['env_id']}/{entry['level']}.json"


def cell_seeds(wildcards):
    return ",".join(str(s) for s in CELL_SEEDS[wildcards.dataset, wildcards.percent, wildcards.algo, wildcards.norm])


def run_paths(name):
    return [f"{RUN}/{name}".format(**c) for c in cells()]


def train_params(wildcards):
    """Algorithm and critic-normalisation settings of one cell, as one JSON string."""
    return json.dumps(
        {**_algorithm_fields(wildcards.algo), "critic": config["critic_norms"][wildcards.norm]}, sort_keys=True
    )


def report_outputs():
    """The report of the offline runs; none without training cells."""
    if not cells():
        return []
    return [
        f"results/report/{name}"
        for name in (
            "summary.csv",
            "summary.md",
            "seeds.csv",
            "seem_q.png",
            "seem_vs_gamma.png",
            "predictions.csv",
            "predictions.md",
        )
    ]


def online_params(wildcards):
    """The shared online settings with one variant's overrides, as one JSON string."""
    online = config["online"]
    return json.dumps({**(online.get("settings") or {}), **online["variants"][wildcards.variant]}, sort_keys=True)


def online_paths(name):
    online = config.get("online") or {}
    return [
        f"{ONLINE_RUN}/{name}".format(env=e, variant=v)
        for e in online.get("envs", [])
        for v in online.get("variants", {})
    ]


def online_outputs():
    return ["results/report/online_sac.png"] if (config.get("online") or {}).get("envs") else []


# The theory experiments (seemrl.theory): each writes its tables, figure and meta JSON into
# results/theory/<experiment>/; settings under `theory:` in the config, none = skipped.
THEORY_FILES = {
    "toy": ["toy_steps.parquet", "toy_summary.csv", "toy.png", "toy_meta.json"],
    "ntk_map": ["ntk_map_grid.parquet", "ntk_map_summary.csv", "ntk_map.png", "ntk_map_meta.json"],
    "baird": ["baird_trajectory.parquet", "baird_summary.csv", "baird.png", "baird_meta.json"],
    "homogeneity": ["homogeneity_table.csv", "homogeneity_paper_table.csv", "homogeneity.png", "homogeneity_meta.json"],
}


def theory_flags(experiment):
    """An experiment's settings as command-line flags (so that changing one reruns the job)."""
    flags = []
    for key, value in sorted((config.get("theory") or {}).get(experiment, {}).items()):
        name = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            flags.append(f"--{name} {' '.join(str(v) for v in value)}")
        elif value is not None:
            flags.append(f"--{name} {value}")
    return " ".join(flags)


def theory_outputs():
    return [f"results/theory/{e}/{f}" for e in (config.get("theory") or {}) for f in THEORY_FILES[e]]


def theory_output(experiment, name):
    """One output file of a theory experiment; its figure is in the HTML report."""
    path = f"results/theory/{experiment}/{name}"
    if name.endswith(".png"):
        return report(path, caption=f"../report/theory_{experiment}.rst", category="Theory experiments")
    return path
