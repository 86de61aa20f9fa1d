# OrthoMerge (Section 5.2): project a LoRA checkpoint's factors away from the base weights' top-k
# singular directions; the result is a PEFT adapter of the same rank, evaluated like any checkpoint.


rule orthomerge:
    input:
        manifest=orthomerge_source_manifest,
        svd=rules.base_svd.output[0],
    output:
        directory("<results>/orthomerge/{model}/{run}/epoch-{epoch}"),
    log:
        "<results>/logs/orthomerge/{model}/{run}/epoch-{epoch}.log",
    params:
        settings=orthomerge_settings,  # safelora.settings.OrthoMerge
        adapter=orthomerge_source_adapter,
        trained=orthomerge_source_state,  # `as trained`, or the source file changed since (not in the command)
        version=lookup(dpath="versions/orthomerge", within=config),
    # LoRA factors and a cached rank-64 SVD: CPU only
    resources:
        mem_mb=16000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/orthomerge.py"
        " --adapter {params.adapter} --svd {input.svd} --settings {params.settings:q} --out {output} > {log} 2>&1"
