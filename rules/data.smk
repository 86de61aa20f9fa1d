# Data: the demo's base model from its GGUF file, the safety training set, benchmark items.


rule prepare_model:
    output:
        directory("<results>/models/{model}/base"),
    log:
        "<results>/logs/prepare_model/{model}.log",
    params:
        source=model_source,
    # GGUF -> transformers (demo model only)
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/prepare_model.py" " --source {params.source:q} --out {output} > {log} 2>&1"


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
        think=lookup(dpath="training_data/think", within=config),
        format=lookup(dpath="training_data/format", within=config),
        version=lookup(dpath="versions/data", within=config),
    # tokenizer + chat template (or the paper code's string) over ~1,000 DirectRefusal rows
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/train.yaml"
    shell:
        f"python {SCRIPTS}/build_train_set.py"
        " --tokenizer {params.tokenizer} --source {params.source:q}"
        " --think {params.think:q} --format {params.format} --out {output} > {log} 2>&1"


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
        version=lookup(dpath="versions/data", within=config),
    # reads a CSV/JSONL (GPQA: the hub) into BenchmarkItem records
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/eval.yaml"
    shell:
        f"python {SCRIPTS}/build_benchmark.py"
        " --name {wildcards.benchmark} --spec {params.spec:q} --problems {params.problems}"
        " --out {output} > {log} 2>&1"
