"""Config validation and the run grid: the paper config plans every run; bad configs name their key."""

import copy

import pytest
import yaml

from safelora import config as grid
from safelora.config import ConfigError


@pytest.fixture(scope="module")
def paper(repo):
    with open(repo / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def demo(repo):
    with open(repo / "config/demo.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def prepared(config, repo):
    config = copy.deepcopy(config)
    grid.validate_schema(config)
    grid.check_config(config, repo)
    return config


def test_paper_config_is_valid_and_has_the_paper_grid(paper, repo):
    config = prepared(paper, repo)
    runs = {r["name"]: r for r in config["runs"]}
    assert {"base", "full", "lora-r4-mlp", "lora-r1-mlp", "lora-r8-mlp", "lora-r64-mlp", "reg-col", "reg-both"} <= set(runs)
    assert config["training"]["full"]["epochs"] == 5 and config["training"]["lora"]["epochs"] == 10
    assert config["orthomerge"]["lambdas"] == [1.0, 1.15, 1.175, 1.2, 1.25]
    checkpoints = grid.checkpoints(config)
    # base (2) + full 2x5 + lora-r4 2x10 + 4 single-model LoRA runs x10 + reg 2x2x10 + OrthoMerge 2 models x 2 variants x 5 lambdas x 10
    assert len(checkpoints) == 2 + 10 + 20 + 40 + 40 + 200
    assert grid.Checkpoint("r1-14b", "lora-r4-mlp.om-both-l1.175", 10) in checkpoints


def test_paper_batches_follow_appendix_a5(paper, repo):
    config = prepared(paper, repo)
    full7 = grid.training_recipe(config, "r1-7b", "full")
    full14 = grid.training_recipe(config, "r1-14b", "full")
    lora7 = grid.training_recipe(config, "r1-7b", "lora-r4-mlp")
    lora14 = grid.training_recipe(config, "r1-14b", "lora-r4-mlp")
    assert (full7["batch"]["gpus"], full7["batch"]["per_device_batch"]) == (4, 2)
    assert (full14["batch"]["gpus"], full14["batch"]["per_device_batch"]) == (8, 1)
    assert (lora7["batch"]["gpus"], lora7["batch"]["per_device_batch"]) == (2, 2)
    assert (lora14["batch"]["gpus"], lora14["batch"]["per_device_batch"]) == (4, 2)
    assert full7["deepspeed"]["stage"] == 3 and lora7["deepspeed"] is None
    assert lora7["lora"] == {"rank": 4, "targets": ["gate_proj", "up_proj", "down_proj"], "alpha": 16, "dropout": 0.05}
    assert lora7["learning_rate"] == full7["learning_rate"] == 5e-5


def test_gradient_accumulation_keeps_the_global_batch():
    assert grid.gradient_accumulation(8, 2, 4) == 1
    assert grid.gradient_accumulation(8, 2, 2) == 2
    assert grid.gradient_accumulation(8, 1, 1) == 8
    with pytest.raises(ConfigError, match="not a multiple"):
        grid.gradient_accumulation(8, 2, 3)


def test_vllm_lora_rank_round_up():
    assert [grid.vllm_lora_rank(r) for r in (1, 4, 8, 9, 64)] == [1, 8, 8, 16, 64]
    with pytest.raises(ConfigError, match="rank 600"):
        grid.vllm_lora_rank(600)


def test_recipe_hash_changes_with_one_setting(paper, repo):
    config = prepared(paper, repo)
    before = grid.recipe_hash(grid.training_recipe(config, "r1-7b", "lora-r4-mlp"))
    run = grid.run_by_name(config, "lora-r4-mlp")
    run["overrides"] = {"learning_rate": 1e-4}
    assert grid.recipe_hash(grid.training_recipe(config, "r1-7b", "lora-r4-mlp")) != before
    assert grid.training_recipe(config, "r1-7b", "full")["learning_rate"] == 5e-5


def test_runs_meta_names_methods(paper, repo):
    meta = grid.runs_meta(prepared(paper, repo))
    assert meta["reg-both"]["method"] == "reg-both"
    assert meta["lora-r4-mlp.om-col-l1.15"] == {
        "method": "om-col", "rank": 4, "targets": "mlp", "lambda": 1.15, "source": "lora-r4-mlp"}


def _set(path, value):
    def mutate(c):
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _delete(path):
    def mutate(c):
        node = c
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _append_run(run):
    return lambda c: c["runs"].append(run)


# (case, mutation, expected text in the error). Documented in docs/errors.md.
BAD_CONFIGS = [
    ("unknown top-level key", _set(["learning_rate"], 1e-4), "Additional properties"),
    ("wrong type: epochs as text", _set(["training", "full", "epochs"], "five"), "training/full/epochs"),
    ("negative learning rate", _set(["training", "lora", "learning_rate"], -1), "training/lora/learning_rate"),
    ("unknown scheduler", _set(["training", "lora", "lr_scheduler"], "cosine_with_restarts"), "lr_scheduler"),
    ("missing versions", _delete(["versions"]), "'versions' is a required property"),
    ("model without source", _delete(["models", "r1-7b", "source"]), "models/r1-7b"),
    ("model with two sources", _set(["models", "r1-7b", "source"], {"hub": "a/b", "path": "x"}), "models/r1-7b/source"),
    ("run naming an unknown model", _append_run({"name": "x", "method": "full", "models": ["r1-70b"]}), "unknown model 'r1-70b'"),
    ("duplicate run names", _append_run({"name": "full", "method": "full", "models": ["r1-7b"]}), "duplicate run name 'full'"),
    ("LoRA run without rank", _append_run({"name": "x", "method": "lora", "targets": "mlp", "models": ["r1-7b"]}), "needs 'rank'"),
    ("unknown LoRA target set", _append_run({"name": "x", "method": "lora", "rank": 4, "targets": "all", "models": ["r1-7b"]}), "unknown target set 'all'"),
    ("rank vLLM cannot serve", _append_run({"name": "x", "method": "lora", "rank": 1024, "targets": "mlp", "models": ["r1-7b"]}), "exceeds the largest LoRA rank"),
    ("rank on a full run", _append_run({"name": "x", "method": "full", "rank": 4, "models": ["r1-7b"]}), "LoRA runs only"),
    ("unknown ortho mode", _append_run({"name": "x", "method": "lora", "rank": 4, "targets": "mlp", "models": ["r1-7b"], "ortho_reg": {"mode": "row"}}), "ortho_reg/mode"),
    ("run name with a dot", _append_run({"name": "a.b", "method": "full", "models": ["r1-7b"]}), "runs/"),
    ("GPUs that do not divide the global batch", _set(["training", "full", "per_model", "7B", "gpus"], 3), "not a multiple"),
    ("size without batch settings", _set(["models", "r1-7b", "size"], "8B"), "no entry for size '8B'"),
    ("unknown override key", _append_run({"name": "x", "method": "full", "models": ["r1-7b"], "overrides": {"lr": 1}}), "overrides"),
    ("OrthoMerge of a full run", _set(["orthomerge", "sources"], ["full"]), "not a LoRA run"),
    ("OrthoMerge of an unknown run", _set(["orthomerge", "sources"], ["lora-r3"]), "unknown run 'lora-r3'"),
    ("OrthoMerge epoch past the end", _set(["orthomerge", "epochs"], [11]), "not [11]"),
    ("zero lambda", _set(["orthomerge", "lambdas"], [0]), "orthomerge/lambdas/0"),
    ("missing data path", _set(["benchmarks", "aime", "source", "jsonl"], "data/missing.jsonl"), "file not found: data/missing.jsonl"),
    ("missing training file", _set(["training_data", "sources", "direct_refusal"], {"path": "nope.jsonl", "prompt_field": "p", "response_field": "r"}), "file not found: nope.jsonl"),
    ("unknown training source", _set(["training_data", "source"], "beavertails"), "training_data.source"),
    ("unknown grader", _set(["benchmarks", "gpqa", "graders"], ["regex"]), "unknown grader 'regex'"),
    ("grader of the wrong kind", _set(["benchmarks", "gpqa", "graders"], ["llama_guard"]), "cannot grade a 'multiple_choice'"),
    ("primary not among graders", _set(["benchmarks", "aime", "primary"], "llama_guard"), "is not one of its graders"),
    ("fallback judge without its grader", _set(["benchmarks", "aime", "graders"], ["qwen_math"]), "fallback for 'math_verify'"),
    ("greedy with n > 1", _set(["benchmarks", "strongreject", "sampling", "n"], 8), "identical samples"),
    ("top_p above 1", _set(["benchmarks", "aime", "sampling", "top_p"], 1.5), "sampling/top_p"),
    ("unparseable share above 1", _set(["max_unparseable_share"], 2), "max_unparseable_share"),
    ("analysis of the base run", _set(["analysis", "runs"], ["base"]), "not a training run"),
    ("AIME judge policy on a refusal judge", _set(["judges", "qwen_refusal", "unboxed"], "incorrect"), "judges/qwen_refusal"),
]


@pytest.mark.parametrize("case,mutate,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_rejected_with_its_key(paper, repo, case, mutate, expected):
    config = copy.deepcopy(paper)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        prepared(config, repo)
    assert expected in str(err.value), str(err.value)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        grid.load_config(bad)


def test_demo_config_is_valid(demo, repo):
    config = prepared(demo, repo)
    assert [c.key for c in grid.checkpoints(config)] == [
        "smollm2/base/epoch-0", "smollm2/full/epoch-1", "smollm2/full/epoch-2",
        "smollm2/lora-r4-mlp/epoch-1", "smollm2/lora-r4-mlp/epoch-2", "smollm2/lora-r4-mlp/epoch-3",
    ]
