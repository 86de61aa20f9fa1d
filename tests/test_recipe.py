"""The training recipe: TRL SFTConfig and PEFT LoraConfig fields under their own names, the project's options."""

import copy
import dataclasses
import json

import pytest
import yaml
from tiny_model import recipe

from safelora import config as grid
from safelora.config import ConfigError
from safelora.training import sft
from safelora.training.recipe import SafeLoraOptions, parse_recipe


@pytest.fixture(scope="module")
def paper(repo):
    config = yaml.safe_load((repo / "config.yaml").read_text(encoding="utf-8"))
    grid.validate_schema(config)
    grid.check_config(config, repo)
    return config


def written(resolved):
    """The recipe as the train job reads it: write_recipe's YAML of the rule's JSON."""
    return yaml.safe_load(yaml.safe_dump(json.loads(grid.stable_json(resolved)), sort_keys=True))


def test_every_training_key_is_a_field_of_the_class_its_section_names(paper):
    from peft import LoraConfig
    from trl import SFTConfig

    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    lora_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    keys = grid.load_schema()["$defs"]["training_method"]["properties"]
    sft_keys = set(keys) - set(grid.LORA_KEYS) - set(grid.OPTION_KEYS) - {"per_model"}
    assert sft_keys <= sft_fields and set(grid.LORA_KEYS) <= lora_fields
    assert "per_device_train_batch_size" in sft_fields
    options = {f.name for f in dataclasses.fields(SafeLoraOptions)}
    for model, run in grid.training_runs(paper):
        resolved = grid.training_recipe(paper, model, run)
        assert set(resolved["safelora"]) == options
        parsed = parse_recipe(written(resolved), f"{model}/{run}")  # every key a field, nothing missing
        assert (parsed.lora is None) == (resolved["safelora"]["method"] == "full")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("sft", "paper: sft: Some keys are not used by the HfArgumentParser: ['lr']"),
        ("lora", "paper: lora: LoraConfig.__init__() got an unexpected keyword argument 'lr'"),
        ("safelora", "paper: safelora: Some keys are not used by the HfArgumentParser: ['lr']"),
    ],
)
def test_a_key_no_section_knows_is_refused_naming_it(paper, section, message):
    resolved = written(grid.training_recipe(paper, "r1-7b", "lora-r4-mlp"))
    resolved[section]["lr"] = 1e-4
    with pytest.raises(ConfigError) as err:
        parse_recipe(resolved, "paper")
    assert str(err.value) == message


def test_a_key_the_job_sets_and_an_unknown_section_are_refused():
    with pytest.raises(ConfigError, match=r"^r: sft.save_strategy is set by the training job, not the recipe$"):
        parse_recipe(recipe("full", sft={"save_strategy": "steps"}), "r")
    with pytest.raises(ConfigError, match=r"^r: unknown section 'batch' \(sections: sft, lora, safelora\)$"):
        parse_recipe({**recipe("full"), "batch": {}}, "r")


def test_the_recipes_sftconfig_and_loraconfig_values_reach_the_trainer(paper, tmp_path, tiny_model, train_data):
    """The paper's 7B LoRA recipe, as the train job reads it, builds the trainer on the tiny model:
    its SFTConfig values are the trainer's args, its LoraConfig the adapter's; a global batch of 4 on
    2 per device accumulates 2 steps (one process, model_split)."""
    config = copy.deepcopy(paper)
    config["training"]["lora"]["per_model"]["7B"]["global_batch"] = 4
    resolved = written(grid.training_recipe(config, "r1-7b", "lora-r4-mlp"))
    paths = sft.TrainPaths(
        train_data=train_data,
        base_model=str(tiny_model),
        state_dir=tmp_path / "state",
        checkpoint_dir=tmp_path / "ckpt",
        manifest=tmp_path / "manifest.json",
    )
    world = sft.WorldInfo(world_size=1, rank=0, local_rank=0)
    exporter = sft.EpochExporter(paths.checkpoint_dir, None, True)
    trainer = sft.build_trainer(parse_recipe(resolved), paths, world, exporter)
    args = trainer.args
    assert (args.learning_rate, args.num_train_epochs, args.gradient_accumulation_steps) == (5e-5, 10, 2)
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.weight_decay) == ("cosine", 0, 1e-4)
    assert (args.per_device_train_batch_size, args.max_length, args.seed, args.data_seed) == (2, 2048, 42, 42)
    assert (args.logging_steps, args.completion_only_loss, args.gradient_checkpointing) == (10, True, False)
    assert (args.bf16, args.fp16, args.save_strategy.value) == (False, False, "epoch")  # CPU: no mixed precision
    lora = trainer.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 16, 0.05)
    assert sorted(lora.target_modules) == ["down_proj", "gate_proj", "up_proj"]
