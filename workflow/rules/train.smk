# Training: one job per (dataset, X%, algorithm, critic normalisation); all seeds in it.


rule train:
    """Train every seed of one cell (dataset, X%, algorithm, critic normalisation) in one process."""
    input:
        data="resources/datasets/{dataset}/subset-{percent}pct.parquet",
        code=train_code,
    output:
        checkpoints=directory(f"{RUN}/checkpoints"),
        metrics=f"{RUN}/metrics.parquet",
        evaluations=f"{RUN}/evaluations.parquet",
        run=f"{RUN}/run.json",
    log:
        f"{RUN}/train.log",
    benchmark:
        f"{RUN_BENCHMARK}/train.tsv"
    conda:
        CONDA_ENV_GPU
    threads: config["resources"].get("train_threads", 1)
    resources:
        gpu=1,
    params:
        trainer=lambda wc: config["algorithms"][wc.algo]["trainer"],
        algo=train_params,
        seeds=cell_seeds,
        resume_dir=RESUME,
        progress=f"{RUN}/progress.json",
    shell:
        "python -m seemrl train --trainer {params.trainer} --data {input.data} --params '{params.algo}'"
        " --seeds {params.seeds}"
        " --label dataset={wildcards.dataset} --label percent={wildcards.percent}"
        " --label algo={wildcards.algo} --label critic_norm={wildcards.norm}"
        " --threads {threads} --resume-dir {params.resume_dir} --progress {params.progress}"
        " --checkpoints {output.checkpoints} --metrics {output.metrics}"
        " --evaluations {output.evaluations} --run {output.run}"
        " > {log} 2>&1"


# Cells that train together (a grid's `train_together`): one job per group, its cells' outputs as
# if each trained alone (`seemrl train-together`). Rules without wildcards win over `train` for
# their files (Snakemake prefers them), so a grouped cell never also gets a job of its own.
for _group, _cells in train_groups().items():
    _runs = [RUN.format(**c) for c in _cells]
    _algo, _norm = _cells[0]["algo"], _cells[0]["norm"]

    rule:
        """Train a group of cells (one algorithm and critic option) in one process, one stack."""
        name:
            f"train_together_{_group}"
        input:
            data=[f"resources/datasets/{c['dataset']}/subset-{c['percent']}pct.parquet" for c in _cells],
            code=PLAN.train_code(_algo),
        output:
            [directory(f"{r}/checkpoints") for r in _runs],
            [f"{r}/{f}" for r in _runs for f in ("metrics.parquet", "evaluations.parquet", "run.json")],
        log:
            f"results/logs/train_together/{_group}.log",
        benchmark:
            f"{BENCHMARKS}/train_together/{_group}.tsv"
        conda:
            CONDA_ENV_GPU
        threads: config["resources"].get("train_threads", 1)
        resources:
            gpu=1,
        params:
            trainer=config["algorithms"][_algo]["trainer"],
            algo=PLAN.train_params(_algo, _norm),
            cells=PLAN.together_cells_json(_group),
            resume_dir=f"results/resume/together/{_group}",
        shell:
            "python -m seemrl train-together --trainer {params.trainer} --params '{params.algo}'"
            " --cells '{params.cells}' --threads {threads} --resume-dir {params.resume_dir} > {log} 2>&1"
