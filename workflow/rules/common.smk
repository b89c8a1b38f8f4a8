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


def _check_references():
    """Names in `experiment` must exist in their sections; say which key is wrong."""
    exp = config["experiment"]
    for section in ("datasets", "algorithms", "critic_norms"):
        unknown = [n for n in exp[section] if n not in config[section]]
        if unknown:
            raise ValueError(
                f"config key experiment.{section}: unknown name(s) {unknown}; "
                f"defined under {section}: {sorted(config[section])}"
            )


_check_references()


def percent_label(p):
    """10 -> '10', 0.5 -> '0.5': the {percent} wildcard of a subset."""
    return str(int(p)) if float(p).is_integer() else repr(float(p))


PERCENTS = [percent_label(p) for p in config["experiment"]["percents"]]
SEEDS = config["experiment"]["seeds"]
RUN = "results/runs/{dataset}/{percent}pct/{algo}/{norm}"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    percent=r"[0-9]+(\.[0-9]+)?",
    algo=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    norm=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def minari_id(dataset):
    return f"seemrl/{dataset}-v0"


def cells():
    """Every (dataset, percent, algo, norm) of the experiment grid; seeds share a job."""
    exp = config["experiment"]
    return [
        dict(dataset=d, percent=p, algo=a, norm=n)
        for d in exp["datasets"]
        for p in PERCENTS
        for a in exp["algorithms"]
        for n in exp["critic_norms"]
    ]


def run_paths(name):
    return [(RUN + "/" + name).format(**c) for c in cells()]


def train_params(wildcards):
    """Algorithm and critic-normalisation settings of one cell, as one JSON string."""
    algo = dict(config["algorithms"][wildcards.algo])
    algo.pop("trainer")
    algo.update(config["critic_norms"][wildcards.norm])
    return json.dumps(algo, sort_keys=True)


def report_outputs():
    return [
        "results/report/summary.csv",
        "results/report/summary.md",
        "results/report/seeds.csv",
        "results/report/seem_q.png",
    ]
