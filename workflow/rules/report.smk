# The report: tables, figures and the claims report from whatever runs the config has. Each artefact
# is its own rule, and computing a table never shares a rule with drawing it: a style edit redraws
# only its figure (showyourwork style). Plan.report_outputs() says which artefacts a config makes.


wildcard_constraints:
    # the configured names only: "fig8_profile.csv" is an output of figure fig8, never a figure of its own
    figure=artefact_pattern("totals"),
    table=artefact_pattern("tables"),


rule report_tables:
    """Per-seed and per-cell SEEM summary of every run: divergence, SEEM, Q, norms, scores (CSV and Markdown)."""
    input:
        code=code("report/tables.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        summary=report("results/report/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown="results/report/summary.md",
        seeds="results/report/seeds.csv",
    log:
        "results/logs/report_tables.log",
    benchmark:
        "results/benchmarks/report_tables.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl report-tables --seem {input.seem} --runs {input.runs}"
        " --summary {output.summary} --markdown {output.markdown} --seeds {output.seeds} > {log} 2>&1"


rule report_scores:
    """Per-seed scores of every evaluated run (final, mean of the last 10, best) and all evaluations, labelled."""
    input:
        code=code("report/tables.py", "training/evaluation.py"),
        evaluations=evaluated_run_paths("evaluations.parquet"),
        runs=evaluated_run_paths("run.json"),
    output:
        scores="results/report/scores.csv",
        evaluations="results/report/evaluations.parquet",
    log:
        "results/logs/report_scores.log",
    benchmark:
        "results/benchmarks/report_scores.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl report-scores --evaluations {input.evaluations} --runs {input.runs}"
        " --scores {output.scores} --all-evaluations {output.evaluations} > {log} 2>&1"


rule paper_table:
    """One of the paper's tables from the runs, the paper's numbers beside ours (CSV, Markdown, LaTeX)."""
    input:
        code=code("report/tables.py"),
        scores="results/report/scores.csv",
        paper=paper_results_file(),
    output:
        csv=report("results/report/tables/{table}.csv", caption="../report/paper_table.rst", category="Paper tables"),
        markdown="results/report/tables/{table}.md",
        latex="results/report/tables/{table}.tex",
    log:
        "results/logs/paper_table/{table}.log",
    benchmark:
        "results/benchmarks/paper_table/{table}.tsv"
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: report_artefact("tables", wc.table),
        sources=dataset_sources(),
        caption=lambda wc: caption("tables", wc.table),
    shell:
        "python -m seemrl paper-table --name {wildcards.table} --spec '{params.spec}' --sources '{params.sources}'"
        " --scores {input.scores} --paper {input.paper}"
        " --csv {output.csv} --markdown {output.markdown} --latex {output.latex} > {log} 2>&1"


rule report_totals:
    """Totals of the score over the datasets per line, critic option and X%, and the gain over no normalisation."""
    input:
        code=code("report/tables.py"),
        scores="results/report/scores.csv",
        paper=paper_results_file(),
    output:
        totals="results/report/totals/{figure}.csv",
        profile="results/report/totals/{figure}_profile.csv",
    log:
        "results/logs/report_totals/{figure}.log",
    benchmark:
        "results/benchmarks/report_totals/{figure}.tsv"
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: report_artefact("totals", wc.figure),
    shell:
        "python -m seemrl report-totals --spec '{params.spec}' --scores {input.scores} --paper {input.paper}"
        " --out {output.totals} --profile {output.profile} > {log} 2>&1"


rule plot_totals:
    """The totals against X% (paper Fig. 8, 12), the gain of each critic option (Fig. 9), and per-task panels."""
    input:
        code=code("report/plots/totals.py", "report/plots/style.py"),
        totals="results/report/totals/{figure}.csv",
        profile="results/report/totals/{figure}_profile.csv",
    output:
        png=report("results/report/totals/{figure}.png", caption="../report/totals.rst", category="Paper figures"),
        pdf="results/report/totals/{figure}.pdf",
        tasks=report(
            "results/report/totals/{figure}_tasks.png", caption="../report/totals.rst", category="Paper figures"
        ),
        profiles=report(
            "results/report/totals/{figure}_profiles.png", caption="../report/profiles.rst", category="Paper figures"
        ),
    log:
        "results/logs/plot_totals/{figure}.log",
    benchmark:
        "results/benchmarks/plot_totals/{figure}.tsv"
    conda:
        CONDA_ENV
    params:
        caption=lambda wc: caption("totals", wc.figure),
    shell:
        "python -m seemrl plot-totals --totals {input.totals} --out {output.png} {output.pdf}"
        " --tasks {output.tasks} --profile {input.profile} --profiles {output.profiles} > {log} 2>&1"


rule plot_curves:
    """Learning curves of one dataset: normalised score over gradient steps, mean ± std over seeds."""
    input:
        code=code("report/plots/curves.py", "report/plots/style.py"),
        evaluations="results/report/evaluations.parquet",
    output:
        report("results/report/curves/{dataset}.png", caption="../report/curves.rst", category="Learning curves"),
    log:
        "results/logs/plot_curves/{dataset}.log",
    benchmark:
        "results/benchmarks/plot_curves/{dataset}.tsv"
    conda:
        CONDA_ENV
    params:
        seeds="--seeds" if (config.get("report") or {}).get("seeds_in_curves") else "",
        caption=lambda wc: caption("curves", wc.dataset),
    shell:
        "python -m seemrl plot-curves --evaluations {input.evaluations} --dataset {wildcards.dataset}"
        " {params.seeds} --out {output} > {log} 2>&1"


rule plot_seem_q:
    """SEEM, Q and the critic norm over training for one dataset, a colour per critic option (Fig. 1, 4, 6)."""
    input:
        code=code("report/plots/seem_q.py", "report/plots/style.py"),
        seem=lambda wc: dataset_run_paths(wc.dataset, "seem.parquet"),
        runs=lambda wc: dataset_run_paths(wc.dataset, "run.json"),
    output:
        report("results/report/seem_q/{dataset}.png", caption="../report/seem_q.rst", category="SEEM and Q"),
    log:
        "results/logs/plot_seem_q/{dataset}.log",
    benchmark:
        "results/benchmarks/plot_seem_q/{dataset}.tsv"
    conda:
        CONDA_ENV
    params:
        caption=lambda wc: caption("seem_q", wc.dataset),
    shell:
        "python -m seemrl plot-seem-q --seem {input.seem} --runs {input.runs} --out {output} > {log} 2>&1"


rule plot_growth:
    """Growth of |Q| and the critic's parameter norm after SEEM turns positive, per diverged seed (Fig. 4)."""
    input:
        code=code("report/plots/growth.py", "report/plots/style.py"),
        predictions="results/report/predictions.csv",
        metrics=run_paths("metrics.parquet"),
        runs=run_paths("run.json"),
    output:
        report("results/report/growth.png", caption="../report/growth.rst", category="SEEM and Q"),
    log:
        "results/logs/plot_growth.log",
    benchmark:
        "results/benchmarks/plot_growth.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl plot-growth --metrics {input.metrics} --runs {input.runs}"
        " --predictions {input.predictions} --out {output} > {log} 2>&1"


rule plot_seem_vs_gamma:
    """Normalised SEEM against the discount factor (Fig. 3 left); made when the runs' gamma varies."""
    input:
        code=code("report/plots/seem_q.py", "report/plots/style.py"),
        seem=run_paths("seem.parquet"),
        runs=run_paths("run.json"),
    output:
        report("results/report/seem_vs_gamma.png", caption="../report/seem_vs_gamma.rst", category="SEEM and Q"),
    log:
        "results/logs/plot_seem_vs_gamma.log",
    benchmark:
        "results/benchmarks/plot_seem_vs_gamma.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m seemrl plot-seem-gamma --seem {input.seem} --runs {input.runs} --out {output} > {log} 2>&1"


rule claims:
    """Each checkable claim of the paper against these runs: the paper's number, ours, a verdict, the runs used."""
    input:
        unpack(claims_inputs),
        code=code("report/claims.py", "report/tables.py", "analysis/predictions.py"),
    output:
        csv=report("results/report/claims.csv", caption="../report/claims.rst", category="Claims"),
        markdown="results/report/claims.md",
    log:
        "results/logs/claims.log",
    benchmark:
        "results/benchmarks/claims.tsv"
    conda:
        CONDA_ENV
    params:
        spec=json.dumps(PLAN.report_spec(), sort_keys=True),
        online=json.dumps((config.get("online") or {}).get("variants") or {}, sort_keys=True),
        args=claims_args,
    shell:
        "python -m seemrl report-claims {params.args} --spec '{params.spec}' --online-variants '{params.online}'"
        " --csv {output.csv} --markdown {output.markdown} > {log} 2>&1"
