# The paper's theory experiments (seemrl.theory), one job each; their files in common.smk.

for _experiment, _files in THEORY_FILES.items():

    rule:
        """A theory experiment of the paper (toy crash prediction, NTK map, Baird, homogeneity)."""
        name:
            f"theory_{_experiment}"
        input:
            code=code(f"theory/{_experiment}.py", "theory/cli.py"),
        output:
            [theory_output(_experiment, f) for f in _files],
        log:
            f"results/logs/theory_{_experiment}.log",
        benchmark:
            f"results/benchmarks/theory_{_experiment}.tsv"
        conda:
            CONDA_ENV
        threads: 1
        params:
            experiment=_experiment.replace("_", "-"),
            flags=lambda wc, experiment=_experiment: theory_flags(experiment),
            out_dir=lambda wc, output: str(Path(output[0]).parent),
        shell:
            "python -m seemrl.theory.cli {params.experiment} --out-dir {params.out_dir} --threads {threads}"
            " {params.flags} > {log} 2>&1"


rule theory:
    """Every theory experiment of the config (a named target)."""
    input:
        theory_outputs(),
