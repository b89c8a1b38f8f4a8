# Online SAC (the paper's Fig. 11): one job per (environment, variant), all seeds in it; a figure.
# Off unless `online.envs` lists environments.

ONLINE_RUN = "results/online/{env}/{variant}"


def online_params(wildcards):
    """The shared online settings with one variant's overrides, as one JSON string."""
    online = config["online"]
    return json.dumps({**online.get("settings", {}), **online["variants"][wildcards.variant]}, sort_keys=True)


def online_paths(name):
    online = config.get("online", {})
    return [f"{ONLINE_RUN}/{name}".format(env=e, variant=v) for e in online.get("envs", [])
            for v in online.get("variants", {})]


rule train_online:
    input:
        code=code(*TRAINING_CODE, "algos/online_sac.py"),
    output:
        checkpoints=directory(ONLINE_RUN + "/checkpoints"),
        metrics=ONLINE_RUN + "/metrics.parquet",
        evaluations=ONLINE_RUN + "/evaluations.parquet",
        episodes=ONLINE_RUN + "/episodes.parquet",
        run=ONLINE_RUN + "/run.json",
    params:
        sac=online_params,
        seeds=lambda wc: ",".join(str(s) for s in config["online"]["seeds"]),
        device=config["resources"].get("device", "auto"),
        resume_dir="results/resume/online/{env}/{variant}",
    threads: config["resources"].get("train_threads", 1)
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        ONLINE_RUN + "/train.log",
    shell:
        "python -m seemrl train-online --env-id {wildcards.env} --params '{params.sac}' --seeds {params.seeds}"
        " --label env={wildcards.env} --label variant={wildcards.variant}"
        " --device {params.device} --threads {threads} --resume-dir {params.resume_dir}"
        " --checkpoints {output.checkpoints} --metrics {output.metrics} --evaluations {output.evaluations}"
        " --episodes {output.episodes} --run {output.run} > {log} 2>&1"


rule report_online:
    input:
        code=code("report.py"),
        metrics=online_paths("metrics.parquet"),
        runs=online_paths("run.json"),
    output:
        report("results/report/online_sac.png", caption="../report/online_sac.rst", category="Online SAC"),
    conda:
        CONDA_ENV
    log:
        "results/logs/report_online.log",
    shell:
        "python -m seemrl report-online --metrics {input.metrics} --runs {input.runs} --out {output} > {log} 2>&1"
