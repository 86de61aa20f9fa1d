# Scoring: verdicts -> one score summary per (checkpoint, benchmark), per-problem values kept,
# with the generations' truncation counts beside them.


rule score:
    input:
        verdicts=score_inputs,
        benchmark_items=rules.build_benchmark.output[0],  # the verdicts must cover its items x n, once each
        generations=rules.generate.output[0],  # truncation counts
    output:
        "<results>/scores/{model}/{run}/epoch-{epoch}/{benchmark}.json",
    log:
        "<results>/logs/score/{model}/{run}/epoch-{epoch}/{benchmark}.log",
    params:
        settings=score_settings,  # safelora.settings.ScoreSettings
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/score.py"
        " --model {wildcards.model} --run {wildcards.run}"
        " --epoch {wildcards.epoch} --benchmark {wildcards.benchmark} --settings {params.settings:q}"
        " --verdicts {input.verdicts} --generations {input.generations}"
        " --items {input.benchmark_items} --out {output} > {log} 2>&1"
