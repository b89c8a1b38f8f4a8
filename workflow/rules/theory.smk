# The paper's theory experiments (seemrl.theory): each a job writing its tables, figure and meta
# JSON into results/theory/<experiment>/. Settings under `theory:` in the config; none = skipped.

THEORY_FILES = {
    "toy": ["toy_steps.parquet", "toy_summary.csv", "toy.png", "toy_meta.json"],
    "ntk_map": ["ntk_map_grid.parquet", "ntk_map_summary.csv", "ntk_map.png", "ntk_map_meta.json"],
    "baird": ["baird_trajectory.parquet", "baird_summary.csv", "baird.png", "baird_meta.json"],
    "homogeneity": ["homogeneity_table.csv", "homogeneity_paper_table.csv", "homogeneity.png", "homogeneity_meta.json"],
}
THEORY_CAPTIONS = {
    "toy": "theory_toy.rst",
    "ntk_map": "theory_ntk_map.rst",
    "baird": "theory_baird.rst",
    "homogeneity": "theory_homogeneity.rst",
}


def theory_flags(experiment):
    """An experiment's settings as command-line flags (so that changing one reruns the job)."""
    flags = []
    for key, value in sorted((config.get("theory") or {}).get(experiment, {}).items()):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            flags.append(flag + " " + " ".join(str(v) for v in value))
        elif value is not None:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def theory_outputs():
    return [f"results/theory/{e}/{f}" for e in (config.get("theory") or {}) for f in THEORY_FILES[e]]


for _experiment, _files in THEORY_FILES.items():

    rule:
        name:
            f"theory_{_experiment}"
        input:
            code=code(f"theory/{_experiment}.py", "theory/cli.py"),
        output:
            [
                report(f"results/theory/{_experiment}/{f}", caption=f"../report/{THEORY_CAPTIONS[_experiment]}",
                       category="Theory experiments")
                if f.endswith(".png")
                else f"results/theory/{_experiment}/{f}"
                for f in _files
            ],
        params:
            experiment=_experiment.replace("_", "-"),
            flags=lambda wc, experiment=_experiment: theory_flags(experiment),
            out_dir=f"results/theory/{_experiment}",
        threads: 1
        conda:
            CONDA_ENV
        log:
            f"results/logs/theory_{_experiment}.log",
        shell:
            "python -m seemrl.theory.cli {params.experiment} --out-dir {params.out_dir} --threads {threads}"
            " {params.flags} > {log} 2>&1"


rule theory:
    """Every theory experiment of the config (a named target)."""
    input:
        theory_outputs(),
