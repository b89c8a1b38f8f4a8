# Training: one job per (dataset, X%, algorithm, critic normalisation); all seeds in it.

# Resumable state of a train job. Not an output: Snakemake deletes outputs before a job starts,
# and this must survive a killed attempt. `seemrl train` creates it, continues from it when it
# matches the run, and deletes it when the job completes; the rule itself creates nothing there.
RESUME = "results/resume/{dataset}/{percent}pct/{algo}/{norm}"


rule train:
    input:
        data="resources/datasets/{dataset}/subset-{percent}pct.parquet",
        code=train_code,
    output:
        checkpoints=directory(RUN + "/checkpoints"),
        metrics=RUN + "/metrics.parquet",
        evaluations=RUN + "/evaluations.parquet",
        run=RUN + "/run.json",
    params:
        trainer=lambda wc: config["algorithms"][wc.algo]["trainer"],
        algo=train_params,
        seeds=cell_seeds,
        device=config["resources"].get("device", "auto"),
        resume_dir=RESUME,
    threads: config["resources"].get("train_threads", 1)
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        RUN + "/train.log",
    shell:
        "python -m seemrl train --trainer {params.trainer} --data {input.data} --params '{params.algo}'"
        " --seeds {params.seeds}"
        " --label dataset={wildcards.dataset} --label percent={wildcards.percent}"
        " --label algo={wildcards.algo} --label critic_norm={wildcards.norm}"
        " --device {params.device} --threads {threads} --resume-dir {params.resume_dir}"
        " --checkpoints {output.checkpoints} --metrics {output.metrics}"
        " --evaluations {output.evaluations} --run {output.run}"
        " > {log} 2>&1"
