# Data: the demo's base model from its GGUF file, the safety training set, benchmark items.


rule prepare_model:
    output:
        directory("<results>/models/{model}/base"),
    log:
        "<results>/logs/prepare_model/{model}.log",
    params:
        source=model_source,
        script=workflow_script("prepare_model.py"),
    # GGUF -> transformers (demo model only)
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        "python {params.script} --source {params.source:q} --out {output} > {log} 2>&1"


rule build_train_set:
    input:
        base=base_model_files,
        data=train_data_files,
    output:
        "<results>/data/train/{model}.jsonl",
    log:
        "<results>/logs/build_train_set/{model}.log",
    params:
        tokenizer=base_model_ref,
        source=train_data_source,
        think=config["training_data"]["think"],
        version=config["versions"]["data"],
        script=workflow_script("build_train_set.py"),
    # tokenizer + chat template over ~1,000 DirectRefusal rows
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        "python {params.script} --tokenizer {params.tokenizer} --source {params.source:q}"
        " --think {params.think:q} --out {output} > {log} 2>&1"


rule build_benchmark:
    input:
        data=benchmark_data_files,
    output:
        "<results>/data/bench/{benchmark}.jsonl",
    log:
        "<results>/logs/build_benchmark/{benchmark}.log",
    params:
        spec=benchmark_spec,
        problems=benchmark_problems,
        version=config["versions"]["data"],
        script=workflow_script("build_benchmark.py"),
    # reads a CSV/JSONL (GPQA: the hub) into BenchmarkItem records
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/eval.yaml"
    shell:
        "python {params.script} --name {wildcards.benchmark} --spec {params.spec:q} --problems {params.problems}"
        " --out {output} > {log} 2>&1"
