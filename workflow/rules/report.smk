# Tables and figures from the analysis outputs; plotting never retrains (showyourwork style).


rule report_tables:
    """Per-seed and per-cell tables of every run (CSV and Markdown)."""
    input:
        code=code("report/__init__.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        summary=report("results/report/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown="results/report/summary.md",
        seeds="results/report/seeds.csv",
    log:
        "results/logs/report_tables.log",
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl report-tables --seem {input.seem} --runs {input.runs}"
        " --summary {output.summary} --markdown {output.markdown} --seeds {output.seeds} > {log} 2>&1"


rule report_figure:
    """Figures of SEEM and Q over training, and of SEEM against the discount factor."""
    input:
        code=code("report/__init__.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        seem_q=report("results/report/seem_q.png", caption="../report/seem_q.rst", category="SEEM and Q"),
        gamma=report("results/report/seem_vs_gamma.png", caption="../report/seem_vs_gamma.rst", category="SEEM and Q"),
    log:
        "results/logs/report_figure.log",
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl report-figure --seem {input.seem} --runs {input.runs} --out {output.seem_q}"
        " --seem-vs-gamma {output.gamma} > {log} 2>&1"
