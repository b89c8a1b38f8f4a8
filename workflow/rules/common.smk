# What the rules share, as one-line wrappers over seemrl.workflow.Plan (unit-tested there): the
# dataset registry and the experiment grid, the config checked against the code, the package
# modules each rule runs, and the environment of every job. The rules live in their stage's file.
import json
import re
import sys
from pathlib import Path

# ------------------------------------------------------------------ environment (the one set-up)
PROJECT = Path(workflow.basedir)
# the workflow's own package, whatever interpreter runs Snakemake (its jobs get it on PYTHONPATH)
sys.path.insert(0, str(PROJECT.joinpath("src")))
# job temp files (the profile's tmpdir resource) stay in the project
Path(".cache/tmp").mkdir(parents=True, exist_ok=True)

from seemrl.workflow import (  # noqa: E402
    BENCHMARKS,
    ONLINE_BENCHMARK,
    ONLINE_RUN,
    RUN,
    RUN_BENCHMARK,
    THEORY_FILES,
    TRAINING_CODE,
    Plan,
    percent_label,
)

CONDA_ENV = "../../envs/jobs-cpu.yaml"  # rules that compute on the CPU
CONDA_ENV_GPU = "../../envs/jobs-gpu.yaml"  # rules that may use a GPU (resources: gpu=1)
# Resumable state of a train job. Not an output: Snakemake deletes outputs before a job starts,
# and this must survive a killed attempt. `seemrl train` creates it, continues from it when it
# matches the run, and deletes it when the job completes; the rule itself creates nothing there.
RESUME = "results/resume/{dataset}/{percent}pct/{algo}/{norm}"

PLAN = Plan(config, PROJECT)  # reads the registry and checks the config; errors name the key
IN_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
shell.prefix(PLAN.job_shell_prefix(None if IN_CONDA else str(Path(sys.executable).parent)))


# ------------------------------------------------------------------ wrappers the rules call
def registry_entry(name):
    return PLAN.registry_entry(name)


def registry_entry_json(wildcards):
    return PLAN.registry_entry_json(wildcards.dataset)


def cells():
    return PLAN.cells()


def train_groups():
    return PLAN.train_groups()


def cell_seeds(wildcards):
    return PLAN.seeds(wildcards.dataset, wildcards.percent, wildcards.algo, wildcards.norm)


def run_paths(name):
    return PLAN.run_paths(name)


def train_params(wildcards):
    return PLAN.train_params(wildcards.algo, wildcards.norm)


def train_code(wildcards):
    return PLAN.train_code(wildcards.algo)


def code(*modules):
    return PLAN.code(*modules)


def recipe_json(recipe, training_only=False):
    return PLAN.recipe_json(recipe, training_only)


def raw_dataset_input(wildcards):
    return PLAN.raw_dataset_input(wildcards.dataset)


def report_outputs():
    return PLAN.report_outputs()


def evaluated_run_paths(name):
    return PLAN.evaluated_run_paths(name)


def dataset_run_paths(dataset, name):
    return PLAN.dataset_run_paths(dataset, name)


def report_artefact(kind, name):
    return PLAN.report_artefact(kind, name)


def caption(kind, name):
    return PLAN.caption(kind, name)


def artefact_pattern(kind):
    """A wildcard constraint matching exactly the configured tables or figures (never empty)."""
    names = PLAN.report_tables() if kind == "tables" else PLAN.report_totals()
    return "|".join(re.escape(n) for n in names) or "(?!)"


def dataset_sources():
    return PLAN.dataset_sources()


def paper_results_file():
    return (config.get("report") or {}).get("paper_results") or []


def claims_inputs(wildcards):
    return PLAN.claims_inputs()


def claims_args(wildcards, input):
    """The claims report's inputs as its command-line flags (each kind only when the config has it)."""
    flags = []
    for kind, files in PLAN.claims_inputs().items():
        if files:
            flags.append(f"--{kind.replace('_', '-')} " + " ".join(files))
    return " ".join(flags)


def online_params(wildcards):
    return PLAN.online_params(wildcards.variant)


def online_paths(name):
    return PLAN.online_paths(name)


def online_outputs():
    return PLAN.online_outputs()


def theory_flags(experiment):
    return PLAN.theory_flags(experiment)


def theory_outputs():
    return PLAN.theory_outputs()


def theory_output(experiment, name):
    """One output file of a theory experiment; its figure is in the HTML report."""
    path = f"results/theory/{experiment}/{name}"
    if name.endswith(".png"):
        return report(path, caption=f"../report/theory_{experiment}.rst", category="Theory experiments")
    return path
