# The response viewer: every checkpoint's responses and verdicts, one row per prompt and sample,
# as a folder of HTML pages in the report (safelora/report/viewer.py, docs/aggregation.md).


def viewer_generations():
    return [f"{RESULTS}/generations/{c.model}/{c.run}/epoch-{c.epoch}/{b}.jsonl" for c, b in EVALUATIONS]


def viewer_verdicts():
    return [path for c, b in EVALUATIONS for path in verdict_files(c.model, c.run, c.epoch, b)]


def viewer_items():
    evaluated = {b for _, b in EVALUATIONS}
    return [f"{RESULTS}/data/bench/{b}.jsonl" for b in config["benchmarks"] if b in evaluated]


rule viewer:
    input:
        generations=viewer_generations(),
        verdicts=viewer_verdicts(),
        benchmark_items=viewer_items(),
        meta="<results>/aggregate/runs_meta.json",
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
        version=config["versions"]["aggregate"],
    # reads every generation file once; one file and its verdicts are in memory at a time
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/viewer.py"
        " --generations {input.generations} --verdicts {input.verdicts} --items {input.benchmark_items}"
        " --runs-meta {input.meta} --benchmarks {input.benchmarks} --out {output} > {log} 2>&1"
