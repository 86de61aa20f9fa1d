# Disk: once every evaluation and analysis of a run has finished, drop its trainer state and the
# epoch checkpoints the config does not keep (config `prune`). Pruned checkpoints are gone: a
# later change that needs them (a new decoding setting) retrains the run.


rule prune:
    input:
        unpack(prune_inputs),
    output:
        "<results>/train/{model}/{run}/pruned.json",
    log:
        "<results>/logs/prune/{model}/{run}.log",
    params:
        state=train_state_dir,
        keep=prune_keep,
        trainer_state=prune_state_flag,
    # deletes pruned checkpoints and trainer state
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/prune.py"
        " --manifest {input.manifest} --state-dir {params.state}"
        " --keep-epochs {params.keep:q} {params.trainer_state} --out {output} > {log} 2>&1"
