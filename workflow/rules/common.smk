# Helpers shared by the rules: the experiment grid, paths, and JSON params.
import json
import os
import sys
from pathlib import Path

PROJECT = Path(workflow.basedir)
# Jobs run `python -m seemrl`: the interpreter running Snakemake (a venv's) unless a conda env is
# activated for the job, with the package's source first on the path either way.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(PROJECT / "src"), os.environ.get("PYTHONPATH")])
)
# Caches and datasets stay inside the project (never $HOME); MuJoCo and Minari look here.
os.environ.setdefault("MINARI_DATASETS_PATH", str(Path("resources/minari").resolve()))
os.environ.setdefault("MPLCONFIGDIR", str(Path(".cache/matplotlib").resolve()))
os.environ.setdefault("XDG_CACHE_HOME", str(Path(".cache").resolve()))
# Job temp files (the profile's tmpdir resource) stay in the project too.
Path(".cache/tmp").mkdir(parents=True, exist_ok=True)
CONDA_ENV = "../../envs/seemrl.yaml"


import difflib

import yaml
from snakemake.utils import validate as _validate


def _load_registry(path):
    """The dataset registry, validated against its schema; errors name the file."""
    try:
        registry = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"config key registry: cannot read dataset registry {path}: {exc}")
    _validate(registry, str(PROJECT / "workflow/schemas/datasets.schema.yaml"))
    return registry


REGISTRY = _load_registry(config["registry"])


def registry_entry(name):
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        raise ValueError(
            f"unknown dataset {name!r}: not in {config['registry']}"
            + (f"; did you mean {close}?" if close else "")
        )
    return REGISTRY[name]


GRIDS = config["experiment"] if isinstance(config["experiment"], list) else [config["experiment"]]


def _check_references():
    """Names in `experiment` and the registry must resolve; say which key is wrong."""
    sections = {"algorithms": config["algorithms"], "critic_norms": config["critic_norms"],
                "datasets": REGISTRY}
    for section, defined in sections.items():
        unknown = [n for exp in GRIDS for n in exp[section] if n not in defined]
        if unknown:
            where = config["registry"] if section == "datasets" else section
            raise ValueError(
                f"config key experiment.{section}: unknown name(s) {unknown}; "
                f"defined in {where}: "
                + str(difflib.get_close_matches(unknown[0], defined, n=5) or sorted(defined)[:10])
            )
    for name in {d for exp in GRIDS for d in exp["datasets"]}:
        entry = REGISTRY[name]
        if entry["source"] == "generate" and entry["recipe"] not in config.get("recipes", {}):
            raise ValueError(
                f"dataset {name} in {config['registry']}: recipe {entry['recipe']!r} is not a key of "
                f"`recipes` in the config (defined: {sorted(config.get('recipes', {}))})"
            )


_check_references()


def _check_algorithms():
    """Each algorithm used by a cell builds its Config (with each critic spec it meets), so a bad
    field or value fails now, naming the key, instead of inside a training job."""
    import dataclasses

    from seemrl.algos import trainer_module

    for algo, norm in sorted({(c["algo"], c["norm"]) for c in cells()}):
        params = dict(config["algorithms"][algo])
        algo_module = trainer_module(params.pop("trainer"))
        fields = sorted(f.name for f in dataclasses.fields(algo_module.Config))
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ValueError(f"config key algorithms.{algo}: unknown field(s) {unknown} for trainer "
                             f"{config['algorithms'][algo]['trainer']}; allowed: {fields}")
        try:
            algo_module.Config(**params, critic=config["critic_norms"][norm])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config key algorithms.{algo} (with critic_norms.{norm}): {exc}")


sys.path.insert(0, str(PROJECT / "src"))  # the workflow's own package, whatever runs Snakemake
from seemrl.data.recipe import RecipeConfig


def recipe_json(recipe, training_only=False):
    """A recipe's settings as JSON; the training step sees only what changes its outputs, so that
    e.g. a new dataset size re-collects data without retraining SAC."""
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


def code(*modules):
    """Package modules a rule's output depends on, as inputs: Snakemake tracks a rule's shell
    text and params but not the Python it calls, so editing one of these reruns the rule (and what
    depends on it) and nothing else. The CLI plumbing (seemrl/cli.py) is deliberately left out."""
    return [str(PROJECT / "src" / "seemrl" / m) for m in modules]


TRAINING_CODE = ("engine.py", "nets.py", "evaluation.py", "antmaze.py", "resume.py", "devices.py")


def train_code(wildcards):
    """The training engine plus the algorithm's own module(s)."""
    trainer = config["algorithms"][wildcards.algo]["trainer"]
    extra = ("algos/common.py",) if (PROJECT / "src/seemrl/algos/common.py").exists() else ()
    return code(*TRAINING_CODE, f"algos/{trainer}.py", "algos/td3.py", *extra)


def percent_label(p):
    """10 -> '10', 0.5 -> '0.5': the {percent} wildcard of a subset."""
    return str(int(p)) if float(p).is_integer() else repr(float(p))


RUN = "results/runs/{dataset}/{percent}pct/{algo}/{norm}"
# Every GPU job leases a device of its own for its lifetime (seemrl.gpu_lease). How many jobs share
# a GPU is how jobs run, not what they compute: it reaches them through the environment, so
# changing it reruns nothing.
os.environ["SEEMRL_GPU_SLOTS"] = str(config["resources"].get("gpu_slots", 1))
os.environ.setdefault("SEEMRL_LEASE_DIR", str(Path(".cache/gpu-leases").resolve()))


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    recipe=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    env_id=r"[A-Za-z0-9_]+-v[0-9]+",
    percent=r"[0-9]+(\.[0-9]+)?",
    algo=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    norm=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def _cell_seeds():
    """(dataset, percent, algo, norm) -> seeds, over every grid; a cell in two grids must agree."""
    seeds = {}
    for i, exp in enumerate(GRIDS):
        for d in exp["datasets"]:
            for p in (percent_label(p) for p in exp["percents"]):
                for a in exp["algorithms"]:
                    for n in exp["critic_norms"]:
                        key = (d, p, a, n)
                        if key in seeds and seeds[key] != exp["seeds"]:
                            raise ValueError(f"config key experiment[{i}]: cell {key} is in two grids with "
                                             f"different seeds ({seeds[key]} and {exp['seeds']})")
                        seeds[key] = exp["seeds"]
    return seeds


CELL_SEEDS = _cell_seeds()


def cells():
    """Every (dataset, percent, algo, norm) of the experiment's grid(s), in order; seeds share a job."""
    return [dict(dataset=d, percent=p, algo=a, norm=n) for d, p, a, n in CELL_SEEDS]


_check_algorithms()


def cell_seeds(wildcards):
    return ",".join(str(s) for s in CELL_SEEDS[wildcards.dataset, wildcards.percent, wildcards.algo, wildcards.norm])


def run_paths(name):
    return [(RUN + "/" + name).format(**c) for c in cells()]


def train_params(wildcards):
    """Algorithm and critic-normalisation settings of one cell, as one JSON string."""
    algo = dict(config["algorithms"][wildcards.algo])
    algo.pop("trainer")
    algo["critic"] = config["critic_norms"][wildcards.norm]
    return json.dumps(algo, sort_keys=True)


def report_outputs():
    return [
        "results/report/summary.csv",
        "results/report/summary.md",
        "results/report/seeds.csv",
        "results/report/seem_q.png",
        "results/report/seem_vs_gamma.png",
        "results/report/predictions.csv",
        "results/report/predictions.md",
    ]
