"""profiles/slurm: cluster settings only; every job's threads, memory and runtime from its rule; GPUs where the paper puts them."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from safelora import config as grid
from safelora.gpu_hours import dry_run, generate_runtime, judge_runtime, parse_dryrun
from safelora.registry import JUDGE_RULE, rule_family

REPO = Path(__file__).resolve().parents[1]
PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
# The rules by name, and the judge rules (one per set of checkpoint epochs, rules/judge.smk) as `judge`.
RULES = sorted(
    {m for smk in (REPO / "rules").glob("*.smk") for m in re.findall(r"^rule (\w+):", smk.read_text(), re.M)}
    | {JUDGE_RULE}
)
GPU_RULES = {"train", "generate", "judge", "base_svd"}
# Appendix A.5: GPUs per training job.
PAPER_TRAIN_GPUS = {("full", "r1-7b"): 4, ("full", "r1-14b"): 8, ("lora", "r1-7b"): 2, ("lora", "r1-14b"): 4}


def test_profile_targets_slurm_with_cluster_defaults():
    assert PROFILE["executor"] == "slurm"
    assert PROFILE["rerun-incomplete"] is True and PROFILE["retries"] >= 1
    assert "code" not in PROFILE["rerun-triggers"]
    assert {"mem_mb", "runtime"} <= set(PROFILE["default-resources"])
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    assert "# slurm_partition:" in text and "# slurm_account:" in text  # placeholders to fill in


def test_profiles_repeat_no_resource_of_a_rule():
    # the rules are the one source of threads, memory and runtime; GPU counts come from the config
    assert "set-resources" not in PROFILE and "set-threads" not in PROFILE
    # the CPU workstation's profile only takes GPUs away and runs one thread per job
    local = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
    assert all(resources == {"gpu": 0} for resources in local["set-resources"].values()), local["set-resources"]
    assert set(local["set-threads"].values()) == {1}


def planned_resources(*args: str) -> dict[tuple[str, ...], dict[str, int]]:
    """Threads and resources of every job of a dry run, by the job's outputs (--forceall: the whole
    DAG, also in a checkout where the demo has run)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    blocks = re.split(r"^\s*(?:local)?rule \w+:$", result.stdout, flags=re.M)[1:]
    threads = [int(m.group(1)) if (m := re.search(r"^\s*threads: (\d+)$", b, re.M)) else 1 for b in blocks]
    jobs = parse_dryrun(result.stdout)
    assert len(jobs) == len(threads)
    keys = ("gpu", "nodes", "mem_mb", "runtime")
    return {
        (job.rule, *job.outputs): {"threads": n, **{k: int(job.resources.get(k, 0)) for k in keys}}
        for job, n in zip(jobs, threads, strict=True)
    }


@pytest.mark.slow
def test_every_job_gets_the_same_resources_with_or_without_the_slurm_profile():
    covered = set()
    for configfile in ("config.yaml", "config/demo.yaml"):  # the paper grid; the demo adds prepare_model
        # --cores: a dry run caps the listed threads at its cores (1 unless given)
        bare = planned_resources("--configfile", configfile, "--cores", "64")
        slurm = planned_resources("--configfile", configfile, "--profile", "profiles/slurm", "--cores", "64")
        assert bare.keys() == slurm.keys()
        for job, resources in bare.items():
            covered.add(rule_family(job[0]))
            if job[0] == "all":  # runs nothing
                continue
            assert resources["mem_mb"] > 0 and resources["runtime"] > 0, job  # every rule declares both
            assert slurm[job] == resources, (job, resources, slurm[job])
    assert covered == set(RULES) | {"all"}


# One checkpoint per kind and benchmarks that reach every grader kind: the dry run then holds all
# training jobs, generation, both judges (1 and 2 GPUs), text grading, code execution and scoring,
# with math_verify -> qwen_math -> score.
TARGETS = [
    *[
        f"results/paper/train/{m}/{r}/manifest.json"
        for m in ("r1-7b", "r1-14b")
        for r in ("full", "lora-r4-mlp", "reg-col", "reg-both")
    ],
    *[
        f"results/paper/train/r1-14b/{r}/manifest.json"
        for r in ("lora-r1-mlp", "lora-r8-mlp", "lora-r64-mlp", "lora-r4-mlp-attn")
    ],
    *[f"results/paper/scores/r1-14b/full/epoch-1/{b}.json" for b in ("aime", "strongreject", "humaneval")],
]


@pytest.fixture(scope="module")
def paper_dry_run():
    stdout = dry_run(REPO, REPO / "config.yaml", REPO / "profiles/slurm", TARGETS, timeout=600)
    return stdout, parse_dryrun(stdout)


def test_paper_dry_run_gives_training_jobs_the_papers_gpu_counts(paper_dry_run):
    _, jobs = paper_dry_run
    train = {(j.wildcards["run"], j.wildcards["model"]): j.gpus for j in jobs if j.rule == "train"}
    assert len(train) == 12
    for (run, model), gpus in train.items():
        method = "full" if run == "full" else "lora"
        assert gpus == PAPER_TRAIN_GPUS[(method, model)], (run, model)


def test_paper_dry_run_gpus_only_on_gpu_rules_and_per_judge_size(paper_dry_run):
    _, jobs = paper_dry_run
    rules = {rule_family(j.rule) for j in jobs}
    assert {"generate", "judge", "grade_text", "execute_code", "score"} <= rules
    for job in jobs:
        assert "tasks" not in job.resources, job
        if rule_family(job.rule) not in GPU_RULES:
            assert job.gpus == 0, job
    judges = {j.wildcards["judge"]: j.gpus for j in jobs if rule_family(j.rule) == "judge"}
    assert judges == {"llama_guard": 1, "qwen_refusal": 2, "qwen_math": 2}  # 8B on 1; 32B bf16 on 2
    assert {j.gpus for j in jobs if j.rule == "generate"} == {1}  # tensor_parallel 1
    # the small CPU jobs are local rules, never SLURM submissions (tests/test_slurm.py runs it)
    block = (REPO / "Snakefile").read_text().split("localrules:")[1].split("\n\n")[0]
    assert {"grade_text", "score", "aggregate", "figure"} <= {n.strip(" ,") for n in block.split()}


def test_no_group_jobs_and_runtimes_are_the_gpu_hour_estimates(paper_dry_run):
    stdout, jobs = paper_dry_run
    assert "group-components" not in PROFILE and "groups" not in PROFILE
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    assert "Group job" not in stdout and not re.search(r"^\s+group:", rules, re.M)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    grid.validate_schema(config)
    grid.complete_config(config, REPO)
    judged = 0
    for job in jobs:  # the rules reserve what safelora.gpu_hours derives
        w = job.wildcards
        if job.rule == "generate":
            assert int(job.resources["runtime"]) == generate_runtime(config, w["model"], w["benchmark"]), job
        if rule_family(job.rule) == "judge":
            # one judge job per (model, run, benchmark, judge): a verdict file per checkpoint of the run
            epochs = grid.checkpoint_epochs(config, w["run"])
            assert len(job.outputs) == len(epochs), job
            runtime = judge_runtime(config, w["judge"], w["benchmark"], len(epochs))
            assert int(job.resources["runtime"]) == runtime, job
            judged += 1
    assert judged > 0


def test_the_paper_codes_32b_recipe_plans_as_an_overlay_of_config_yaml():
    """config/r1-32b.yaml on config.yaml (the paper code's README recipe): one full fine-tuning job of
    R1-Distill-Qwen-32B on 2 GPUs, one process each, ZeRO-3 with optimizer and parameters offloaded,
    fp16, gradient checkpointing, 1 epoch, per-device batch 1, and host memory for the offload."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--profile", "profiles/slurm"]
    cmd += ["--configfile", "config.yaml", "config/r1-32b.yaml"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = [job for job in parse_dryrun(result.stdout) if job.rule == "train"]
    assert [job.wildcards for job in train] == [{"model": "r1-32b", "run": "full"}]
    assert (train[0].gpus, int(train[0].resources["mem_mb"])) == (2, 640000)
    assert "launch_train.sh 2 1 data_parallel" in result.stdout
    recipe_cmd = next(line for line in result.stdout.splitlines() if "write_recipe.py" in line)
    words = shlex.split(recipe_cmd)
    recipe = json.loads(words[words.index("--recipe") + 1])
    sft, opts = recipe["sft"], recipe["safelora"]
    assert opts["model_source"] == {"hub": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"}
    assert opts["deepspeed"] == {"stage": 3, "offload_optimizer": True, "offload_params": True}
    assert (sft["fp16"], sft["bf16"], sft["gradient_checkpointing"], sft["num_train_epochs"]) == (True, False, True, 1)
    assert (opts["gpus"], sft["per_device_train_batch_size"], opts["global_batch"]) == (2, 1, 2)
    assert "mem_mb" not in json.dumps(recipe)  # the job's memory request is no recipe key
    assert "results/paper-32b/generations/r1-32b/full/epoch-1/aime.jsonl" in result.stdout


@pytest.mark.slow
def test_the_local_profiles_judge_entry_reaches_every_judge_rule():
    """profiles/local names the judge rules by their family, `judge` (the rules are named after the
    grid's epoch sets): on the paper grid every judge job gets its GPU count 0 and one thread."""
    jobs = planned_resources("--configfile", "config.yaml", "--profile", "profiles/local", "--cores", "64")
    judges = [resources for (rule, *_), resources in jobs.items() if rule_family(rule) == "judge"]
    assert len(judges) == 128 and all(r["gpu"] == 0 and r["threads"] == 1 for r in judges), judges[:3]
