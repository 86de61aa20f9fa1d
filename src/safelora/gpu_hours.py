"""GPU-hour estimate of a planned DAG: jobs from `snakemake -n`, hours from throughput assumptions.

The planned jobs (rule, wildcards, resources) are parsed from Snakemake's dry-run listing, so the
estimate counts exactly what a run would execute, with the GPU counts the profile gives each job.
Every generate and judge job starts its own engine: a generate job serves one checkpoint, a judge
job every checkpoint of one run on one benchmark.
Hours per job come from the config (prompts, samples, token budgets, epochs) and `Assumptions`,
whose defaults are stated for H100/H200-class 80 GB GPUs with their basis; replace them with
figures from a pilot run (generation records carry `completion_tokens`; `benchmark:` files carry
wall times, which `results/<experiment>/aggregate/cost.md` sets beside this estimate of the same
jobs, `safelora.cost`) for a sharper estimate (`load_assumptions`).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from safelora import config as grid
from safelora import registry
from safelora.evaluation.items import planned_items
from safelora.settings import Judge

_JOB_START = re.compile(r"^\s*(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^\s*(input|output|jobid|wildcards|resources): (.*)$")


def dry_run(
    workdir: Path, configfile: Path, profile: Path, targets: Sequence[str] = (), timeout: float | None = None
) -> str:
    """The listing of `snakemake -n` (this interpreter's Snakemake) in the checkout `workdir`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        *targets,
        "--configfile",
        str(configfile),
        "--profile",
        str(profile),
    ]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


@dataclass(frozen=True)
class PlannedJob:
    """One job of a dry run, as Snakemake printed it."""

    rule: str
    jobid: int
    wildcards: dict[str, str]
    resources: dict[str, str]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return int(self.resources.get("gpu") or 0)


def _pairs(text: str) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in text.split(", ") if item)


def parse_dryrun(text: str) -> list[PlannedJob]:
    """Jobs of a `snakemake -n` listing, in printed order."""
    jobs: list[PlannedJob] = []
    current: dict[str, Any] | None = None

    def flush() -> None:
        if current is not None and "jobid" in current:
            jobs.append(PlannedJob(**current))

    for line in text.splitlines():
        start = _JOB_START.match(line)
        if start:
            flush()
            current = {"rule": start.group(1), "wildcards": {}, "resources": {}}
            continue
        found = _FIELD.match(line)
        if current is None or not found:
            continue
        key, value = found.groups()
        if key == "jobid":
            current["jobid"] = int(value)
        elif key in ("wildcards", "resources"):
            current[key] = _pairs(value)
        else:
            current[f"{key}s"] = tuple(value.split(", "))
    flush()
    return jobs


@dataclass(frozen=True)
class Assumptions:
    """Throughput per GPU and lengths; each default states its basis."""

    # vLLM decode throughput per GPU, bf16, many concurrent long reasoning samples. KV cache bounds
    # concurrency: Qwen2.5-7B holds 57 KB/token (28 layers x 4 KV heads x 128 x 2 x 2 B), so ~55 GB
    # of free memory keeps ~60 sequences of 16k tokens in flight -> ~3,000 tok/s; 14B holds
    # 196 KB/token (48 x 8 x 128 x 2 x 2 B) -> ~16 sequences -> ~1,000 tok/s.
    decode_tok_s: dict[str, float] = field(default_factory=lambda: {"7B": 3000.0, "14B": 1000.0})
    # Mean completion length per benchmark kind, capped by the benchmark's max_new_tokens.
    # R1-Distill reasoning traces: AIME ~13k tokens, GPQA ~8k, code ~5k (published length
    # reports for DeepSeek-R1-Distill-Qwen); safety prompts mostly hit the 2,048 cap before training.
    mean_completion: dict[str, float] = field(
        default_factory=lambda: {
            "math": 13000.0,
            "multiple_choice": 8000.0,
            "code": 5000.0,
            "safety": 1500.0,
            "over_refusal": 1500.0,
        }
    )
    # Loading weights + CUDA graph capture per vLLM engine start (seconds), by GPUs per job.
    engine_start_s: float = 180.0
    # Judge prefill per GPU (tok/s): an 8B model ~20k, a 32B model ~5k (4x the FLOPs per token).
    judge_prefill_tok_s: dict[str, float] = field(
        default_factory=lambda: {"meta-llama/Llama-Guard-3-8B": 20000.0, "Qwen/Qwen2.5-32B-Instruct": 5000.0}
    )
    judge_start_s: float = 300.0
    # Share of AIME samples math-verify leaves to the Qwen judge (its `fallback_for` judge).
    fallback_share: float = 0.5
    # Training: DirectRefusal rows when `rows` is null (Safety-Tax: ~1,000), and samples/s per GPU
    # for ~300-token examples (full FT pays ZeRO-3 communication and gradient checkpointing).
    train_rows: int = 1000
    train_samples_s: dict[tuple[str, str], float] = field(
        default_factory=lambda: {("full", "7B"): 3.0, ("full", "14B"): 1.5, ("lora", "7B"): 6.0, ("lora", "14B"): 3.0}
    )
    train_start_s: float = 300.0
    # Writing one epoch's checkpoint: full weights (7B 15 GB, 14B 30 GB) vs a LoRA adapter.
    export_s: dict[tuple[str, str], float] = field(
        default_factory=lambda: {
            ("full", "7B"): 60.0,
            ("full", "14B"): 120.0,
            ("lora", "7B"): 5.0,
            ("lora", "14B"): 5.0,
        }
    )
    # Cached base SVD on one GPU: read the bf16 weights, then a rank-64 SVD of each of the 7 module
    # weights per layer at ~2 s each (7B: 28 layers, 14B: 48).
    base_svd_s: dict[str, float] = field(default_factory=lambda: {"7B": 600.0, "14B": 1000.0})


def samples(config: dict[str, Any], benchmark: str) -> int:
    """Generated samples of one benchmark: its items (`benchmarks.<b>.problems`, GPQA x shuffle seeds,
    capped by `limit`) x n."""
    bench = config["benchmarks"][benchmark]
    return planned_items(bench) * bench["sampling"]["n"]


def completion_tokens(config: dict[str, Any], benchmark: str, a: Assumptions) -> float:
    bench = config["benchmarks"][benchmark]
    return min(a.mean_completion[bench["kind"]], bench["sampling"]["max_new_tokens"])


def generate_seconds(config: dict[str, Any], model: str, benchmark: str, gpus: int, a: Assumptions) -> float:
    """One generate job on `gpus` GPUs: its engine's start, then decoding one (checkpoint, benchmark)."""
    tokens = samples(config, benchmark) * completion_tokens(config, benchmark, a)
    return a.engine_start_s + tokens / (a.decode_tok_s[config["models"][model]["size"]] * gpus)


def judge_seconds(
    config: dict[str, Any], judge: str, benchmark: str, checkpoints: int, gpus: int, a: Assumptions
) -> float:
    """One judge job on `gpus` GPUs: its engine's start, then judging `checkpoints` checkpoints'
    generations of one benchmark."""
    spec = Judge.from_config(config, judge)
    n = samples(config, benchmark)
    if spec.fallback_for:  # judges only what its backed-up grader left, on short answers
        n, per_sample = n * a.fallback_share, 200.0
    else:  # reads the prompt and the whole response
        per_sample = 200.0 + completion_tokens(config, benchmark, a)
    return a.judge_start_s + checkpoints * n * per_sample / (a.judge_prefill_tok_s[spec.model] * gpus)


def generate_hours(job: PlannedJob, config: dict[str, Any], a: Assumptions) -> float:
    return generate_seconds(config, job.wildcards["model"], job.wildcards["benchmark"], job.gpus, a) / 3600


def judge_hours(job: PlannedJob, config: dict[str, Any], a: Assumptions) -> float:
    w = job.wildcards
    checkpoints = len(grid.checkpoint_epochs(config, w["run"]))
    return judge_seconds(config, w["judge"], w["benchmark"], checkpoints, job.gpus, a) / 3600


def train_hours(job: PlannedJob, config: dict[str, Any], a: Assumptions) -> float:
    """Training time on the job's GPUs. `train_samples_s` is per training process: `data_parallel`
    runs one per GPU; `model_split` runs one, its layers spread over the GPUs, so one GPU computes
    at a time and the job's throughput is one GPU's while it holds all of them."""
    recipe = grid.training_recipe(config, job.wildcards["model"], job.wildcards["run"])
    opts = recipe["safelora"]
    key = (opts["method"], config["models"][job.wildcards["model"]]["size"])
    rows = opts["data"].get("rows") or a.train_rows
    processes = grid.data_parallel_ranks(opts["parallelism"], job.gpus)
    epoch_s = rows / (a.train_samples_s[key] * processes) + a.export_s[key]
    seconds = a.train_start_s + recipe["sft"]["num_train_epochs"] * epoch_s
    return seconds / 3600


def base_svd_hours(job: PlannedJob, config: dict[str, Any], a: Assumptions) -> float:
    return a.base_svd_s[config["models"][job.wildcards["model"]]["size"]] / 3600


# Per rule family (`registry.rule_family`: every judge rule is `judge`).
HOURS = {"generate": generate_hours, "judge": judge_hours, "train": train_hours, "base_svd": base_svd_hours}


def _priced(family: str, job: PlannedJob, config: dict[str, Any], a: Assumptions) -> bool:
    """Whether `Assumptions` has the throughput a job of the rule family needs (its model size,
    method or judge): the CPU demo's 135M model and a local judge have none."""
    w = job.wildcards
    if family == "judge":
        return config["judges"][w["judge"]].get("hub") in a.judge_prefill_tok_s
    size = config["models"][w["model"]]["size"]
    if family == "train":
        return (grid.training_recipe(config, w["model"], w["run"])["safelora"]["method"], size) in a.train_samples_s
    return size in (a.decode_tok_s if family == "generate" else a.base_svd_s)


def job_gpu_hours(job: PlannedJob, config: dict[str, Any], a: Assumptions) -> float | None:
    """Estimated GPU-hours of one job (its hours x its GPUs): 0 for a job without GPUs (its CPU time
    is not counted), None where `Assumptions` has no throughput for it. A GPU rule without a
    throughput model is a ValueError."""
    if not job.gpus:
        return 0.0
    family = registry.rule_family(job.rule)
    if family not in HOURS:
        raise ValueError(f"no throughput model for GPU rule {job.rule!r}")
    return job.gpus * HOURS[family](job, config, a) if _priced(family, job, config, a) else None


def load_assumptions(path: str | os.PathLike[str]) -> Assumptions:
    """`Assumptions` with the fields a YAML file sets (say, a pilot run's decode throughput per model
    size: `decode_tok_s: {7B: 2400}`); a dict field replaces the default's entries it names."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        given = yaml.safe_load(fh) or {}
    defaults = Assumptions()
    known = {f.name for f in fields(Assumptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{path}: unknown assumption(s) {unknown}; known: {sorted(known)}")
    merged = {}
    for name, value in given.items():
        default = getattr(defaults, name)
        if isinstance(default, dict):
            keyed = {tuple(k.split(",")) if isinstance(next(iter(default)), tuple) else k: v for k, v in value.items()}
            merged[name] = {**default, **keyed}
        else:
            merged[name] = value
    return Assumptions(**merged)


# A job's SLURM runtime: its estimate, engine start included, times this margin for checkpoints
# whose completions run longer than the mean (a generate job past it resumes from its chunks on
# retry). Where `Assumptions` has no throughput for the model size or judge (the CPU demo's, a
# local judge), a fixed bound: 32,768-token samples, a judge pass per checkpoint.
RUNTIME_MARGIN = 1.5
UNPRICED_RUNTIME = {"generate": 720, "judge": 240}


def _minutes(seconds: float) -> int:
    return math.ceil(RUNTIME_MARGIN * seconds / 60)


def generate_runtime(config: dict[str, Any], model: str, benchmark: str, a: Assumptions | None = None) -> int:
    """Minutes to reserve for one generate job of `model` on `benchmark` (rule generate's runtime)."""
    a = a or Assumptions()
    if config["models"][model]["size"] not in a.decode_tok_s:
        return UNPRICED_RUNTIME["generate"]
    gpus = config["models"][model]["tensor_parallel"]
    return _minutes(generate_seconds(config, model, benchmark, gpus, a))


def judge_runtime(
    config: dict[str, Any], judge: str, benchmark: str, checkpoints: int, a: Assumptions | None = None
) -> int:
    """Minutes to reserve for one judge job of `judge` on `benchmark` over `checkpoints` checkpoints
    of a run (the judge rules' runtime)."""
    a = a or Assumptions()
    spec = Judge.from_config(config, judge)
    if spec.model not in a.judge_prefill_tok_s:  # a local judge (`path`) is never priced
        return UNPRICED_RUNTIME["judge"] * checkpoints
    return _minutes(judge_seconds(config, judge, benchmark, checkpoints, spec.tensor_parallel, a))


@dataclass
class RuleEstimate:
    rule: str
    jobs: int = 0
    gpus: set[int] = field(default_factory=set)
    gpu_hours: float = 0.0
    unpriced: int = 0  # GPU jobs `Assumptions` has no throughput for (not in gpu_hours)


def estimate(jobs: list[PlannedJob], config: dict[str, Any], a: Assumptions | None = None) -> list[RuleEstimate]:
    """GPU-hours per rule family (the judge rules are one row, `judge`; `job_gpu_hours`)."""
    a = a or Assumptions()
    rules: dict[str, RuleEstimate] = defaultdict(lambda: RuleEstimate(""))
    for job in jobs:
        family = registry.rule_family(job.rule)
        row = rules[family]
        row.rule = family
        row.jobs += 1
        row.gpus.add(job.gpus)
        hours = job_gpu_hours(job, config, a)
        if hours is None:
            row.unpriced += 1
        else:
            row.gpu_hours += hours
    return sorted(rules.values(), key=lambda r: (-r.gpu_hours, r.rule))


def format_table(rows: list[RuleEstimate]) -> str:
    """A Markdown table: rule, jobs, GPUs per job, GPU-hours, and the totals; a column of the GPU
    jobs not priced (no throughput in `Assumptions`) where there are any."""
    unpriced = any(r.unpriced for r in rows)
    extra = (" not priced |", "---:|") if unpriced else ("", "")
    lines = [f"| rule | jobs | GPUs per job | GPU-hours |{extra[0]}", f"|---|---:|---:|---:|{extra[1]}"]
    for row in rows:
        gpus = "-".join(str(g) for g in sorted({min(row.gpus), max(row.gpus)}))
        lines.append(f"| {row.rule} | {row.jobs} | {gpus} | {row.gpu_hours:,.1f} |" + (f" {row.unpriced} |" * unpriced))
    total = sum(r.gpu_hours for r in rows)
    tail = f" {sum(r.unpriced for r in rows)} |" * unpriced
    lines.append(f"| **total** | {sum(r.jobs for r in rows)} | | **{total:,.1f}** |{tail}")
    return "\n".join(lines)
