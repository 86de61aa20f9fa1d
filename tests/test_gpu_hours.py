"""GPU-hour estimate: dry-run parsing and the per-job arithmetic."""

import copy
import math

import pytest
import yaml

from safelora import config as grid
from safelora.cost import cost_markdown, cost_table, read_benchmark
from safelora.data import DataError
from safelora.evaluation.items import load_benchmark
from safelora.gpu_hours import (
    Assumptions,
    PlannedJob,
    estimate,
    format_table,
    generate_runtime,
    job_gpu_hours,
    judge_runtime,
    load_assumptions,
    parse_dryrun,
    samples,
)

LISTING = """\
Building DAG of jobs...
[Sat Nov 28 15:30:23 2026]
localrule write_recipe:
    output: results/train/m/lora-r4-mlp/recipe.yaml
    jobid: 3
    wildcards: model=m, run=lora-r4-mlp
    resources: tmpdir=/tmp, mem_mb=1000, slurm_partition=, runtime=5, gpu=0
[Sat Nov 28 15:30:54 2026]
rule judge_epochs_1to2:
    input: a/x.jsonl, a/y.jsonl
    output: results/verdicts/m/full/epoch-1/b/g.jsonl, results/verdicts/m/full/epoch-2/b/g.jsonl
    jobid: 7
    wildcards: model=m, run=full, benchmark=b, judge=g
    resources: tmpdir=/tmp, mem_mb=2000, runtime=10, gpu=2
[Sat Nov 28 15:30:54 2026]
rule score:
    jobid: 8
    wildcards: model=m, run=full, epoch=1, benchmark=b
[Sat Nov 28 15:30:55 2026]
rule aggregate:
    jobid: 9
Job stats:
"""


def test_parse_dryrun_reads_local_and_cluster_jobs():
    jobs = parse_dryrun(LISTING)
    assert [(j.rule, j.jobid) for j in jobs] == [
        ("write_recipe", 3),
        ("judge_epochs_1to2", 7),
        ("score", 8),
        ("aggregate", 9),
    ]
    assert jobs[0].wildcards == {"model": "m", "run": "lora-r4-mlp"}
    assert jobs[0].resources["slurm_partition"] == "" and jobs[0].gpus == 0
    assert jobs[1].inputs == ("a/x.jsonl", "a/y.jsonl") and len(jobs[1].outputs) == 2 and jobs[1].gpus == 2
    assert jobs[2].gpus == 0  # no gpu resource printed: none


@pytest.fixture(scope="module")
def demo_config(repo):
    config = yaml.safe_load((repo / "config/demo.yaml").read_text())
    grid.validate_schema(config)
    grid.complete_config(config, repo)
    judge = {"max_new_tokens": 32, "version": 1}  # as the schema requires and fills them
    config["judges"] = {
        "guard": {"kind": "llama_guard", "hub": "org/guard", "tensor_parallel": 1, **judge},
        "math": {"kind": "math_judge", "hub": "org/math", "fallback_for": "last_number", "tensor_parallel": 2, **judge},
    }
    return config


def _assumptions(**overrides):
    base = dict(
        decode_tok_s={"135M": 1000.0},
        mean_completion={"math": 100.0, "safety": 10.0},
        engine_start_s=0.0,
        judge_prefill_tok_s={"org/guard": 1000.0, "org/math": 500.0},
        judge_start_s=0.0,
        fallback_share=0.5,
        train_rows=None,
        train_samples_s={("lora", "135M"): 2.0, ("full", "135M"): 1.0},
        train_start_s=0.0,
        export_s={("lora", "135M"): 0.0, ("full", "135M"): 36.0},
    )
    return Assumptions(**{**base, **overrides})


def _job(rule, gpus, jobid=0, **wildcards):
    return PlannedJob(rule=rule, jobid=jobid, wildcards=wildcards, resources={"gpu": str(gpus)})


def test_generation_hours_are_tokens_over_throughput_times_gpus(demo_config):
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["arithmetic"].update(limit=10)  # 10 problems x n=4, capped at 12 new tokens
    job = _job("generate", 2, model="smollm2", run="base", epoch="0", benchmark="arithmetic")
    (row,) = estimate([job], config, _assumptions(engine_start_s=36.0))
    # (36 s + 40 x 12 tokens / (1000 tok/s x 2 GPUs)) x 2 GPUs
    assert row.gpu_hours == pytest.approx(2 * (36 + 480 / 2000) / 3600)


def test_every_generate_job_starts_its_own_engine(demo_config):
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["arithmetic"].update(limit=10)
    checkpoints = [("base", 0), ("lora-r4-mlp", 1), ("lora-r4-mlp", 2), ("full", 1)]
    jobs = [
        _job("generate", 1, jobid=i, model="smollm2", run=run, epoch=str(epoch), benchmark="arithmetic")
        for i, (run, epoch) in enumerate(checkpoints)
    ]
    (row,) = estimate(jobs, config, _assumptions(engine_start_s=36.0))
    decode_s = 40 * 12 / 1000  # 10 problems x n=4 x 12 tokens at 1000 tok/s on 1 GPU
    assert row.jobs == 4 and row.gpu_hours == pytest.approx(4 * (decode_s + 36) / 3600)


def test_a_judge_job_starts_its_judge_once_for_every_checkpoint_of_its_run(demo_config):
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["strongreject"].update(problems=50)
    epochs = grid.checkpoint_epochs(config, "lora-r4-mlp")
    assert epochs == [1, 2, 3]
    jobs = [
        _job(rule, 1, jobid=i, model="smollm2", run=run, benchmark="strongreject", judge="guard")
        for i, (rule, run) in enumerate([("judge_epochs_1to3", "lora-r4-mlp"), ("judge_epochs_0", "base")])
    ]
    (row,) = estimate(jobs, config, _assumptions(judge_start_s=100.0))
    assert row.rule == "judge" and row.jobs == 2
    # 4 checkpoints x 50 samples x (200 + 10) tokens at 1000 tok/s, and 2 judge starts
    assert row.gpu_hours == pytest.approx((4 * 50 * 210 / 1000 + 2 * 100) / 3600)


def test_fallback_judge_reads_only_its_share_of_short_answers(demo_config):
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["arithmetic"].update(limit=10)
    guard = _job("judge_epochs_0", 1, jobid=1, model="smollm2", run="base", benchmark="strongreject", judge="guard")
    math_judge = _job("judge_epochs_0", 2, jobid=2, model="smollm2", run="base", benchmark="arithmetic", judge="math")
    config["benchmarks"]["strongreject"].update(problems=50)
    (row,) = estimate([guard, math_judge], config, _assumptions())
    guard_s = 50 * (200 + 10) / 1000  # prompt + min(10, 32) completion tokens per sample
    math_s = 40 * 0.5 * 200 / (500 * 2)
    assert row.jobs == 2 and row.gpus == {1, 2}
    assert row.gpu_hours == pytest.approx((guard_s + 2 * math_s) / 3600)


@pytest.mark.parametrize("parallelism, processes", [("data_parallel", 4), ("model_split", 1)])
def test_training_hours_follow_epochs_rows_and_processes(demo_config, parallelism, processes):
    config = copy.deepcopy(demo_config)
    config["training_data"]["sources"]["demo"]["rows"] = 96
    config["training"]["full"].update(epochs=2, parallelism=parallelism)
    full = _job("train", 4, model="smollm2", run="full")
    (row,) = estimate([full], config, _assumptions())
    # model_split: one process over the 4 GPUs computes at one GPU's rate and holds all 4
    assert row.gpu_hours == pytest.approx(4 * 2 * (96 / (1.0 * processes) + 36) / 3600)


def test_samples_follow_problems_shuffle_seeds_and_limit(demo_config):
    config = copy.deepcopy(demo_config)
    bench = config["benchmarks"]["arithmetic"]
    assert (bench["problems"], bench["limit"], bench["sampling"]["n"]) == (40, 30, 4)
    assert samples(config, "arithmetic") == 30 * 4
    bench.update(limit=None, shuffle_seeds=[0, 1, 2])  # GPQA's layout: an item per (question, seed)
    assert samples(config, "arithmetic") == 40 * 3 * 4
    bench.update(limit=100)  # a limit caps items, as load_benchmark does
    assert samples(config, "arithmetic") == 100 * 4


def test_a_wrong_problem_count_fails_the_benchmark_build_naming_it(demo_config):
    bench = demo_config["benchmarks"]["arithmetic"]
    assert len(load_benchmark("arithmetic", bench)) == 30  # 40 problems, limit 30
    with pytest.raises(DataError, match=r"benchmark 'arithmetic': .*holds 40 items.*problems` is 41"):
        load_benchmark("arithmetic", {**bench, "problems": 41})


def test_runtimes_are_the_estimate_with_its_engine_start_and_margin(demo_config):
    config = copy.deepcopy(demo_config)
    a = _assumptions(engine_start_s=60.0, judge_start_s=30.0)
    # 30 items x n=4 x 12 tokens at 1000 tok/s on 1 GPU, + 60 s start, x 1.5 -> 91.44 s -> 2 min
    assert generate_runtime(config, "smollm2", "arithmetic", a) == 2
    config["models"]["smollm2"]["tensor_parallel"] = 2
    config["benchmarks"]["arithmetic"]["limit"] = None  # 40 x 4 x 12 / 2000 + 60 = 60.96 s -> 1.52 min
    assert generate_runtime(config, "smollm2", "arithmetic", a) == 2
    a = _assumptions(engine_start_s=3600.0, judge_start_s=30.0)
    assert generate_runtime(config, "smollm2", "arithmetic", a) == 91
    # the math judge: 40 x 4 samples x 0.5 x 200 tokens / (500 tok/s x 2 GPUs) + 30 s = 46 s, x 1.5
    assert judge_runtime(config, "math", "arithmetic", 1, a) == 2
    # over 10 checkpoints of a run: 30 s + 10 x 16 s = 190 s, x 1.5 -> 4.75 min
    assert judge_runtime(config, "math", "arithmetic", 10, a) == 5
    # no throughput for the size or the judge: the fixed bounds (a judge's per checkpoint)
    config["models"]["smollm2"]["size"] = "3B"
    config["judges"]["math"] = {**config["judges"]["math"], "hub": "org/other"}
    assert generate_runtime(config, "smollm2", "arithmetic", a) == 720
    assert judge_runtime(config, "math", "arithmetic", 3, a) == 3 * 240


def test_cpu_jobs_cost_nothing_and_unknown_gpu_rules_are_refused(demo_config):
    rows = estimate([_job("score", 0), _job("score", 0)], demo_config, _assumptions())
    assert [(r.rule, r.jobs, r.gpu_hours) for r in rows] == [("score", 2, 0.0)]
    with pytest.raises(ValueError, match="analyze_weights"):
        estimate([_job("analyze_weights", 1)], demo_config, _assumptions())


def test_table_lists_rules_gpu_ranges_and_total(demo_config):
    jobs = [
        _job("train", 2, model="smollm2", run="lora-r4-mlp"),
        _job("train", 4, model="smollm2", run="full"),
        _job("score", 0),
    ]
    table = format_table(estimate(jobs, demo_config, _assumptions()))
    assert "| train | 2 | 2-4 |" in table and "| score | 1 | 0 | 0.0 |" in table
    assert table.splitlines()[-1].startswith("| **total** | 3 |")


def test_jobs_without_a_throughput_are_counted_not_priced(demo_config):
    job = _job("generate", 1, model="smollm2", run="base", epoch="0", benchmark="arithmetic")
    assert job_gpu_hours(job, demo_config, _assumptions(decode_tok_s={"7B": 3000.0})) is None
    assert job_gpu_hours(_job("score", 0), demo_config, _assumptions()) == 0.0
    (row,) = estimate([job, job], demo_config, _assumptions(decode_tok_s={"7B": 3000.0}))
    assert (row.jobs, row.unpriced, row.gpu_hours) == (2, 2, 0.0)
    table = format_table([row])
    assert table.splitlines()[0].endswith("| GPU-hours | not priced |") and "| generate | 2 | 1 | 0.0 | 2 |" in table


def test_assumptions_from_a_file_replace_the_entries_they_name(tmp_path):
    path = tmp_path / "pilot.yaml"
    path.write_text("decode_tok_s: {7B: 2400.0}\nengine_start_s: 90\ntrain_samples_s: {'lora,7B': 8.0}\n")
    a = load_assumptions(path)
    assert a.decode_tok_s == {"7B": 2400.0, "14B": 1000.0} and a.engine_start_s == 90
    assert a.train_samples_s[("lora", "7B")] == 8.0 and a.train_samples_s[("full", "14B")] == 1.5
    path.write_text("decode_tokens: {7B: 1}\n")
    with pytest.raises(ValueError, match="pilot.yaml: unknown assumption\\(s\\) \\['decode_tokens'\\]"):
        load_assumptions(path)


# Snakemake 9.27's `--benchmark-extended` header and a row as it writes them
EXTENDED_HEADER = (
    "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\tjobid\trule_name"
    "\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb\n"
)


def _benchmark_file(path, rule, seconds, gpus, rss="812.5", **wildcards):
    path.parent.mkdir(parents=True, exist_ok=True)
    resources = {"tmpdir": "/tmp", "mem_mb": 64000, "gpu": gpus, "_cores": 8}
    path.write_text(
        EXTENDED_HEADER + f"{seconds}\t0:00:00\t{rss}\t0\t0\t0\t0.00\t0.00\t0.00\t0.00\t7\t{rule}\t{wildcards!r}\t{{}}"
        f"\t8\t0\t{resources!r}\t{{}}\n"
    )
    return path


def test_cost_table_sets_measured_gpu_hours_beside_the_estimate_of_the_same_jobs(demo_config, tmp_path):
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["arithmetic"].update(limit=10)
    gen = dict(model="smollm2", run="base", epoch="0", benchmark="arithmetic")
    files = [
        _benchmark_file(tmp_path / "g0.tsv", "generate", 90.0, 2, **gen),
        _benchmark_file(tmp_path / "g1.tsv", "generate", 54.0, 2, **{**gen, "run": "full", "epoch": "1"}),
        _benchmark_file(tmp_path / "j.tsv", "judge_epochs_0", 36.0, 0, "-", **{**gen, "judge": "guard"}),
    ]
    table = cost_table([read_benchmark(f) for f in files], config, _assumptions(engine_start_s=36.0))
    generate, judge = table.set_index("rule").loc["generate"], table.set_index("rule").loc["judge"]
    # measured: (90 + 54) s x 2 GPUs; estimated: 2 jobs x (36 s + 40 x 12 tokens / 2,000 tok/s) x 2 GPUs
    assert generate["gpu_hours"] == pytest.approx(288 / 3600) and generate["wall_hours"] == pytest.approx(144 / 3600)
    assert generate["estimated_gpu_hours"] == pytest.approx(2 * 2 * 36.24 / 3600)
    assert generate["measured_over_estimated"] == pytest.approx(288 / (4 * 36.24))
    assert generate["max_rss_gb"] == pytest.approx(812.5 / 1024) and generate["gpus_per_job"] == "2"
    # a judge job on no GPU: its wall hours, no GPU-hours, an estimate of 0 and no ratio; RSS not measured
    assert judge["gpu_hours"] == 0 and judge["wall_hours"] == pytest.approx(0.01) and judge["estimated_gpu_hours"] == 0
    assert math.isnan(judge["measured_over_estimated"]) and math.isnan(judge["max_rss_gb"])
    markdown = cost_markdown(table)
    assert "| generate | 2 | 2 | 0.040 | 0.080 | 0.040 (2) | 1.99 | 0.8 |" in markdown
    assert markdown.splitlines()[-1] == "| **total** | 3 | | 0.050 | 0.080 | 0.040 (3) | | |"
    config["models"]["smollm2"]["size"] = "3B"  # no throughput in the assumptions: no estimate
    unpriced = cost_table([read_benchmark(f) for f in files[:2]], config, _assumptions())
    assert unpriced.loc[0, "priced_jobs"] == 0 and "| – (0) | – |" in cost_markdown(unpriced)


def test_a_benchmark_file_without_the_extended_columns_adds_wall_hours_only(demo_config, tmp_path):
    """A file from before the profiles set benchmark-extended: its rule from its folder, `?` GPUs."""
    plain = tmp_path / "results/demo/benchmarks/generate/smollm2/base/epoch-0/arithmetic.tsv"
    plain.parent.mkdir(parents=True)
    plain.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     "36.0\t0:00:36\t100\t1\t1\t1\t0\t0\t0\t0\n")  # fmt: skip
    extended = _benchmark_file(tmp_path / "g.tsv", "generate", 72.0, 1, model="smollm2", run="full", epoch="1",
                               benchmark="arithmetic")  # fmt: skip
    old = read_benchmark(plain)
    assert (old.rule, old.job, old.wall_s) == ("generate", None, 36.0)
    row = cost_table([old, read_benchmark(extended)], demo_config, _assumptions()).iloc[0]
    assert (row["jobs"], row["gpus_per_job"], row["gpus_unrecorded"], row["priced_jobs"]) == (2, "1, ?", 1, 1)
    assert row["wall_hours"] == pytest.approx(0.03) and row["gpu_hours"] == pytest.approx(0.02)
    stray = tmp_path / "stray.tsv"
    stray.write_text(plain.read_text())
    with pytest.raises(ValueError, match=f"{stray}: no extended columns and no benchmarks/<rule>/ folder"):
        read_benchmark(stray)
