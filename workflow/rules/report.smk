# Tables and figures from the analysis outputs; plotting never retrains (showyourwork style).


rule report_tables:
    input:
        code=code("report.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        summary=report("results/report/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown="results/report/summary.md",
        seeds="results/report/seeds.csv",
    conda:
        CONDA_ENV
    log:
        "results/logs/report_tables.log",
    shell:
        "python -m seemrl report-tables --seem {input.seem} --runs {input.runs}"
        " --summary {output.summary} --markdown {output.markdown} --seeds {output.seeds} > {log} 2>&1"


rule report_figure:
    input:
        code=code("report.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        seem_q=report("results/report/seem_q.png", caption="../report/seem_q.rst", category="SEEM and Q"),
        gamma=report("results/report/seem_vs_gamma.png", caption="../report/seem_vs_gamma.rst", category="SEEM and Q"),
    conda:
        CONDA_ENV
    log:
        "results/logs/report_figure.log",
    shell:
        "python -m seemrl report-figure --seem {input.seem} --runs {input.runs} --out {output.seem_q}"
        " --seem-vs-gamma {output.gamma} > {log} 2>&1"


rule predictions:
    input:
        code=code("analysis/predictions.py"),
        seem=run_paths("seem.parquet"),
        metrics=run_paths("metrics.parquet"),
        runs=run_paths("run.json"),
    output:
        csv=report("results/report/predictions.csv", caption="../report/predictions.rst", category="Tables"),
        markdown="results/report/predictions.md",
    params:
        run_dirs=[RUN.format(**c) for c in cells()],
    conda:
        CONDA_ENV
    log:
        "results/logs/predictions.log",
    shell:
        "python -m seemrl predictions --runs {params.run_dirs} --csv {output.csv} --markdown {output.markdown}"
        " > {log} 2>&1"
