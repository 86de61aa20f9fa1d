# Weight analysis (Figure 1, Figure 4): a cached truncated SVD per base model, then per checkpoint
# the stable rank of dW and the four alignment metrics, read tensor by tensor.


rule base_svd:
    input:
        base=base_model_files,
    output:
        "<results>/analysis/svd/{model}.safetensors",
    log:
        "<results>/logs/base_svd/{model}.log",
    benchmark:
        "<results>/benchmarks/base_svd/{model}.tsv"
    params:
        base=base_model_ref,
        rank=lookup(dpath="analysis/svd_rank", within=config),
        modules=" ".join(config["analysis"]["modules"]),
        version=lookup(dpath="versions/analysis", within=config),
    threads: 8  # reading safetensors shards while the GPU factorizes
    # gpu: the SVDs run on cuda; `gpu: 0` in a profile's set-resources runs them on CPU.
    # truncated SVD of every base weight, tensor by tensor (14B: 48 layers)
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=240,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/base_svd.py"
        " --base {params.base} --out {output} --k {params.rank}"
        " --modules {params.modules} --device $( [ {resources.gpu} -gt 0 ] && echo cuda || echo cpu ) > {log} 2>&1"


rule analyze_weights:
    input:
        manifest=analysis_manifest,
        base=base_model_files,
        svd=rules.base_svd.output[0],
    output:
        "<results>/analysis/weights/{model}/{run}/epoch-{epoch}.csv",
    log:
        "<results>/logs/analyze_weights/{model}/{run}/epoch-{epoch}.log",
    params:
        base=base_model_ref,
        checkpoint=analysis_checkpoint,
        trained=checkpoint_state,  # `as trained`, or the checkpoint file changed since (not in the command)
        norm=lookup(dpath="analysis/norm", within=config),
        top=lookup(dpath="analysis/top_k", within=config),
        version=lookup(dpath="versions/analysis", within=config),
    threads: 8
    # torch.linalg on CPU, one tensor at a time
    resources:
        mem_mb=32000,
        runtime=240,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/analyze_weights.py"
        " --base {params.base} --checkpoint {params.checkpoint} --svd {input.svd}"
        " --norm {params.norm} --top {params.top} --out {output} > {log} 2>&1"
