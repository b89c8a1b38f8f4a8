# SEEM and companions over every checkpoint of a run.


rule seem:
    input:
        checkpoints=RUN + "/checkpoints",
        data="resources/datasets/{dataset}/subset-{percent}pct.parquet",
        code=code("analysis/seem.py", "nets.py"),
    output:
        RUN + "/seem.parquet",
    params:
        n=config["analysis"]["seem_samples"],
        seed=config["analysis"].get("sample_seed", 0),
        replace="" if config["analysis"].get("with_replacement", True) else "--without-replacement",
        device=config["resources"].get("device", "auto"),
    threads: 1
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        RUN + "/seem.log",
    shell:
        "python -m seemrl seem --checkpoints {input.checkpoints} --data {input.data}"
        " --samples {params.n} --sample-seed {params.seed} {params.replace} --device {params.device}"
        " --threads {threads} --out {output} > {log} 2>&1"
