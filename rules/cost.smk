# Cost: every job's measured wall time x GPUs (its `benchmark:` file) against the GPU-hour estimate
# of the same jobs (safelora.cost, safelora.gpu_hours), per rule: a table for the report.


rule cost:
    input:
        benchmark_files(),
    output:
        csv=report("<results>/aggregate/cost.csv", caption="report/cost.rst", category="Tables"),
        md="<results>/aggregate/cost.md",
    log:
        "<results>/logs/cost/cost.log",
    params:
        # the config the estimate reads; a function of `input`, so a derived param: the table reruns
        # when a measured job reruns, not on every config edit
        config=lambda wildcards, input: stable_json(config),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/cost.py"
        " --benchmarks {input} --config {params.config:q} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
