# Aggregation: the results table (with bootstrap intervals) and the paper's figures.
# Reads only score summaries and weight-analysis tables, never generations.


rule describe_grid:
    output:
        meta="<results>/aggregate/runs_meta.json",
        expected="<results>/aggregate/expected.json",
        benchmarks="<results>/aggregate/benchmarks.json",
    log:
        "<results>/logs/describe_grid/describe_grid.log",
    params:
        meta=runs_meta_json,
        expected=expected_checkpoints,
        benchmarks=benchmarks_json,
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/write_json.py"
        " --kind runs_meta --json {params.meta:q} --out {output.meta} > {log} 2>&1"
        f" && python {SCRIPTS}/write_json.py"
        " --kind expected --json {params.expected:q} --out {output.expected} >> {log} 2>&1"
        f" && python {SCRIPTS}/write_json.py"
        " --kind benchmarks --json {params.benchmarks:q} --out {output.benchmarks} >> {log} 2>&1"


rule aggregate:
    input:
        # describe_grid's outputs as paths, not `rules.describe_grid.output`: with a rules reference
        # Snakemake 9.27.1 hashes the 900-file score list once per file (rules.py:906), 1.6 M calls.
        scores=all_score_files(),
        meta="<results>/aggregate/runs_meta.json",
        expected="<results>/aggregate/expected.json",
        benchmarks="<results>/aggregate/benchmarks.json",
    output:
        csv=report("<results>/aggregate/results.csv", caption="report/results.rst", category="Tables"),
        md="<results>/aggregate/results.md",
        missing=report("<results>/aggregate/missing.txt", caption="report/missing.rst", category="Tables"),
        agreement=report("<results>/aggregate/agreement.csv", caption="report/agreement_table.rst", category="Tables"),
    log:
        "<results>/logs/aggregate/aggregate.log",
    params:
        bootstrap=stage_settings(settings.Bootstrap),
        version=lookup(dpath="versions/aggregate", within=config),
    # results table with 2,000 bootstrap resamples
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/aggregate.py"
        " --scores {input.scores} --runs-meta {input.meta}"
        " --expected {input.expected} --benchmarks {input.benchmarks} --bootstrap {params.bootstrap:q} --out-csv {output.csv} --out-md {output.md}"
        " --out-missing {output.missing} --out-agreement {output.agreement} > {log} 2>&1"


rule figure:
    input:
        unpack(figure_inputs),
    output:
        report("<results>/figures/{figure}.png", caption="report/figure.rst", category="Figures"),
    log:
        "<results>/logs/figure/{figure}.log",
    params:
        data=figure_data,
        version=lookup(dpath="versions/aggregate", within=config),
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/plot.py"
        " --figure {wildcards.figure} --runs-meta {input.meta} --benchmarks {input.benchmarks} {params.data}"
        " --out {output} > {log} 2>&1"
