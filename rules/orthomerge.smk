# OrthoMerge (Section 5.2): project a LoRA checkpoint's factors away from the base weights' top-k
# singular directions; the result is a PEFT adapter of the same rank, evaluated like any checkpoint.


rule orthomerge:
    input:
        manifest=orthomerge_source_manifest,
        svd="<results>/analysis/svd/{model}.safetensors",
    output:
        directory("<results>/orthomerge/{model}/{run}/epoch-{epoch}"),
    log:
        "<results>/logs/orthomerge/{model}/{run}/epoch-{epoch}.log",
    params:
        settings=orthomerge_settings,
        source=orthomerge_source_args,
        trained=orthomerge_source_state,  # `as trained`, or the source file changed since (not in the command)
        version=config["versions"]["orthomerge"],
    # LoRA factors and a cached rank-64 SVD: CPU only
    resources:
        mem_mb=16000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/orthomerge.py"
        " {params.source} --svd {input.svd} {params.settings} --out {output} > {log} 2>&1"
