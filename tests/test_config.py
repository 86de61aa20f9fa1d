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
    assert {"base", "full", "lora-r4-mlp", "lora-r1-mlp", "lora-r8-mlp", "lora-r64-mlp", "reg-col", "reg-both"} <= set(
        runs
    )
    assert config["training"]["full"]["num_train_epochs"] == 5 and config["training"]["lora"]["num_train_epochs"] == 10
    assert config["orthomerge"]["variants"] == {"col": [1.0], "both": [1.0, 1.15, 1.175, 1.2, 1.25]}
    checkpoints = grid.checkpoints(config)
    # base (2) + full 2x5 + lora-r4 2x10 + 4 single-model LoRA runs x10 + reg 2x2x10
    # + OrthoMerge 2 models x (col at lambda 1 + both at 5 lambdas) of the last epoch (Section 5.2)
    # + the later versions' 6 module and layer-range ablations on 14B x10
    assert config["orthomerge"]["epochs"] == "last"
    assert len(checkpoints) == 2 + 10 + 20 + 40 + 40 + 12 + 60
    ablations = {
        r: (runs[r]["targets"], runs[r].get("layers")) for r in runs if r.startswith("lora-r1-") and r != "lora-r1-mlp"
    }
    assert ablations == {
        "lora-r1-up": ("up_proj", None),
        "lora-r1-gate": ("gate_proj", None),
        "lora-r1-down": ("down_proj", None),
        "lora-r1-up-l0-15": ("up_proj", [0, 15]),
        "lora-r1-up-l16-31": ("up_proj", [16, 31]),
        "lora-r1-up-l32-47": ("up_proj", [32, 47]),
    }
    assert all(runs[r]["rank"] == 1 and runs[r]["models"] == ["r1-14b"] for r in ablations)
    assert grid.Checkpoint("r1-14b", "lora-r4-mlp.om-both-l1.175", 10) in checkpoints
    assert not any(c.epoch != 10 for c in checkpoints if ".om-" in c.run)
    assert {c.run for c in checkpoints if ".om-col" in c.run} == {"lora-r4-mlp.om-col-l1"}


def test_code_benchmarks_evaluate_vanilla_lora_and_orthomerge_both_only(paper, repo):
    """Figure 5b/d: of Section 5.2's methods only OrthoMerge-both is run on HumanEval+/MBPP+."""
    config = prepared(paper, repo)
    section52 = {"reg-col", "reg-both", "lora-r4-mlp.om-col-l1"} | {
        f"lora-r4-mlp.om-both-l{lam}" for lam in ("1", "1.15", "1.175", "1.2", "1.25")
    }
    pairs = grid.evaluations(config)
    for bench in ("humaneval", "mbpp"):
        runs = {c.run for c, b in pairs if b == bench}
        assert runs & section52 == {r for r in section52 if ".om-both-" in r}
        assert {"base", "full", "lora-r4-mlp"} <= runs
    for bench in ("strongreject", "aime", "gpqa"):
        assert {c for c, b in pairs if b == bench} == set(grid.checkpoints(config))
    for bench in ("humaneval", "mbpp"):
        config["benchmarks"][bench]["runs"] = "all"
    assert len(grid.evaluations(config)) == len(grid.checkpoints(config)) * len(config["benchmarks"])


def test_paper_batches_follow_appendix_a5(paper, repo):
    config = prepared(paper, repo)
    full7 = grid.training_recipe(config, "r1-7b", "full")
    full14 = grid.training_recipe(config, "r1-14b", "full")
    lora7 = grid.training_recipe(config, "r1-7b", "lora-r4-mlp")
    lora14 = grid.training_recipe(config, "r1-14b", "lora-r4-mlp")
    batches = [(r["safelora"]["gpus"], r["sft"]["per_device_train_batch_size"]) for r in (full7, full14, lora7, lora14)]
    assert batches == [(4, 2), (8, 1), (2, 2), (4, 2)]
    assert [r["safelora"]["global_batch"] for r in (full7, full14, lora7, lora14)] == [2, 1, 2, 2]
    assert full7["safelora"]["deepspeed"] is None and lora7["safelora"]["deepspeed"] is None
    assert {r["safelora"]["parallelism"] for r in (full7, full14, lora7, lora14)} == {"model_split"}
    assert [(r["sft"]["bf16"], r["sft"]["fp16"]) for r in (full7, lora7)] == [(True, False), (False, True)]
    assert lora7["lora"] == {
        "r": 4, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["gate_proj", "up_proj", "down_proj"],
        "task_type": "CAUSAL_LM",
    }  # fmt: skip
    assert "lora" not in full7
    assert lora7["sft"]["learning_rate"] == full7["sft"]["learning_rate"] == 5e-5
    assert (full7["sft"]["num_train_epochs"], lora7["sft"]["num_train_epochs"]) == (5, 10)
    assert lora7["sft"]["lr_scheduler_type"] == "cosine" and lora7["sft"]["seed"] == lora7["sft"]["data_seed"] == 42


def test_paper_code_steps_per_epoch(paper, repo):
    """The paper code's README evaluates 10-epoch LoRA-14B at checkpoint-500 ... 5000: 500 steps per epoch
    on DirectRefusal's 1,000 rows at global batch 2; the data-parallel reading of A.5 gives 125."""
    config = prepared(paper, repo)
    lora14 = grid.training_recipe(config, "r1-14b", "lora-r4-mlp")
    opts, per_device = lora14["safelora"], lora14["sft"]["per_device_train_batch_size"]
    ranks = grid.data_parallel_ranks(opts["parallelism"], opts["gpus"])
    assert ranks == 1 and grid.steps_per_epoch(1000, opts["global_batch"], per_device, ranks) == 500
    assert grid.steps_per_epoch(1000, 8, per_device, grid.data_parallel_ranks("data_parallel", 4)) == 125
    assert grid.steps_per_epoch(999, 4, 2, 2) == 250


def test_gradient_accumulation_keeps_the_global_batch():
    assert grid.gradient_accumulation(8, 2, 4) == 1
    assert grid.gradient_accumulation(8, 2, 2) == 2
    assert grid.gradient_accumulation(8, 1, 1) == 8
    with pytest.raises(ConfigError, match=r"global_batch 8 is not a multiple of 3 process\(es\) x per_device_train"):
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
    assert grid.training_recipe(config, "r1-7b", "full")["sft"]["learning_rate"] == 5e-5


def test_runs_meta_names_methods(paper, repo):
    meta = grid.runs_meta(prepared(paper, repo))
    assert meta["reg-both"]["method"] == "reg-both"
    assert meta["lora-r4-mlp.om-both-l1.15"] == {
        "method": "om-both",
        "rank": 4,
        "targets": "mlp",
        "layers": None,
        "lambda": 1.15,
        "source": "lora-r4-mlp",
        "main": False,
    }
    assert [run for run, entry in meta.items() if entry["main"]] == ["lora-r4-mlp"]


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
    ("wrong type: epochs as text", _set(["training", "full", "num_train_epochs"], "five"), "full/num_train_epochs"),
    ("negative learning rate", _set(["training", "lora", "learning_rate"], -1), "training/lora/learning_rate"),
    ("unknown scheduler", _set(["training", "lora", "lr_scheduler_type"], "cosine_with_restarts"), "lr_scheduler_type"),
    ("missing versions", _delete(["versions"]), "'versions' is a required property"),
    ("model without source", _delete(["models", "r1-7b", "source"]), "models/r1-7b"),
    ("model with two sources", _set(["models", "r1-7b", "source"], {"hub": "a/b", "path": "x"}), "models/r1-7b/source"),
    (
        "run naming an unknown model",
        _append_run({"name": "x", "method": "full", "models": ["r1-70b"]}),
        "unknown model 'r1-70b'",
    ),
    (
        "duplicate run names",
        _append_run({"name": "full", "method": "full", "models": ["r1-7b"]}),
        "duplicate run name 'full'",
    ),
    (
        "LoRA run without rank",
        _append_run({"name": "x", "method": "lora", "targets": "mlp", "models": ["r1-7b"]}),
        "needs 'rank'",
    ),
    (
        "unknown LoRA target set",
        _append_run({"name": "x", "method": "lora", "rank": 4, "targets": "all", "models": ["r1-7b"]}),
        "unknown target set 'all'",
    ),
    (
        "rank vLLM cannot serve",
        _append_run({"name": "x", "method": "lora", "rank": 1024, "targets": "mlp", "models": ["r1-7b"]}),
        "exceeds the largest LoRA rank",
    ),
    (
        "rank on a full run",
        _append_run({"name": "x", "method": "full", "rank": 4, "models": ["r1-7b"]}),
        "LoRA runs only",
    ),
    (
        "unknown ortho mode",
        _append_run(
            {
                "name": "x",
                "method": "lora",
                "rank": 4,
                "targets": "mlp",
                "models": ["r1-7b"],
                "ortho_reg": {"mode": "row"},
            }
        ),
        "ortho_reg/mode",
    ),
    (
        "span option on the paper formula",
        _append_run(
            {
                "name": "x",
                "method": "lora",
                "rank": 4,
                "targets": "mlp",
                "models": ["r1-7b"],
                "ortho_reg": {"mode": "col", "normalize": True},
            }
        ),
        "formula 'span' only",
    ),
    (
        "LoRA layer range backwards",
        _append_run(
            {"name": "x", "method": "lora", "rank": 1, "targets": "up_proj", "layers": [31, 16], "models": ["r1-14b"]}
        ),
        "('x').layers: [from, to] with from <= to",
    ),
    (
        "LoRA layer range of three numbers",
        _append_run(
            {"name": "x", "method": "lora", "rank": 1, "targets": "up_proj", "layers": [1, 2, 3], "models": ["r1-14b"]}
        ),
        "/layers",
    ),
    (
        "layers on a full run",
        _append_run({"name": "x", "method": "full", "layers": [0, 3], "models": ["r1-7b"]}),
        "rank, targets, layers and ortho_reg apply to LoRA runs only",
    ),
    (
        "layers in overrides",
        _append_run(
            {
                "name": "x",
                "method": "lora",
                "rank": 1,
                "targets": "up_proj",
                "models": ["r1-14b"],
                "overrides": {"layers": [16, 31]},
            }
        ),
        "/overrides",
    ),
    ("run name with a dot", _append_run({"name": "a.b", "method": "full", "models": ["r1-7b"]}), "runs/"),
    (
        "per-device batch that does not divide the global batch",
        _set(["training", "full", "per_model", "7B", "per_device_train_batch_size"], 3),
        "not a multiple",
    ),
    (
        "GPUs that do not divide a data-parallel global batch",
        _set(["training", "full", "parallelism"], "data_parallel"),
        "4 process(es)",
    ),
    (
        "DeepSpeed in one process",
        _set(["training", "full", "deepspeed"], {"stage": 3}),
        "needs parallelism 'data_parallel'",
    ),
    ("size without batch settings", _set(["models", "r1-7b", "size"], "8B"), "no entry for size '8B'"),
    (
        "unknown override key",
        _append_run({"name": "x", "method": "full", "models": ["r1-7b"], "overrides": {"lr": 1}}),
        "overrides",
    ),
    ("OrthoMerge of a full run", _set(["orthomerge", "sources"], ["full"]), "not a LoRA run"),
    ("OrthoMerge of an unknown run", _set(["orthomerge", "sources"], ["lora-r3"]), "unknown run 'lora-r3'"),
    ("OrthoMerge epoch past the end", _set(["orthomerge", "epochs"], [11]), "not [11]"),
    ("zero lambda", _set(["orthomerge", "variants", "both"], [0]), "orthomerge/variants/both/0"),
    ("row-only OrthoMerge", _set(["orthomerge", "variants", "row"], [1.0]), "orthomerge/variants"),
    (
        "benchmark selecting an unknown run",
        _set(["benchmarks", "mbpp", "runs"], ["lora-r4-mlp.om-row"]),
        "unknown run(s) ['lora-r4-mlp.om-row']",
    ),
    (
        "missing data path",
        _set(["benchmarks", "aime", "source", "jsonl"], "data/missing.jsonl"),
        "file not found: data/missing.jsonl",
    ),
    (
        "missing training file",
        _set(
            ["training_data", "sources", "direct_refusal"],
            {"path": "nope.jsonl", "prompt_field": "p", "response_field": "r"},
        ),
        "file not found: nope.jsonl",
    ),
    ("unknown training source", _set(["training_data", "source"], "beavertails"), "training_data.source"),
    ("unknown GPQA choice order", _set(["benchmarks", "gpqa", "choice_order"], "per_run"), "choice_order"),
    ("GPQA without a choice order", _delete(["benchmarks", "gpqa", "choice_order"]), "choice_order"),
    ("unknown grader", _set(["benchmarks", "gpqa", "graders"], ["regex"]), "unknown grader 'regex'"),
    (
        "grader of the wrong kind",
        _set(["benchmarks", "gpqa", "graders"], ["llama_guard"]),
        "cannot grade a 'multiple_choice'",
    ),
    ("primary not among graders", _set(["benchmarks", "aime", "primary"], "llama_guard"), "is not one of its graders"),
    (
        "fallback judge without its grader",
        _set(["benchmarks", "aime", "graders"], ["qwen_math"]),
        "fallback for 'math_verify'",
    ),
    ("greedy with n > 1", _set(["benchmarks", "strongreject", "sampling", "n"], 8), "identical samples"),
    ("top_p above 1", _set(["benchmarks", "aime", "sampling", "top_p"], 1.5), "sampling/top_p"),
    ("unparseable share above 1", _set(["max_unparseable_share"], 2), "max_unparseable_share"),
    ("analysis of the base run", _set(["analysis", "runs"], ["base"]), "not a training run"),
    ("main run not plain LoRA", _set(["aggregate", "main_run"], "reg-col"), "'reg-col' is not a LoRA run"),
    ("main run unnamed", _delete(["aggregate", "main_run"]), "aggregate.main_run: name the LoRA run"),
    (
        "AIME judge policy on a refusal judge",
        _set(["judges", "qwen_refusal", "unboxed"], "incorrect"),
        "judges/qwen_refusal",
    ),
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
        "smollm2/base/epoch-0",
        "smollm2/full/epoch-1",
        "smollm2/full/epoch-2",
        "smollm2/lora-r4-mlp/epoch-1",
        "smollm2/lora-r4-mlp/epoch-2",
        "smollm2/lora-r4-mlp/epoch-3",
    ]


def test_schema_holds_the_defaults_rules_and_scripts_used_to_repeat(paper, repo):
    """Rules index these keys directly and scripts require them: complete_config must fill them."""
    config = copy.deepcopy(paper)
    del config["analysis"], config["aggregate"]["bootstrap"]
    del config["benchmarks"]["humaneval"]["execution"]
    grid.complete_config(config, repo)
    assert config["aggregate"]["bootstrap"] == {"n": 2000, "seed": 0, "level": 0.95}
    assert config["benchmarks"]["humaneval"]["execution"] == {"timeout_s": 20, "memory_mb": 4096}
    analysis = config["analysis"]
    assert (analysis["runs"], analysis["svd_rank"], analysis["top_k"], analysis["norm"]) == ([], 64, 16, "fro")
    assert analysis["modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert grid.analysis_checkpoints(config) == []


LAYER_RUN = {"name": "up-layers", "method": "lora", "rank": 1, "targets": "up_proj", "layers": [16, 31],
             "models": ["r1-14b"]}  # fmt: skip


def test_a_layer_range_run_is_in_its_recipe_hash_and_runs_meta(paper, repo):
    """The paper code README's `lora_up_proj_only_from16_to31_r1` (config.yaml's lora-r1-up-l16-31):
    rank-1 LoRA on up_proj of layers 16-31, beside lora-r1-up on every layer."""
    without = copy.deepcopy(paper)
    without["runs"] = [r for r in without["runs"] if "layers" not in r]
    before = grid.recipe_hash(grid.training_recipe(prepared(without, repo), "r1-14b", "lora-r4-mlp"))
    config = prepared(paper, repo)
    recipe = grid.training_recipe(config, "r1-14b", "lora-r1-up-l16-31")
    assert recipe["lora"] == {
        "r": 1, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["up_proj"], "task_type": "CAUSAL_LM",
        "layers_to_transform": list(range(16, 32)), "layers_pattern": "layers",
    }  # fmt: skip
    all_layers = grid.training_recipe(config, "r1-14b", "lora-r1-up")
    assert "layers_to_transform" not in all_layers["lora"], "all-layer recipes (and their hashes) are as before"
    assert grid.recipe_hash(recipe) != grid.recipe_hash(all_layers)
    assert grid.recipe_hash(grid.training_recipe(config, "r1-14b", "lora-r4-mlp")) == before
    meta = grid.runs_meta(config)
    assert (meta["lora-r1-up-l16-31"]["targets"], meta["lora-r1-up-l16-31"]["layers"]) == ("up_proj", [16, 31])
    assert meta["lora-r1-up"]["layers"] is None and meta["lora-r4-mlp"]["layers"] is None


def _local_model(tmp_path, num_layers):
    folder = tmp_path / f"model-{num_layers}"
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "qwen2", "num_hidden_layers": {num_layers}}}')
    return str(folder)


def test_layers_outside_a_local_model_are_rejected_at_planning(paper, repo, tmp_path):
    config = copy.deepcopy(paper)
    config["models"]["r1-14b"]["source"] = {"path": _local_model(tmp_path, 48)}
    config["runs"].append({**LAYER_RUN, "layers": [32, 47]})
    prepared(config, repo)  # the last layer is 47
    config["runs"][-1]["layers"] = [32, 48]
    with pytest.raises(ConfigError) as err:
        prepared(config, repo)
    assert str(err.value) == (
        f"runs[{len(config['runs']) - 1}] ('up-layers').layers: layers [32, 48] reach past the model's 48 decoder layers (0-47) "
        "of model 'r1-14b'"
    )


def test_layers_of_hub_and_gguf_models_wait_for_the_train_job(paper, demo, repo):
    """No layer count at planning (no network; the GGUF is converted by a job): the job checks at its start."""
    config = copy.deepcopy(paper)
    config["runs"].append({**LAYER_RUN, "layers": [16, 480]})
    prepared(config, repo)
    config = copy.deepcopy(demo)
    config["lora_targets"]["up_proj"] = ["up_proj"]
    config["runs"].append({**LAYER_RUN, "layers": [16, 480], "models": ["smollm2"]})
    prepared(config, repo)
