# SEEM and companions over every checkpoint of a run.


rule seem:
    """SEEM, mean Q, TD loss, gradient and parameter norms over every checkpoint of a run."""
    input:
        checkpoints=f"{RUN}/checkpoints",
        data="resources/datasets/{dataset}/subset-{percent}pct.parquet",
        code=code("analysis/seem.py", "nets.py"),
    output:
        f"{RUN}/seem.parquet",
    log:
        f"{RUN}/seem.log",
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
