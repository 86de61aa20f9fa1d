# Plumbing only: validate the config, build the run grid, define paths and input functions.
# All logic lives in the `safelora` package (src/safelora).

import functools
import inspect
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from safelora import config as grid  # noqa: E402
from safelora import gpu_hours, registry  # noqa: E402
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

# Every output of this config lives under results/<experiment>/: rule directives name it
# `<results>` (a Snakemake path variable), Python code here RESULTS. The folder belongs to the
# config files that first ran in it (results/<experiment>/experiment.json, written when a run
# that is not a dry run starts); other config files naming the same experiment are refused.
RESULTS = f"results/{config['experiment']}"
grid.check_experiment_owner(RESULTS, workflow.configfiles)


onstart:
    grid.claim_experiment(RESULTS, workflow.configfiles)


pathvars:
    results=RESULTS,


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
# Job functions


def job_function(func):
    """Decorates every function a rule calls per job (input, params, resources). Snakemake reads
    such a function's signature two or three times per call (`inspect.signature`, ~20 us each:
    ~75,000 reads on the paper grid); stored once as `__signature__`, inspect's own protocol, each
    read is a lookup (docs/cluster.md, planning cost)."""
    func.__signature__ = inspect.signature(func)
    return func


def cli_args(**options):
    """`--name value` pairs (`_` -> `-`), values quoted for the shell; None leaves an option out.
    A stage's settings go to its shell command as one such param. Snakemake expands each param
    and formats each shell field of every job, so one field instead of four saves planning time
    on ~3,100 jobs, and the param still reruns the job when any setting changes (docs/cluster.md)."""
    return " ".join(
        f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in options.items() if value is not None
    )


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
        return f"{RESULTS}/models/{model}/base"
    return source.get("hub") or source["path"]


def base_model_input(model):
    """The base model as a Snakemake input (only when the workflow itself builds it)."""
    return [base_model(model)] if "gguf" in config["models"][model]["source"] else []


@job_function
def base_model_ref(wildcards):
    return base_model(wildcards.model)


@job_function
def base_model_files(wildcards):
    return base_model_input(wildcards.model)


@job_function
def model_source(wildcards):
    return stable_json(config["models"][wildcards.model]["source"])


@job_function
def train_data_source(wildcards):
    data = config["training_data"]
    return stable_json(data["sources"][data["source"]])


@job_function
def train_data_files(wildcards):
    """The local training data file (none for a hub source): an input, so editing it reruns what it feeds."""
    data = config["training_data"]
    return list(grid.local_files(data["sources"][data["source"]]).values())


def train_manifest(model, run):
    return f"{RESULTS}/train/{model}/{run}/manifest.json"


@functools.lru_cache(maxsize=None)
def recipe(model, run):
    return grid.training_recipe(config, model, run)


@job_function
def recipe_json(wildcards):
    return stable_json(recipe(wildcards.model, wildcards.run))


def _run_folder(kind, model, run):
    """`<results>/<kind>/{model}/{run}/<recipe hash>`: a changed recipe gets a fresh folder."""
    return f"{RESULTS}/{kind}/{model}/{run}/{grid.recipe_hash(recipe(model, run))}"


@job_function
def train_state_dir(wildcards):
    """Resumable trainer state: not an output, so Snakemake never deletes it before a rerun."""
    return _run_folder("state", wildcards.model, wildcards.run)


@job_function
def train_checkpoint_dir(wildcards):
    return _run_folder("checkpoints", wildcards.model, wildcards.run)


def trained_checkpoint(model, run, epoch):
    """Folder of a trained run's epoch (full model or LoRA adapter), known at planning time."""
    return f"{_run_folder('checkpoints', model, run)}/epoch-{epoch}"


@job_function
def train_inputs(wildcards):
    inputs = {
        "recipe": f"{RESULTS}/train/{wildcards.model}/{wildcards.run}/recipe.yaml",
        "data": f"{RESULTS}/data/train/{wildcards.model}.jsonl",
        "base": base_model_input(wildcards.model),
    }
    if recipe(wildcards.model, wildcards.run)["safelora"]["ortho_reg"]:
        inputs["svd"] = svd_input(wildcards.model)
    return inputs


@job_function
def train_svd_arg(wildcards):
    return (
        f"--svd {svd_input(wildcards.model)}" if recipe(wildcards.model, wildcards.run)["safelora"]["ortho_reg"] else ""
    )


@job_function
def train_gpus(wildcards):
    """The paper's GPU count for this run (Appendix A.5); profiles may override `gpu`."""
    r = recipe(wildcards.model, wildcards.run)
    return r["safelora"]["gpus"]


@job_function
def train_mem_mb(wildcards):
    """Host memory of a training job: `training.<method>.per_model.<size>.mem_mb` (32B under ZeRO-3
    offload keeps its fp32 master weights and Adam moments in host memory)."""
    run = grid.run_by_name(config, wildcards.run)
    size = config["models"][wildcards.model]["size"]
    return grid.method_settings(config, run)["per_model"][size]["mem_mb"]


@job_function
def train_parallelism(wildcards):
    """`model_split` (one process over the job's GPUs) or `data_parallel` (one per GPU)."""
    return recipe(wildcards.model, wildcards.run)["safelora"]["parallelism"]


@job_function
def checkpoint_inputs(wildcards):
    """Files a job needs to load checkpoint (model, run, epoch)."""
    model, run = wildcards.model, wildcards.run
    inputs = {"base": base_model_input(model)}
    if grid.is_orthomerge(run):
        inputs["adapter"] = f"{RESULTS}/orthomerge/{model}/{run}/epoch-{wildcards.epoch}"
    elif run != grid.BASE_RUN:
        inputs["manifest"] = train_manifest(model, run)
    return inputs


@functools.lru_cache(maxsize=None)
def trained_state(model, run, epoch):
    """`as trained`, or which file of a trained checkpoint changed since its manifest recorded it
    (safelora.training.published): a param of every job that loads the checkpoint, so `snakemake -n`
    lists those jobs when a checkpoint is deleted, overwritten or replaced by an older copy."""
    if run == grid.BASE_RUN or grid.is_orthomerge(run):
        return published.AS_TRAINED
    return published.changes_since_training(
        Path(train_manifest(model, run)), Path(trained_checkpoint(model, run, epoch))
    )


@job_function
def checkpoint_state(wildcards):
    return trained_state(wildcards.model, wildcards.run, wildcards.epoch)


@job_function
def checkpoint_args(wildcards):
    """`--base` (and `--adapter`) naming checkpoint (model, run, epoch) for generation."""
    model, run, epoch = wildcards.model, wildcards.run, wildcards.epoch
    if grid.is_orthomerge(run):
        return f"--base {base_model(model)} --adapter {RESULTS}/orthomerge/{model}/{run}/epoch-{epoch}"
    if run == grid.BASE_RUN:
        return f"--base {base_model(model)}"
    if recipe(model, run)["safelora"]["method"] == "lora":
        return f"--base {base_model(model)} --adapter {trained_checkpoint(model, run, epoch)}"
    return f"--base {trained_checkpoint(model, run, epoch)}"


@job_function
def generation_args(wildcards):
    """Everything of a generate job but its checkpoint and files: backend, batch, sampling, model."""
    m = config["models"][wildcards.model]
    model_settings = {
        "dtype": m["dtype"],
        "max_model_len": m["max_model_len"],
        "tensor_parallel": m["tensor_parallel"],
        "max_lora_rank": grid.max_lora_rank(config, wildcards.model),
    }
    return cli_args(
        backend=config["generation"]["backend"],
        batch_size=config["generation"]["batch_size"],
        sampling=stable_json({**bench(wildcards)["sampling"], "seed": config["seed"]}),
        model_settings=stable_json(model_settings),
    )


@job_function
def context_args(wildcards):
    """What check_context measures a benchmark's prompts against: the tokenizer and the budget."""
    return cli_args(
        base=base_model(wildcards.model),
        max_new_tokens=bench(wildcards)["sampling"]["max_new_tokens"],
        max_model_len=config["models"][wildcards.model]["max_model_len"],
    )


# ------------------------------------------------------------------------------------------
# Benchmarks, graders and scores


def bench(wildcards):
    return config["benchmarks"][wildcards.benchmark]


@job_function
def benchmark_data_files(wildcards):
    """The benchmark's local data files (none for a hub source): inputs, so editing one reruns what it feeds."""
    return list(grid.local_files(bench(wildcards)["source"]).values())


@job_function
def benchmark_spec(wildcards):
    keys = ("kind", "source", "limit", "prompt_template", "shuffle_seeds", "choice_cleaning", "choice_order")
    spec = {k: v for k, v in bench(wildcards).items() if k in keys}
    # samples per item: GPQA numbers a question's samples across its shuffle seeds
    return stable_json({**spec, "sampling": {"n": bench(wildcards)["sampling"]["n"]}})


@job_function
def benchmark_problems(wildcards, input):
    """`benchmarks.<b>.problems`, which build_benchmark checks the built file against. It takes
    `input`, so it is a derived param: a corrected count reruns nothing."""
    return bench(wildcards)["problems"]


def verdict_output(grader, variant=None, epoch="{epoch}"):
    """A verdict file of one (checkpoint, benchmark), as a rule output (named in safelora/registry.py)."""
    stem = registry.verdict_stem(grader, variant)
    return f"<results>/verdicts/{{model}}/{{run}}/epoch-{epoch}/{{benchmark}}/{stem}.jsonl"


def verdict_files(model, run, epoch, benchmark):
    """Verdict files a benchmark's score reads, one per grader and variant (EvalPlus: base and plus)."""
    folder = f"{RESULTS}/verdicts/{model}/{run}/epoch-{epoch}/{benchmark}"
    graders = config["benchmarks"][benchmark]["graders"]
    return [f"{folder}/{stem}.jsonl" for grader in graders for stem in registry.verdict_stems(grader)]


@job_function
def score_inputs(wildcards):
    return verdict_files(wildcards.model, wildcards.run, wildcards.epoch, wildcards.benchmark)


@job_function
def benchmark_kind(wildcards):
    return bench(wildcards)["kind"]


@job_function
def grader_version(wildcards):
    return bench(wildcards)["scorer_version"]


@job_function
def generation_gpus(wildcards):
    """One GPU per tensor-parallel rank of the evaluated model."""
    return config["models"][wildcards.model]["tensor_parallel"]


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


@job_function
def generate_runtime(wildcards):
    return GENERATE_RUNTIME[wildcards.model, wildcards.benchmark]


@job_function
def judge_runtime(wildcards):
    return JUDGE_RUNTIME[wildcards.judge, wildcards.benchmark, len(RUN_EPOCHS[wildcards.run])]


@job_function
def execution_args(wildcards):
    b = bench(wildcards)
    return cli_args(
        dataset=b["source"]["evalplus"],
        problems=b["source"]["path"],
        timeout=b["execution"]["timeout_s"],
        memory_mb=b["execution"]["memory_mb"],
    )


# A judge job covers every checkpoint of one (model, run, benchmark): the runs grouped by their
# checkpoints' epochs, one judge rule per group (rules/judge.smk, registry.judge_rule).
JUDGE_RULES = {}
for _run, _epochs in RUN_EPOCHS.items():
    JUDGE_RULES.setdefault(tuple(_epochs), []).append(_run)


def _run_files(wildcards, kind, name):
    """`<results>/<kind>/{model}/{run}/epoch-<e>/<name>` for every checkpoint epoch of the run."""
    folder = f"{RESULTS}/{kind}/{wildcards.model}/{wildcards.run}"
    return [f"{folder}/epoch-{epoch}/{name}" for epoch in RUN_EPOCHS[wildcards.run]]


def _fallback_files(wildcards):
    fallback = JUDGES[wildcards.judge].get("fallback_for")
    return _run_files(wildcards, "verdicts", f"{wildcards.benchmark}/{fallback}.jsonl") if fallback else []


@job_function
def judge_inputs(wildcards):
    """Every checkpoint's generations of the run (and a fallback judge's per-checkpoint verdicts of
    the grader it backs up), in the order of the judge rule's outputs."""
    return {
        "generations": _run_files(wildcards, "generations", f"{wildcards.benchmark}.jsonl"),
        "prompts": f"{RESULTS}/data/bench/{wildcards.benchmark}.jsonl",
        "fallback": _fallback_files(wildcards),
    }


@job_function
def judge_args(wildcards):
    """The judge, the benchmark kind, the backend, and a fallback judge's verdicts to read: a
    fallback judge (Qwen for AIME) only judges samples its backed-up grader did not pass."""
    fallback = _fallback_files(wildcards)
    args = cli_args(
        judge=stable_json(JUDGES[wildcards.judge]),
        kind=bench(wildcards)["kind"],
        backend=config["generation"]["backend"],
    )
    return f"{args} --fallback {shlex.join(fallback)}" if fallback else args


@job_function
def judge_gpus(wildcards):
    return JUDGES[wildcards.judge]["tensor_parallel"]


@job_function
def score_settings(wildcards):
    b = bench(wildcards)
    return stable_json(
        {
            "kind": b["kind"],
            "graders": b["graders"],
            "primary": b["primary"],
            "scorer_version": b["scorer_version"],
            "max_unparseable_share": config["max_unparseable_share"],
        }
    )


@job_function
def samples_per_item(wildcards):
    """Samples generated per benchmark item, which the score job's verdict files must cover."""
    return bench(wildcards)["sampling"]["n"]


def score_file(c, benchmark):
    return f"{RESULTS}/scores/{c.model}/{c.run}/epoch-{c.epoch}/{benchmark}.json"


EVALUATIONS = grid.evaluations(config)


def all_score_files():
    return [score_file(c, b) for c, b in EVALUATIONS]


@job_function
def expected_checkpoints(wildcards):
    benchmarks = {}
    for c, b in EVALUATIONS:
        benchmarks.setdefault(c, []).append(b)
    return stable_json(
        [{"model": c.model, "run": c.run, "epoch": c.epoch, "benchmarks": names} for c, names in benchmarks.items()]
    )


@job_function
def runs_meta_json(wildcards):
    return stable_json(grid.runs_meta(config))


@job_function
def benchmarks_json(wildcards):
    """Display label and kind of each benchmark, in config order (the tables' and figures' order)."""
    return stable_json([{"name": n, "label": b["label"], "kind": b["kind"]} for n, b in config["benchmarks"].items()])


@job_function
def bootstrap_args(wildcards):
    b = config["aggregate"]["bootstrap"]
    return cli_args(n_boot=b["n"], seed=b["seed"], level=b["level"])


# ------------------------------------------------------------------------------------------
# Weight analysis


ANALYSIS_CHECKPOINTS = grid.analysis_checkpoints(config)


@job_function
def analysis_modules(wildcards):
    return " ".join(config["analysis"]["modules"])


@job_function
def orthomerge_source_manifest(wildcards):
    return train_manifest(wildcards.model, grid.orthomerge_run(config, wildcards.run).source)


@job_function
def orthomerge_source_state(wildcards):
    return trained_state(wildcards.model, grid.orthomerge_run(config, wildcards.run).source, wildcards.epoch)


@job_function
def orthomerge_source_args(wildcards):
    source = grid.orthomerge_run(config, wildcards.run).source
    return f"--adapter {trained_checkpoint(wildcards.model, source, wildcards.epoch)}"


@job_function
def analysis_manifest(wildcards):
    return train_manifest(wildcards.model, wildcards.run)


@job_function
def analysis_checkpoint_args(wildcards):
    ckpt = trained_checkpoint(wildcards.model, wildcards.run, wildcards.epoch)
    return f"--base {base_model(wildcards.model)} --checkpoint {ckpt}"


@job_function
def orthomerge_settings(wildcards):
    om = grid.orthomerge_run(config, wildcards.run)
    return cli_args(variant=om.variant, lam=om.lam, k=config["orthomerge"]["k"])


def analysis_files():
    return [f"{RESULTS}/analysis/weights/{c.model}/{c.run}/epoch-{c.epoch}.csv" for c in ANALYSIS_CHECKPOINTS]


def svd_input(model):
    return f"{RESULTS}/analysis/svd/{model}.safetensors"


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
        | {m for m, r in trained if grid.training_recipe(config, m, r).get("ortho_reg")}
    )
    return [
        *(f"{RESULTS}/benchmarks/train/{m}/{r}.tsv" for m, r in trained),
        *(f"{RESULTS}/benchmarks/generate/{c.model}/{c.run}/epoch-{c.epoch}/{b}.tsv" for c, b in EVALUATIONS),
        *(f"{RESULTS}/benchmarks/judge/{m}/{r}/{b}/{g}.tsv" for m, r, b, g in sorted(judged)),
        *(f"{RESULTS}/benchmarks/base_svd/{m}.tsv" for m in sorted(svd_models)),
    ]


# ------------------------------------------------------------------------------------------
# Targets


@job_function
def figure_inputs(wildcards):
    """Only what a figure draws, so it is redrawn only when that changes."""
    inputs = {"meta": f"{RESULTS}/aggregate/runs_meta.json", "benchmarks": f"{RESULTS}/aggregate/benchmarks.json"}
    reads = registry.FIGURES[wildcards.figure].reads
    if reads == "weights":
        inputs["weights"] = analysis_files()
    elif reads == "training_logs":
        inputs["manifests"] = [train_manifest(model, run) for model, run in grid.training_runs(config)]
    elif reads == "agreement":
        inputs["agreement"] = f"{RESULTS}/aggregate/agreement.csv"
    else:
        inputs["table"] = f"{RESULTS}/aggregate/results.csv"
    return inputs


@job_function
def figure_args(wildcards):
    inputs = figure_inputs(wildcards)
    args = f"--runs-meta {inputs['meta']} --benchmarks {inputs['benchmarks']}"
    if "weights" in inputs:
        args += " --weights " + " ".join(inputs["weights"])
    if "manifests" in inputs:
        args += " --train-manifests " + " ".join(inputs["manifests"])
    if "agreement" in inputs:
        args += f" --agreement {inputs['agreement']}"
    if "table" in inputs:
        args += f" --table {inputs['table']}"
    return args


# ------------------------------------------------------------------------------------------
# Response viewer (rules/viewer.smk): every evaluated checkpoint's files, listed at parse time


def viewer_generations():
    return [f"{RESULTS}/generations/{c.model}/{c.run}/epoch-{c.epoch}/{b}.jsonl" for c, b in EVALUATIONS]


def viewer_verdicts():
    return [path for c, b in EVALUATIONS for path in verdict_files(c.model, c.run, c.epoch, b)]


def viewer_items():
    evaluated = {b for _, b in EVALUATIONS}
    return [f"{RESULTS}/data/bench/{b}.jsonl" for b in config["benchmarks"] if b in evaluated]


def viewer_verdict_stems():
    """Each benchmark's verdict file names (as verdict_files names them), for the script to find them."""
    return stable_json(
        {b: [s for g in spec["graders"] for s in registry.verdict_stems(g)] for b, spec in config["benchmarks"].items()}
    )


# ------------------------------------------------------------------------------------------
# Pruning


@job_function
def prune_inputs(wildcards):
    """Everything that reads a run's checkpoints must be finished before they are pruned."""
    model, run = wildcards.model, wildcards.run
    derived = {
        c.run for c in CHECKPOINTS if grid.is_orthomerge(c.run) and grid.orthomerge_run(config, c.run).source == run
    }
    scores = [score_file(c, b) for c, b in EVALUATIONS if c.model == model and (c.run == run or c.run in derived)]
    analyses = [f for c, f in zip(ANALYSIS_CHECKPOINTS, analysis_files()) if (c.model, c.run) == (model, run)]
    return {"manifest": train_manifest(model, run), "scores": scores, "analyses": analyses}


@job_function
def prune_keep(wildcards):
    keep = config["prune"]["keep_epochs"]
    return keep if isinstance(keep, str) else stable_json(keep)


@job_function
def prune_state_flag(wildcards):
    return "--trainer-state" if config["prune"]["trainer_state"] else ""


def prune_targets():
    if not config.get("prune"):
        return []
    return [f"{RESULTS}/train/{model}/{run}/pruned.json" for model, run in grid.training_runs(config)]


def final_targets():
    return [
        f"{RESULTS}/aggregate/results.csv",
        f"{RESULTS}/aggregate/results.md",
        f"{RESULTS}/aggregate/cost.md",
        *[f"{RESULTS}/figures/{name}.png" for name in registry.FIGURES],
        f"{RESULTS}/viewer",
        *prune_targets(),
    ]
