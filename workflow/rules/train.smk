# Training: one job per (dataset, X%, algorithm, critic normalisation); all seeds in it.


rule train:
    input:
        "resources/datasets/{dataset}/subset-{percent}pct.parquet",
    output:
        checkpoints=directory(RUN + "/checkpoints"),
        metrics=RUN + "/metrics.parquet",
        run=RUN + "/run.json",
    params:
        algo=train_params,
        seeds=",".join(str(s) for s in SEEDS),
        device=config["resources"].get("device", "auto"),
    threads: config["resources"].get("train_threads", 1)
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        RUN + "/train.log",
    shell:
        "python -m seemrl train --data {input} --params '{params.algo}' --seeds {params.seeds}"
        " --label dataset={wildcards.dataset} --label percent={wildcards.percent}"
        " --label algo={wildcards.algo} --label critic_norm={wildcards.norm}"
        " --device {params.device} --threads {threads}"
        " --checkpoints {output.checkpoints} --metrics {output.metrics} --run {output.run}"
        " > {log} 2>&1"
