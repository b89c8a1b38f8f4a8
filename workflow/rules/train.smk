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
