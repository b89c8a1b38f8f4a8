# SEEM and companions over every checkpoint of a run; the paper's predictions checked against the runs.


rule seem:
    """SEEM, mean Q, TD loss, gradient and parameter norms over every checkpoint of a run."""
    input:
        checkpoints=f"{RUN}/checkpoints",
        data="resources/datasets/{dataset}/subset-{percent}pct.parquet",
        code=code("analysis/seem.py", "training/nets.py", "data/preparation.py"),
    output:
        f"{RUN}/seem.parquet",
    log:
        f"{RUN}/seem.log",
    benchmark:
        f"{RUN_BENCHMARK}/seem.tsv"
    conda:
        CONDA_ENV_GPU
    threads: 1
    resources:
        gpu=1,
    params:
        n=config["analysis"]["seem_samples"],
        seed=config["analysis"].get("sample_seed", 0),
        replace="" if config["analysis"].get("with_replacement", True) else "--without-replacement",
    shell:
        "python -m seemrl seem --checkpoints {input.checkpoints} --data {input.data}"
        " --samples {params.n} --sample-seed {params.seed} {params.replace}"
        " --out {output} > {log} 2>&1"


rule predictions:
    """The paper's predictions checked per run and seed: SEEM's lead over divergence, growth orders, crash steps."""
    input:
        code=code("analysis/predictions.py", "io.py"),
        seem=run_paths("seem.parquet"),
        metrics=run_paths("metrics.parquet"),
        runs=run_paths("run.json"),
    output:
        csv=report("results/report/predictions.csv", caption="../report/predictions.rst", category="Tables"),
        markdown="results/report/predictions.md",
    log:
        "results/logs/predictions.log",
    benchmark:
        "results/benchmarks/predictions.tsv"
    conda:
        CONDA_ENV
    params:
        run_dirs=lambda w, input: [str(Path(p).parent) for p in input.runs],
    shell:
        "python -m seemrl predictions --runs {params.run_dirs} --csv {output.csv} --markdown {output.markdown}"
        " > {log} 2>&1"
