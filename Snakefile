# Safety alignment of reasoning LLMs with LoRA: the paper's grid as one DAG.
# Run: snakemake --profile profiles/slurm   (cluster)   or   make demo   (CPU demo)

from snakemake.utils import min_version

min_version("9.0")


# The paper's grid unless another config file is given: `--configfile config/demo.yaml` replaces
# config.yaml (a whole config, never merged into it); `--config key=value` overrides either one
# (Snakemake re-applies command-line values over the `configfile:` directive).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/weights.smk"
include: "rules/orthomerge.smk"
include: "rules/generate.smk"
include: "rules/judge.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"
include: "rules/viewer.smk"
include: "rules/cost.smk"
include: "rules/prune.smk"


localrules:
    all,
    write_recipe,
    describe_grid,
    prune,
    check_context,
    grade_text,
    score,
    aggregate,
    cost,
    figure,


rule all:
    input:
        final_targets(),
