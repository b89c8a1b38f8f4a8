"""The report stage: the paper's tables, figures and claims from whatever runs exist.

`tables` computes (per-seed scores, the SEEM summary, the paper's tables with its numbers beside
ours, totals over tasks), `plots` draws (one module per figure, one style for all), `claims`
checks the paper's claims against the runs. Computation and plotting are separate rules, so a
style change never recomputes a table. docs/report.md lists every artefact.
"""
