# The response viewer: every checkpoint's responses and verdicts, one row per prompt and sample,
# as a folder of HTML pages in the report (safelora/report/viewer.py, docs/aggregation.md).


rule viewer:
    input:
        generations=viewer_generations(),
        verdicts=viewer_verdicts(),
        benchmark_items=viewer_items(),
        meta="<results>/aggregate/runs_meta.json",
        expected="<results>/aggregate/expected.json",
        benchmarks="<results>/aggregate/benchmarks.json",
    output:
        report(
            directory("<results>/viewer"),
            htmlindex="index.html",
            caption="report/viewer.rst",
            category="Responses",
        ),
    log:
        "<results>/logs/viewer/viewer.log",
    params:
        results=lambda wildcards, input: str(Path(input.expected).parents[1]),  # results/<experiment>
        stems=viewer_verdict_stems(),
        version=config["versions"]["aggregate"],
    # reads every generation file once; one file and its verdicts are in memory at a time
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/eval.yaml"
    # the script finds the files at their paths under {params.results}: on the paper grid their
    # names alone would pass the 128 KiB limit of one shell command (Linux MAX_ARG_STRLEN)
    shell:
        f"python {SCRIPTS}/viewer.py"
        " --results {params.results} --expected {input.expected} --verdict-stems {params.stems:q}"
        " --runs-meta {input.meta} --benchmarks {input.benchmarks} --out {output} > {log} 2>&1"
