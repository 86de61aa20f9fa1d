# Grading: text graders on CPU, EvalPlus execution in the sandbox, judge models on GPUs.
# Each writes one Verdict file per (checkpoint, benchmark, grader); scoring never regenerates.


rule grade_text:
    input:
        generations="<results>/generations/{model}/{run}/epoch-{epoch}/{benchmark}.jsonl",
        prompts="<results>/data/bench/{benchmark}.jsonl",
    output:
        verdict_output("{text_grader}"),
    log:
        "<results>/logs/grade_text/{model}/{run}/epoch-{epoch}/{benchmark}/{text_grader}.log",
    params:
        kind=benchmark_kind,
        version=grader_version,
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
        generations="<results>/generations/{model}/{run}/epoch-{epoch}/{benchmark}.jsonl",
        prompts="<results>/data/bench/{benchmark}.jsonl",
    output:
        plus=verdict_output("evalplus", "plus"),
        base=verdict_output("evalplus", "base"),
    log:
        "<results>/logs/execute_code/{model}/{run}/epoch-{epoch}/{benchmark}.log",
    params:
        settings=execution_args,  # --dataset --problems --timeout --memory-mb
        version=grader_version,
    threads: 4  # EvalPlus workers (one sandboxed process each)
    # EvalPlus: 164 or 378 problems x 8 samples, 20 s limit each
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/execute_code.py"
        " {params.settings} --generations {input.generations} --items {input.prompts}"
        " --out {output.plus} --out-base {output.base} --workers {threads} > {log} 2>&1"


rule judge:
    input:
        unpack(judge_inputs),
    output:
        verdict_output("{judge}"),
    log:
        "<results>/logs/judge/{model}/{run}/epoch-{epoch}/{benchmark}/{judge}.log",
    benchmark:
        "<results>/benchmarks/judge/{model}/{run}/epoch-{epoch}/{benchmark}/{judge}.tsv"
    params:
        settings=judge_args,  # --judge --kind --backend [--fallback]
    group:
        "judge-{judge}"  # one judge engine for the group's jobs (safelora.evaluation.engines, docs/engines.md)
    threads: 8
    # gpu: config.yaml `judges.<judge>.tensor_parallel`: Llama-Guard-3-8B 1; Qwen2.5-32B-Instruct 2.
    # runtime: the estimate for (judge, benchmark) x 1.5 (safelora.gpu_hours.judge_runtime).
    resources:
        gpu=judge_gpus,
        mem_mb=64000,
        runtime=judge_runtime,
    conda:
        "../envs/vllm.yaml"
    # --engine-idle-s is not a param: changing how long an idle engine waits reruns nothing.
    shell:
        f"python {SCRIPTS}/judge.py"
        " {params.settings} --generations {input.generations} --items {input.prompts}"
        " --mem-mb {resources.mem_mb} --out {output}"
        f" --engine-idle-s {config['generation']['engine_idle_s']} > {{log}} 2>&1"
