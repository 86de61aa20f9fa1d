# Plumbing only: validate the config, build the run grid, define paths and input functions.
# All logic lives in the `safelora` package (src/safelora).

import functools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from safelora import config as grid  # noqa: E402
from safelora import gpu_hours, registry, settings  # noqa: E402
from safelora.evaluation.items import check_local_data  # noqa: E402
from safelora.io import stable_json  # noqa: E402
from safelora.training import published  # noqa: E402

# One schema pass (JSON Schema, then defaults, then cross-checks): a ConfigError names the file and key.
# First what Snakemake's loading loses: a key given twice in a config file (its YAML loader keeps
# the last), and the types of nested `--config` values (it passes them as strings).
grid.check_duplicate_keys(workflow.configfiles)
grid.parse_cli_leaves(config, workflow.config_settings.config)
grid.validate_schema(
    config,
    source=", ".join([*map(str, workflow.configfiles), *(["--config"] if workflow.config_settings.config else [])]),
)
grid.check_config(config)
check_local_data(config, cache=".snakemake/safelora/local-data-checks.json")

# Every output of this config lives under results/<experiment>/, written `<results>` (a Snakemake
# path variable) everywhere. The folder belongs to the config files that first ran in it
# (results/<experiment>/experiment.json, written when a run that is not a dry run starts); other
# config files naming the same experiment are refused.


pathvars:
    results=f"results/{config['experiment']}",


def resolved(path):
    """`path` with `<results>` expanded. Snakemake 9.27.1 expands path variables in every input,
    output and log, those input functions return included, but not in params: a path passed as a
    param, or read while planning, goes through this."""
    return workflow.pathvars.apply(path)


grid.check_experiment_owner(resolved("<results>"), workflow.configfiles)


onstart:
    grid.claim_experiment(resolved("<results>"), workflow.configfiles)


CHECKPOINTS = grid.checkpoints(config)
RUN_NAMES = grid.all_run_names(config)
RUN_EPOCHS = {run: grid.checkpoint_epochs(config, run) for run in RUN_NAMES}
JUDGES = config["judges"]


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "^$"


wildcard_constraints:
    model=_alternatives(config["models"]),
    run=_alternatives(RUN_NAMES),
    epoch=r"\d+",
    benchmark=_alternatives(config["benchmarks"]),
    judge=_alternatives(JUDGES),
    text_grader=_alternatives(registry.text_graders()),
    figure=_alternatives(registry.FIGURES),


# ------------------------------------------------------------------------------------------
# Input functions
#
# A rule names a config value the same for every job with `lookup(dpath="a/b", within=config)`
# (evaluated once, when the rule is parsed), another rule's output with `rules.<name>.output`, and
# anything that depends on the wildcards with a short function of `wildcards` below. Not
# `lookup(dpath="a/{b}/c")`: that calls dpath per job, which walks the whole config each time
# (2,004 such calls were 53 % of a profiled paper-grid dry run, docs/cluster.md).


# ------------------------------------------------------------------------------------------
# Workflow scripts


# Shell commands name a script with an f-string, `f"python {SCRIPTS}/<name>"`, joined to a plain
# string that holds the `{input}`-style fields: the path is filled in when the rule is parsed, so
# it is neither a param nor a per-job field (no per-job expansion: docs/cluster.md, planning cost)
# and `snakemake --lint` sees no outside variable. A path names code, not data, so it is no rerun
# trigger: `code` is not among the profiles' rerun-triggers, so a checkout in another folder reruns
# nothing; code changes rerun a stage through `versions:`.
SCRIPTS = str(Path(workflow.basedir) / "workflow_scripts")


# ------------------------------------------------------------------------------------------
# Models and checkpoints


def base_model(model):
    """What transformers/vLLM load for the base model: a hub id or a local folder."""
    source = config["models"][model]["source"]
    if "gguf" in source:
        return resolved(f"<results>/models/{model}/base")
    return source.get("hub") or source["path"]


def base_model_input(model):
    """The base model as a Snakemake input (only when the workflow itself builds it)."""
    return [f"<results>/models/{model}/base"] if "gguf" in config["models"][model]["source"] else []


def base_model_ref(wildcards):
    return base_model(wildcards.model)


def base_model_files(wildcards):
    return base_model_input(wildcards.model)


def model_source(wildcards):
    return stable_json(config["models"][wildcards.model]["source"])


def train_data_source(wildcards):
    data = config["training_data"]
    return stable_json(data["sources"][data["source"]])


def train_data_files(wildcards):
    """The local training data file (none for a hub source): an input, so editing it reruns what it feeds."""
    data = config["training_data"]
    return list(grid.local_files(data["sources"][data["source"]]).values())


def train_manifest(model, run):
    return f"<results>/train/{model}/{run}/manifest.json"


@functools.cache
def recipe(model, run):
    return grid.training_recipe(config, model, run)


def recipe_json(wildcards):
    return stable_json(recipe(wildcards.model, wildcards.run))


@functools.cache
def run_folder(kind, model, run):
    """`results/<experiment>/<kind>/{model}/{run}/<recipe hash>`: a changed recipe gets a fresh
    folder. Not an output (trainer state and epoch checkpoints outlive a failed job), so a param."""
    return resolved(f"<results>/{kind}/{model}/{run}/{grid.recipe_hash(recipe(model, run))}")


def train_state_dir(wildcards):
    """Resumable trainer state: not an output, so Snakemake never deletes it before a rerun."""
    return run_folder("state", wildcards.model, wildcards.run)


def train_checkpoint_dir(wildcards):
    return run_folder("checkpoints", wildcards.model, wildcards.run)


def trained_checkpoint(model, run, epoch):
    """Folder of a trained run's epoch (full model or LoRA adapter), known at planning time."""
    return f"{run_folder('checkpoints', model, run)}/epoch-{epoch}"


def train_inputs(wildcards):
    inputs = {
        "recipe": f"<results>/train/{wildcards.model}/{wildcards.run}/recipe.yaml",
        "data": f"<results>/data/train/{wildcards.model}.jsonl",
        "base": base_model_input(wildcards.model),
    }
    if recipe(wildcards.model, wildcards.run)["safelora"]["ortho_reg"]:
        inputs["svd"] = svd_input(wildcards.model)
    return inputs


def train_svd_arg(wildcards, input):
    """`--svd <file>` for a run with the orthogonality regularizer (its SVD is then an input)."""
    return f"--svd {input.svd}" if hasattr(input, "svd") else ""


def train_gpus(wildcards):
    """The paper's GPU count for this run (Appendix A.5); profiles may override `gpu`."""
    return recipe(wildcards.model, wildcards.run)["safelora"]["gpus"]


def train_mem_mb(wildcards):
    """Host memory of a training job: `training.<method>.per_model.<size>.mem_mb` (32B under ZeRO-3
    offload keeps its fp32 master weights and Adam moments in host memory)."""
    run = grid.run_by_name(config, wildcards.run)
    size = config["models"][wildcards.model]["size"]
    return grid.method_settings(config, run)["per_model"][size]["mem_mb"]


def train_parallelism(wildcards):
    """`model_split` (one process over the job's GPUs) or `data_parallel` (one per GPU)."""
    return recipe(wildcards.model, wildcards.run)["safelora"]["parallelism"]


def model_gpus(wildcards):
    """One GPU per tensor-parallel rank of the evaluated model."""
    return config["models"][wildcards.model]["tensor_parallel"]


def checkpoint_inputs(wildcards):
    """Files a job needs to load checkpoint (model, run, epoch)."""
    model, run = wildcards.model, wildcards.run
    inputs = {"base": base_model_input(model)}
    if grid.is_orthomerge(run):
        inputs["adapter"] = f"<results>/orthomerge/{model}/{run}/epoch-{wildcards.epoch}"
    elif run != grid.BASE_RUN:
        inputs["manifest"] = train_manifest(model, run)
    return inputs


@functools.cache
def trained_state(model, run, epoch):
    """`as trained`, or which file of a trained checkpoint changed since its manifest recorded it
    (safelora.training.published): a param of every job that loads the checkpoint, so `snakemake -n`
    lists those jobs when a checkpoint is deleted, overwritten or replaced by an older copy."""
    if run == grid.BASE_RUN or grid.is_orthomerge(run):
        return published.AS_TRAINED
    return published.changes_since_training(
        Path(resolved(train_manifest(model, run))), Path(trained_checkpoint(model, run, epoch))
    )


def checkpoint_state(wildcards):
    return trained_state(wildcards.model, wildcards.run, wildcards.epoch)


def checkpoint_model(wildcards):
    """`--base` (and `--adapter`) naming checkpoint (model, run, epoch) for generation: a param, not
    derived from the inputs, so a changed base model (a hub id is no input) reruns the job."""
    model, run, epoch = wildcards.model, wildcards.run, wildcards.epoch
    if grid.is_orthomerge(run):
        return f"--base {base_model(model)} --adapter {resolved(f'<results>/orthomerge/{model}/{run}/epoch-{epoch}')}"
    if run == grid.BASE_RUN:
        return f"--base {base_model(model)}"
    if recipe(model, run)["safelora"]["method"] == "lora":
        return f"--base {base_model(model)} --adapter {trained_checkpoint(model, run, epoch)}"
    return f"--base {trained_checkpoint(model, run, epoch)}"


# ------------------------------------------------------------------------------------------
# Stage settings: one typed object per job (safelora.settings), passed to the script as JSON


@functools.cache
def stage_settings(kind, *key):
    """`kind.from_config(config, *key)` as JSON, built once per key (900 generate jobs share 12)."""
    return kind.from_config(config, *key).to_json()


def generation_settings(wildcards):
    return stage_settings(settings.GenerationSettings, wildcards.model, wildcards.benchmark)


def context_settings(wildcards):
    return stage_settings(settings.ContextSettings, wildcards.model, wildcards.benchmark)


def execution_settings(wildcards):
    return stage_settings(settings.Execution, wildcards.benchmark)


def judge_settings(wildcards):
    return stage_settings(settings.JudgeSettings, wildcards.judge, wildcards.benchmark)


def score_settings(wildcards):
    return stage_settings(settings.ScoreSettings, wildcards.benchmark)


def orthomerge_settings(wildcards):
    return stage_settings(settings.OrthoMerge, wildcards.run)


# ------------------------------------------------------------------------------------------
# Benchmarks, graders and scores


def benchmark_data_files(wildcards):
    """The benchmark's local data files (none for a hub source): inputs, so editing one reruns what it feeds."""
    return list(grid.local_files(config["benchmarks"][wildcards.benchmark]["source"]).values())


def benchmark_spec(wildcards):
    bench = config["benchmarks"][wildcards.benchmark]
    keys = ("kind", "source", "limit", "prompt_template", "shuffle_seeds", "choice_cleaning", "choice_order")
    spec = {k: v for k, v in bench.items() if k in keys}
    # samples per item: GPQA numbers a question's samples across its shuffle seeds
    return stable_json({**spec, "sampling": {"n": bench["sampling"]["n"]}})


def benchmark_problems(wildcards, input):
    """`benchmarks.<b>.problems`, which build_benchmark checks the built file against. It takes
    `input`, so it is a derived param: a corrected count reruns nothing."""
    return config["benchmarks"][wildcards.benchmark]["problems"]


def benchmark_kind(wildcards):
    return config["benchmarks"][wildcards.benchmark]["kind"]


def scorer_version(wildcards):
    return config["benchmarks"][wildcards.benchmark]["scorer_version"]


def verdict_output(grader, variant=None, epoch="{epoch}"):
    """A verdict file of one (checkpoint, benchmark), as a rule output (named in safelora/registry.py)."""
    stem = registry.verdict_stem(grader, variant)
    return f"<results>/verdicts/{{model}}/{{run}}/epoch-{epoch}/{{benchmark}}/{stem}.jsonl"


def verdict_files(model, run, epoch, benchmark):
    """Verdict files a benchmark's score reads, one per grader and variant (EvalPlus: base and plus)."""
    folder = f"<results>/verdicts/{model}/{run}/epoch-{epoch}/{benchmark}"
    graders = config["benchmarks"][benchmark]["graders"]
    return [f"{folder}/{stem}.jsonl" for grader in graders for stem in registry.verdict_stems(grader)]


def score_inputs(wildcards):
    return verdict_files(wildcards.model, wildcards.run, wildcards.epoch, wildcards.benchmark)


# SLURM runtime (minutes) per job, from the throughput assumptions of the GPU-hour estimate
# (safelora.gpu_hours); a judge job's covers every checkpoint of its run.
GENERATE_RUNTIME = {
    (m, b): gpu_hours.generate_runtime(config, m, b) for m in config["models"] for b in config["benchmarks"]
}
JUDGE_RUNTIME = {
    (j, b, n): gpu_hours.judge_runtime(config, j, b, n)
    for j in JUDGES
    for b in config["benchmarks"]
    for n in {len(epochs) for epochs in RUN_EPOCHS.values()}
}


def generate_runtime(wildcards):
    return GENERATE_RUNTIME[wildcards.model, wildcards.benchmark]


def judge_runtime(wildcards):
    return JUDGE_RUNTIME[wildcards.judge, wildcards.benchmark, len(RUN_EPOCHS[wildcards.run])]


# A judge job covers every checkpoint of one (model, run, benchmark): the runs grouped by their
# checkpoints' epochs, one judge rule per group (rules/judge.smk, registry.judge_rule).
JUDGE_RULES = {}
for _run, _epochs in RUN_EPOCHS.items():
    JUDGE_RULES.setdefault(tuple(_epochs), []).append(_run)


# A profile's `set-resources` and `set-threads` name the judge rules by their family, `judge`
# (profiles/local: no GPU, one thread), since the rules are named after the grid's epoch sets.
def _profile_value(value):
    """A profile's resource or thread count as a plain value (Snakemake wraps parsed ones in `Resource`)."""
    return getattr(value, "value", value)


_JUDGE_RESOURCES = workflow.resource_settings.overwrite_resources.get("judge") or {}
JUDGE_PROFILE_GPUS = _profile_value(_JUDGE_RESOURCES["gpu"]) if "gpu" in _JUDGE_RESOURCES else None
JUDGE_THREADS = _profile_value(workflow.resource_settings.overwrite_threads.get("judge", 8))


def _run_files(wildcards, kind, name):
    """`<results>/<kind>/{model}/{run}/epoch-<e>/<name>` for every checkpoint epoch of the run."""
    folder = f"<results>/{kind}/{wildcards.model}/{wildcards.run}"
    return [f"{folder}/epoch-{epoch}/{name}" for epoch in RUN_EPOCHS[wildcards.run]]


def judge_inputs(wildcards):
    """Every checkpoint's generations of the run, and a fallback judge's per-checkpoint verdicts of
    the grader it backs up (it only judges samples that grader did not pass: Qwen for AIME), in
    the order of the judge rule's outputs."""
    fallback = JUDGES[wildcards.judge].get("fallback_for")
    return {
        "generations": _run_files(wildcards, "generations", f"{wildcards.benchmark}.jsonl"),
        "prompts": f"<results>/data/bench/{wildcards.benchmark}.jsonl",
        "fallback": _run_files(wildcards, "verdicts", f"{wildcards.benchmark}/{fallback}.jsonl") if fallback else [],
    }


def judge_gpus(wildcards):
    if JUDGE_PROFILE_GPUS is not None:
        return JUDGE_PROFILE_GPUS
    return config["judges"][wildcards.judge]["tensor_parallel"]


def score_file(c, benchmark):
    return f"<results>/scores/{c.model}/{c.run}/epoch-{c.epoch}/{benchmark}.json"


EVALUATIONS = grid.evaluations(config)


def all_score_files():
    return [score_file(c, b) for c, b in EVALUATIONS]


def expected_checkpoints(wildcards):
    benchmarks = {}
    for c, b in EVALUATIONS:
        benchmarks.setdefault(c, []).append(b)
    return stable_json(
        [{"model": c.model, "run": c.run, "epoch": c.epoch, "benchmarks": names} for c, names in benchmarks.items()]
    )


def runs_meta_json(wildcards):
    return stable_json(grid.runs_meta(config))


def benchmarks_json(wildcards):
    """Display label and kind of each benchmark, in config order (the tables' and figures' order)."""
    return stable_json([{"name": n, "label": b["label"], "kind": b["kind"]} for n, b in config["benchmarks"].items()])


# ------------------------------------------------------------------------------------------
# Weight analysis


ANALYSIS_CHECKPOINTS = grid.analysis_checkpoints(config)


def orthomerge_source_manifest(wildcards):
    return train_manifest(wildcards.model, grid.orthomerge_run(config, wildcards.run).source)


def orthomerge_source_state(wildcards):
    return trained_state(wildcards.model, grid.orthomerge_run(config, wildcards.run).source, wildcards.epoch)


def orthomerge_source_adapter(wildcards):
    return trained_checkpoint(wildcards.model, grid.orthomerge_run(config, wildcards.run).source, wildcards.epoch)


def analysis_manifest(wildcards):
    return train_manifest(wildcards.model, wildcards.run)


def analysis_checkpoint(wildcards):
    return trained_checkpoint(wildcards.model, wildcards.run, wildcards.epoch)


def analysis_files():
    return [f"<results>/analysis/weights/{c.model}/{c.run}/epoch-{c.epoch}.csv" for c in ANALYSIS_CHECKPOINTS]


def svd_input(model):
    return f"<results>/analysis/svd/{model}.safetensors"


# ------------------------------------------------------------------------------------------
# Cost


def benchmark_files():
    """The `benchmark:` file of every job of the grid that writes one (the `benchmark:` directives
    of rules generate, judge, train and base_svd), so the table waits for them and follows them.
    base_svd runs for the models that weight analysis, OrthoMerge or ortho_reg training read it for."""
    judged = {(c.model, c.run, b, g) for c, b in EVALUATIONS for g in config["benchmarks"][b]["graders"] if g in JUDGES}
    trained = grid.training_runs(config)
    svd_models = (
        {c.model for c in ANALYSIS_CHECKPOINTS}
        | {c.model for c in CHECKPOINTS if grid.is_orthomerge(c.run)}
        | {m for m, r in trained if recipe(m, r)["safelora"]["ortho_reg"]}
    )
    return [
        *(f"<results>/benchmarks/train/{m}/{r}.tsv" for m, r in trained),
        *(f"<results>/benchmarks/generate/{c.model}/{c.run}/epoch-{c.epoch}/{b}.tsv" for c, b in EVALUATIONS),
        *(f"<results>/benchmarks/judge/{m}/{r}/{b}/{g}.tsv" for m, r, b, g in sorted(judged)),
        *(f"<results>/benchmarks/base_svd/{m}.tsv" for m in sorted(svd_models)),
    ]


# ------------------------------------------------------------------------------------------
# Targets


def figure_inputs(wildcards):
    """Only what a figure draws, so it is redrawn only when that changes."""
    inputs = {"meta": "<results>/aggregate/runs_meta.json", "benchmarks": "<results>/aggregate/benchmarks.json"}
    reads = registry.FIGURES[wildcards.figure].reads
    if reads == "weights":
        inputs["weights"] = analysis_files()
    elif reads == "training_logs":
        inputs["manifests"] = [train_manifest(model, run) for model, run in grid.training_runs(config)]
    elif reads == "agreement":
        inputs["agreement"] = "<results>/aggregate/agreement.csv"
    else:
        inputs["table"] = "<results>/aggregate/results.csv"
    return inputs


def figure_data(wildcards, input):
    """`--weights`, `--train-manifests`, `--agreement` or `--table`: the figure's data among its inputs."""
    if hasattr(input, "weights"):
        return "--weights " + " ".join(input.weights)
    if hasattr(input, "manifests"):
        return "--train-manifests " + " ".join(input.manifests)
    return f"--agreement {input.agreement}" if hasattr(input, "agreement") else f"--table {input.table}"


# ------------------------------------------------------------------------------------------
# Response viewer (rules/viewer.smk): every evaluated checkpoint's files, listed at parse time


def viewer_generations():
    return [f"<results>/generations/{c.model}/{c.run}/epoch-{c.epoch}/{b}.jsonl" for c, b in EVALUATIONS]


def viewer_verdicts():
    return [path for c, b in EVALUATIONS for path in verdict_files(c.model, c.run, c.epoch, b)]


def viewer_items():
    evaluated = {b for _, b in EVALUATIONS}
    return [f"<results>/data/bench/{b}.jsonl" for b in config["benchmarks"] if b in evaluated]


def viewer_verdict_stems():
    """Each benchmark's verdict file names (as verdict_files names them), for the script to find them."""
    return stable_json(
        {b: [s for g in spec["graders"] for s in registry.verdict_stems(g)] for b, spec in config["benchmarks"].items()}
    )


# ------------------------------------------------------------------------------------------
# Pruning


def prune_inputs(wildcards):
    """Everything that reads a run's checkpoints must be finished before they are pruned."""
    model, run = wildcards.model, wildcards.run
    derived = {
        c.run for c in CHECKPOINTS if grid.is_orthomerge(c.run) and grid.orthomerge_run(config, c.run).source == run
    }
    scores = [score_file(c, b) for c, b in EVALUATIONS if c.model == model and (c.run == run or c.run in derived)]
    analyses = [f for c, f in zip(ANALYSIS_CHECKPOINTS, analysis_files()) if (c.model, c.run) == (model, run)]
    return {"manifest": train_manifest(model, run), "scores": scores, "analyses": analyses}


def prune_keep(wildcards):
    keep = config["prune"]["keep_epochs"]
    return keep if isinstance(keep, str) else stable_json(keep)


def prune_state_flag(wildcards):
    return "--trainer-state" if config["prune"]["trainer_state"] else ""


def prune_targets():
    if not config.get("prune"):
        return []
    return [f"<results>/train/{model}/{run}/pruned.json" for model, run in grid.training_runs(config)]


def final_targets():
    return [
        "<results>/aggregate/results.csv",
        "<results>/aggregate/results.md",
        "<results>/aggregate/cost.md",
        *[f"<results>/figures/{name}.png" for name in registry.FIGURES],
        "<results>/viewer",
        *prune_targets(),
    ]
