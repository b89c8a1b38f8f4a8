# Online SAC (the paper's Fig. 11): one job per (environment, variant), all seeds in it; a figure.
# Off unless `online.envs` lists environments.


rule train_online:
    """Online SAC on one environment, one variant (EMA, no EMA, no EMA + LN), all seeds in one process."""
    input:
        code=code(*TRAINING_CODE, "algos/online_sac.py", "algos/base.py"),
    output:
        checkpoints=directory(f"{ONLINE_RUN}/checkpoints"),
        metrics=f"{ONLINE_RUN}/metrics.parquet",
        evaluations=f"{ONLINE_RUN}/evaluations.parquet",
        episodes=f"{ONLINE_RUN}/episodes.parquet",
        run=f"{ONLINE_RUN}/run.json",
    log:
        f"{ONLINE_RUN}/train.log",
    benchmark:
        f"{ONLINE_BENCHMARK}/train.tsv"
    conda:
        CONDA_ENV_GPU
    threads: 1
    resources:
        gpu=1,
    params:
        sac=online_params,
        seeds=lambda wc: ",".join(str(s) for s in config["online"]["seeds"]),
        resume_dir="results/resume/online/{env}/{variant}",
        progress=f"{ONLINE_RUN}/progress.json",
    shell:
        "python -m seemrl train-online --env-id {wildcards.env} --params '{params.sac}' --seeds {params.seeds}"
        " --label env={wildcards.env} --label variant={wildcards.variant}"
        " --resume-dir {params.resume_dir} --progress {params.progress}"
        " --checkpoints {output.checkpoints} --metrics {output.metrics} --evaluations {output.evaluations}"
        " --episodes {output.episodes} --run {output.run} > {log} 2>&1"


rule report_online:
    """The figure of the online SAC runs: Q and return over environment steps."""
    input:
        code=code("report/plots/online.py", "report/plots/style.py"),
        metrics=online_paths("metrics.parquet"),
        runs=online_paths("run.json"),
    output:
        report("results/report/online_sac.png", caption="../report/online_sac.rst", category="Online SAC"),
    log:
        "results/logs/report_online.log",
    benchmark:
        "results/benchmarks/report_online.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl report-online --metrics {input.metrics} --runs {input.runs} --out {output} > {log} 2>&1"
