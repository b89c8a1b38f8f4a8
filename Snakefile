# seemrl: data -> X% subsets -> offline training -> SEEM over checkpoints -> report.
# Thin on purpose: stages live in workflow/rules/, logic in the seemrl package.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/online.smk"
include: "workflow/rules/theory.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,
    theory,


rule all:
    """Everything the config asks for: the offline runs and their report, online SAC, the theory experiments."""
    input:
        report_outputs(),
        online_outputs(),
        theory_outputs(),
