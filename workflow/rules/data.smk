# Data: one rule family for the three sources of the registry (config/datasets.yaml), all
# ending in the same Parquet transition table and card, then X% subsets.
#   d4rl      fetch_d4rl (verified against config/datasets.lock.json)   -> dataset_table
#   minari    fetch_minari (pre-seeded store or the hub)                 -> dataset_table
#   generate  recipe_train -> recipe_dataset (Minari, D4RL's recipe)     -> dataset_table


rule fetch_d4rl:
    """Download an original D4RL HDF5 file, verified against (or recorded in) the checksum lock."""
    output:
        "resources/d4rl/{dataset}.hdf5",
    log:
        "results/logs/fetch_d4rl/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_d4rl/{dataset}.tsv"
    conda:
        CONDA_ENV
    params:
        lock=config["data"]["lock"],
        base_url=lambda w: (
            f"--base-url {config['data']['d4rl_base_url']}" if config["data"].get("d4rl_base_url") else ""
        ),
    shell:
        "python -m seemrl fetch-d4rl --name {wildcards.dataset} --out {output} --lock {params.lock}"
        " {params.base_url} > {log} 2>&1"


rule fetch_minari:
    """Make a Minari dataset available: a pre-seeded store, or a download from the hub."""
    output:
        "resources/minari-fetched/{dataset}.json",
    log:
        "results/logs/fetch_minari/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_minari/{dataset}.tsv"
    conda:
        CONDA_ENV
    params:
        minari_id=lambda w: registry_entry(w.dataset)["minari_id"],
        remote=config["data"]["minari_remote"],
    shell:
        "python -m seemrl fetch-minari --minari-id {params.minari_id} --minari-root resources/minari"
        " --remote {params.remote} --marker {output} > {log} 2>&1"


rule recipe_train:
    """D4RL's recipe, step 1: train the behaviour SAC online, with policy snapshots and the replay buffer."""
    input:
        code=code("generate/recipe.py", "generate/behaviour_sac.py", "algos/online_sac.py"),
    output:
        directory("resources/generated/{recipe}/{env_id}/training"),
    log:
        "results/logs/recipe_train/{recipe}-{env_id}.log",
    benchmark:
        "results/benchmarks/recipe_train/{recipe}-{env_id}.tsv"
    conda:
        CONDA_ENV_GPU
    threads: 4  # the GPU trains; afterwards the snapshots are evaluated in this many CPU processes
    resources:
        gpu=1,
    params:
        recipe=lambda w: recipe_json(w.recipe, training_only=True),
        resume_dir="results/resume/recipe/{recipe}/{env_id}",
        progress="results/logs/recipe_train/{recipe}-{env_id}.progress.json",
    shell:
        "python -m seemrl recipe-train --env-id {wildcards.env_id} --recipe '{params.recipe}'"
        " --resume-dir {params.resume_dir} --progress {params.progress} --eval-workers {threads}"
        " --label recipe={wildcards.recipe} --label env={wildcards.env_id} --out {output} > {log} 2>&1"


rule recipe_dataset:
    """D4RL's recipe, step 2: one level's dataset (random, medium, medium-replay, expert, medium-expert) as Minari."""
    input:
        training="resources/generated/{recipe}/{env_id}/training",
        code=code("generate/recipe.py", "data/minari_source.py"),
        parts=lambda w: (
            [f"resources/generated/{w.recipe}/{w.env_id}/{part}.json" for part in ("medium", "expert")]
            if w.level == "medium-expert"
            else []
        ),
    output:
        "resources/generated/{recipe}/{env_id}/{level}.json",
    log:
        "results/logs/recipe_dataset/{recipe}-{env_id}-{level}.log",
    benchmark:
        "results/benchmarks/recipe_dataset/{recipe}-{env_id}-{level}.tsv"
    wildcard_constraints:
        level="random|medium|medium-replay|expert|medium-expert",
    conda:
        CONDA_ENV
    params:
        recipe=lambda w: recipe_json(w.recipe),
        minari_root="resources/generated/{recipe}/{env_id}/minari",
    shell:
        "python -m seemrl recipe-dataset --level {wildcards.level} --env-id {wildcards.env_id}"
        " --training {input.training} --recipe '{params.recipe}'"
        " --minari-root {params.minari_root} --marker {output} > {log} 2>&1"


rule dataset_table:
    """Any source's dataset as the Parquet transition table and its card."""
    input:
        raw=raw_dataset_input,
        code=code("data/transitions.py", "data/d4rl.py", "data/minari_source.py"),
    output:
        table="resources/datasets/{dataset}/transitions.parquet",
        card="resources/datasets/{dataset}/card.json",
    log:
        "results/logs/dataset_table/{dataset}.log",
    benchmark:
        "results/benchmarks/dataset_table/{dataset}.tsv"
    conda:
        CONDA_ENV
    params:
        entry=registry_entry_json,
    shell:
        "python -m seemrl table --dataset {wildcards.dataset} --entry '{params.entry}' --raw {input.raw}"
        " --out {output.table} --card {output.card} > {log} 2>&1"


rule subset:
    """A seeded X% transition subset (nested: 1% of 10% of 100%)."""
    input:
        table="resources/datasets/{dataset}/transitions.parquet",
        code=code("data/subsets.py"),
    output:
        "resources/datasets/{dataset}/subset-{percent}pct.parquet",
    log:
        "results/logs/subset/{dataset}-{percent}pct.log",
    benchmark:
        "results/benchmarks/subset/{dataset}-{percent}pct.tsv"
    conda:
        CONDA_ENV
    params:
        seed=config["subsets"]["seed"],
        min_transitions=config["subsets"].get("min_transitions", 2560),
    shell:
        "python -m seemrl subset --src {input.table} --out {output} --percent {wildcards.percent}"
        " --seed {params.seed} --min-transitions {params.min_transitions} > {log} 2>&1"
