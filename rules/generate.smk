# Generation per (checkpoint, benchmark) with vLLM (GPU) or transformers (CPU); LoRA served unmerged.
# One job per output keeps staleness exact; each job starts its own engine and frees it when it ends.


# A prompt longer than the model's context fails every attempt alike: checked once per (model,
# benchmark) with the tokenizer alone, in a job that is never retried (the profiles retry every
# other failure); generation waits for it (docs/errors.md).


rule check_context:
    input:
        base_model_files,
        prompts=rules.build_benchmark.output[0],
    output:
        "<results>/data/context/{model}/{benchmark}.json",
    log:
        "<results>/logs/check_context/{model}/{benchmark}.log",
    params:
        base=base_model_ref,
        settings=context_settings,  # safelora.settings.ContextSettings
    retries: 0
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/vllm.yaml"
    shell:
        f"python {SCRIPTS}/check_context.py"
        " --base {params.base} --settings {params.settings:q} --items {input.prompts} --out {output} > {log} 2>&1"


rule generate:
    input:
        unpack(checkpoint_inputs),
        prompts=rules.build_benchmark.output[0],
        context=rules.check_context.output[0],
    output:
        "<results>/generations/{model}/{run}/epoch-{epoch}/{benchmark}.jsonl",
    log:
        "<results>/logs/generate/{model}/{run}/epoch-{epoch}/{benchmark}.log",
    benchmark:
        "<results>/benchmarks/generate/{model}/{run}/epoch-{epoch}/{benchmark}.tsv"
    params:
        checkpoint=checkpoint_model,
        trained=checkpoint_state,  # `as trained`, or the checkpoint file changed since (not in the command)
        settings=generation_settings,  # safelora.settings.GenerationSettings
        version=lookup(dpath="versions/generate", within=config),
    threads: 8  # vLLM tokenization and detokenization
    # gpu: one per vLLM tensor-parallel rank, config.yaml `models.<model>.tensor_parallel`.
    # runtime: the estimate for (model size, benchmark) x 1.5 (safelora.gpu_hours.generate_runtime);
    # a job past it resumes by chunks on retry.
    resources:
        gpu=model_gpus,
        mem_mb=64000,
        runtime=generate_runtime,
    conda:
        "../envs/vllm.yaml"
    shell:
        f"python {SCRIPTS}/generate.py"
        " {params.checkpoint} --items {input.prompts} --settings {params.settings:q}"
        " --mem-mb {resources.mem_mb} --out {output} > {log} 2>&1"
