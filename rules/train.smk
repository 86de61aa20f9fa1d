# Safety SFT (Section 4.1, Appendix A.5): full fine-tuning (DeepSpeed ZeRO) and LoRA, one CLI.
# The recipe file is the run's resolved hyperparameters; editing one run's settings changes only
# its recipe and so reruns only its training and what depends on it.


rule write_recipe:
    output:
        "<results>/train/{model}/{run}/recipe.yaml",
    log:
        "<results>/logs/write_recipe/{model}/{run}.log",
    params:
        recipe=recipe_json,
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/write_recipe.py" " --recipe {params.recipe:q} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(train_inputs),
    output:
        manifest="<results>/train/{model}/{run}/manifest.json",
    log:
        "<results>/logs/train/{model}/{run}.log",
    benchmark:
        "<results>/benchmarks/train/{model}/{run}.tsv"
    params:
        base=base_model_ref,
        state=train_state_dir,
        checkpoints=train_checkpoint_dir,
        svd=train_svd_arg,  # derived from the inputs: the SVD is one when the recipe has ortho_reg
        parallelism=train_parallelism,
    threads: 8  # dataloader workers and tokenization; 8 cores per job, not per GPU
    # gpu: the paper's count (Appendix A.5) from config.yaml `training.<method>.per_model.<size>.gpus`.
    # mem_mb: config.yaml `training.<method>.per_model.<size>.mem_mb`, by default 256 GB, sized for the
    # data_parallel option, where every rank loads the bf16 weights (14B full: 8 ranks x 28 GB = 224 GB).
    # runtime: a longer run is preempted cleanly (SIGTERM -> save -> exit 75 -> retry resumes).
    resources:
        gpu=train_gpus,
        nodes=1,
        mem_mb=train_mem_mb,
        runtime=1440,
    conda:
        "../envs/train.yaml"
    shell:
        f"bash {SCRIPTS}/launch_train.sh"
        " {resources.gpu} {resources.nodes} {params.parallelism}"
        f" {SCRIPTS}/train.py"
        " --recipe {input.recipe} --train-data {input.data} --base {params.base}"
        " --state-dir {params.state} --checkpoint-dir {params.checkpoints} {params.svd}"
        " --mem-mb {resources.mem_mb} --manifest {output.manifest} > {log} 2>&1"
