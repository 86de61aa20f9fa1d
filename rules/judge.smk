# Grading: text graders on CPU, EvalPlus execution in the sandbox, judge models on GPUs.
# Each writes one Verdict file per (checkpoint, benchmark, grader); scoring never regenerates.


rule grade_text:
    input:
        generations=rules.generate.output[0],
        prompts=rules.build_benchmark.output[0],
    output:
        verdict_output("{text_grader}"),
    log:
        "<results>/logs/grade_text/{model}/{run}/epoch-{epoch}/{benchmark}/{text_grader}.log",
    params:
        kind=benchmark_kind,
        version=scorer_version,
    # regex / math-verify over one generation file
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/grade.py"
        " --grader {wildcards.text_grader} --kind {params.kind}"
        " --generations {input.generations} --items {input.prompts} --out {output} > {log} 2>&1"


rule execute_code:
    input:
        generations=rules.generate.output[0],
        prompts=rules.build_benchmark.output[0],
    output:
        plus=verdict_output("evalplus", "plus"),
        base=verdict_output("evalplus", "base"),
    log:
        "<results>/logs/execute_code/{model}/{run}/epoch-{epoch}/{benchmark}.log",
    params:
        settings=execution_settings,  # safelora.settings.Execution
        version=scorer_version,
    threads: 4  # EvalPlus workers (one sandboxed process each)
    # EvalPlus: 164 or 378 problems x 8 samples, 20 s limit each
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/execute_code.py"
        " --settings {params.settings:q} --generations {input.generations} --items {input.prompts}"
        " --out {output.plus} --out-base {output.base} --workers {threads} > {log} 2>&1"


# One judge job per (model, run, benchmark, judge): every checkpoint's generations of the run in,
# one verdict file per checkpoint out, so a judge model loads once per run. A rule's outputs are
# fixed patterns, so each set of checkpoint epochs in the grid has its judge rule
# (`judge_epochs_1to5`, ...; safelora.registry.judge_rule), for the runs with those epochs.
for epochs, runs in JUDGE_RULES.items():

    rule:
        name:
            registry.judge_rule(epochs)
        input:
            unpack(judge_inputs),
        output:
            [verdict_output("{judge}", epoch=epoch) for epoch in epochs],
        log:
            "<results>/logs/judge/{model}/{run}/{benchmark}/{judge}.log",
        benchmark:
            "<results>/benchmarks/judge/{model}/{run}/{benchmark}/{judge}.tsv"
        wildcard_constraints:
            run=_alternatives(runs),
        params:
            settings=judge_settings,  # safelora.settings.JudgeSettings
        threads: JUDGE_THREADS  # 8, or the profile's `set-threads: judge`
        # gpu: config.yaml `judges.<judge>.tensor_parallel`: Llama-Guard-3-8B 1; Qwen2.5-32B-Instruct 2.
        # runtime: the estimate for (judge, benchmark) over the run's checkpoints x 1.5
        # (safelora.gpu_hours.judge_runtime).
        resources:
            gpu=judge_gpus,
            mem_mb=64000,
            runtime=judge_runtime,
        conda:
            "../envs/vllm.yaml"
        shell:
            f"python {SCRIPTS}/judge.py"
            " --settings {params.settings:q} --generations {input.generations} --items {input.prompts}"
            " --fallback {input.fallback} --mem-mb {resources.mem_mb} --out {output} > {log} 2>&1"
