# Data: behaviour policy -> Minari dataset -> Parquet transition table -> X% subsets.


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


rule train_behaviour:
    output:
        "resources/behaviour/{dataset}/policy.pt",
    params:
        env_id=lambda w: dataset_cfg(w)["env_id"],
        steps=lambda w: dataset_cfg(w)["behaviour_steps"],
        seed=lambda w: dataset_cfg(w).get("behaviour_seed", 0),
    threads: 2  # nothing else can run before the data exists
    conda:
        CONDA_ENV
    log:
        "results/logs/train_behaviour/{dataset}.log",
    shell:
        "python -m seemrl train-behaviour --env-id {params.env_id} --steps {params.steps}"
        " --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule collect_dataset:
    input:
        policy="resources/behaviour/{dataset}/policy.pt",
    output:
        directory("resources/minari/seemrl/{dataset}-v0"),
    params:
        dataset_id=lambda w: minari_id(w.dataset),
        env_id=lambda w: dataset_cfg(w)["env_id"],
        transitions=lambda w: dataset_cfg(w)["transitions"],
        seed=lambda w: dataset_cfg(w).get("collect_seed", 1),
        ref=lambda w: "--ref-min {} --ref-max {}".format(
            dataset_cfg(w)["ref_min_score"], dataset_cfg(w)["ref_max_score"]
        )
        if "ref_min_score" in dataset_cfg(w)
        else "",
    threads: 1
    conda:
        CONDA_ENV
    log:
        "results/logs/collect_dataset/{dataset}.log",
    shell:
        "python -m seemrl collect --env-id {params.env_id} --policy {input.policy}"
        " --dataset-id {params.dataset_id} --minari-root resources/minari"
        " --transitions {params.transitions} --seed {params.seed} {params.ref} > {log} 2>&1"


rule flatten_dataset:
    input:
        "resources/minari/seemrl/{dataset}-v0",
    output:
        table="resources/datasets/{dataset}/transitions.parquet",
        card="resources/datasets/{dataset}/card.json",
    params:
        dataset_id=lambda w: minari_id(w.dataset),
    conda:
        CONDA_ENV
    log:
        "results/logs/flatten_dataset/{dataset}.log",
    shell:
        "python -m seemrl flatten --dataset-id {params.dataset_id} --minari-root resources/minari"
        " --out {output.table} --card {output.card} > {log} 2>&1"


rule subset:
    input:
        "resources/datasets/{dataset}/transitions.parquet",
    output:
        "resources/datasets/{dataset}/subset-{percent}pct.parquet",
    params:
        seed=config["subsets"]["seed"],
    conda:
        CONDA_ENV
    log:
        "results/logs/subset/{dataset}-{percent}pct.log",
    shell:
        "python -m seemrl subset --src {input} --out {output} --percent {wildcards.percent}"
        " --seed {params.seed} > {log} 2>&1"
