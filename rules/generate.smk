# Generation per (checkpoint, benchmark) with vLLM (GPU) or transformers (CPU); LoRA served unmerged.
# One job per output keeps staleness exact; the jobs share one engine per base on a node
# (safelora.evaluation.engines), and on SLURM the group below runs several stale jobs of a (model, benchmark)
# in one allocation on that engine (profiles/slurm: group-components, cores; docs/engines.md).


rule generate:
    input:
        unpack(checkpoint_inputs),
        prompts="<results>/data/bench/{benchmark}.jsonl",
    output:
        "<results>/generations/{model}/{run}/epoch-{epoch}/{benchmark}.jsonl",
    log:
        "<results>/logs/generate/{model}/{run}/epoch-{epoch}/{benchmark}.log",
    benchmark:
        "<results>/benchmarks/generate/{model}/{run}/epoch-{epoch}/{benchmark}.tsv"
    params:
        checkpoint=checkpoint_args,
        trained=checkpoint_state,  # `as trained`, or the checkpoint file changed since (not in the command)
        settings=generation_args,  # --backend --batch-size --sampling --model-settings
        version=config["versions"]["generate"],
    group:
        "generate-{model}-{benchmark}"  # shared engine per (model, benchmark) group job (docs/engines.md)
    threads: 8  # vLLM tokenization and detokenization
    # gpu: one per vLLM tensor-parallel rank, config.yaml `models.<model>.tensor_parallel`.
    # runtime: the estimate for (model size, benchmark) x 1.5 (safelora.gpu_hours.generate_runtime);
    # a job past it resumes by chunks on retry.
    resources:
        gpu=generation_gpus,
        mem_mb=64000,
        runtime=generate_runtime,
    conda:
        "../envs/vllm.yaml"
    # --engine-idle-s is not a param: changing how long an idle engine waits reruns nothing.
    shell:
        f"python {SCRIPTS}/generate.py"
        " {params.checkpoint} --items {input.prompts} {params.settings}"
        " --mem-mb {resources.mem_mb} --out {output}"
        f" --engine-idle-s {config['generation']['engine_idle_s']} > {{log}} 2>&1"
