# Cost: every job's measured wall time x GPUs (its `benchmark:` file) against the GPU-hour estimate
# of the same jobs (safelora.cost, safelora.gpu_hours), per rule: a table for the report.


def benchmark_files():
    """The `benchmark:` file of every job of the grid that writes one (the `benchmark:` directives
    of rules generate, judge, train and base_svd), so the table waits for them and follows them.
    base_svd runs for the models that weight analysis, OrthoMerge or ortho_reg training read it for."""
    judged = {(c.model, c.run, b, g) for c, b in EVALUATIONS for g in config["benchmarks"][b]["graders"] if g in JUDGES}
    trained = grid.training_runs(config)
    svd_models = (
        {c.model for c in ANALYSIS_CHECKPOINTS}
        | {c.model for c in CHECKPOINTS if grid.is_orthomerge(c.run)}
        | {m for m, r in trained if grid.training_recipe(config, m, r).get("ortho_reg")}
    )
    return [
        *(f"{RESULTS}/benchmarks/train/{m}/{r}.tsv" for m, r in trained),
        *(f"{RESULTS}/benchmarks/generate/{c.model}/{c.run}/epoch-{c.epoch}/{b}.tsv" for c, b in EVALUATIONS),
        *(f"{RESULTS}/benchmarks/judge/{m}/{r}/{b}/{g}.tsv" for m, r, b, g in sorted(judged)),
        *(f"{RESULTS}/benchmarks/base_svd/{m}.tsv" for m in sorted(svd_models)),
    ]


def cost_config(wildcards, input):
    """The config the estimate reads. It takes `input`, so it is a derived param: the table reruns
    when a measured job reruns, not on every config edit."""
    return stable_json(config)


rule cost:
    input:
        benchmark_files(),
    output:
        csv=report("<results>/aggregate/cost.csv", caption="report/cost.rst", category="Tables"),
        md="<results>/aggregate/cost.md",
    log:
        "<results>/logs/cost/cost.log",
    params:
        config=cost_config,
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/cost.py"
        " --benchmarks {input} --config {params.config:q} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
