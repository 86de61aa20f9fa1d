"""Training on a tiny real model: LoRA, full, regularized LoRA, ZeRO-3, resume after SIGTERM, seeds."""

import dataclasses
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from tiny_model import recipe

from safelora.config import ConfigError, lora_fields
from safelora.training import sft
from safelora.training.recipe import parse_recipe
from safelora.training.sft import PREEMPTED_EXIT_CODE, TrainPaths


def paths(tmp_path, tiny_model, train_data, name="run", svd=None):
    return TrainPaths(
        train_data=train_data,
        base_model=str(tiny_model),
        state_dir=tmp_path / name / "state",
        checkpoint_dir=tmp_path / name / "ckpt",
        manifest=tmp_path / name / "manifest.json",
        svd=svd,
    )


def training_log(p):
    """The run's published training log, as its manifest names it (the trainer's trainer_state.json)."""
    log = json.loads(p.manifest.read_text())["training_log"]
    assert log == str(p.checkpoint_dir / "trainer_state.json")
    return json.loads((p.checkpoint_dir / "trainer_state.json").read_text())


def weights(folder):
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(folder / name)


def test_lora_writes_an_adapter_per_epoch_and_a_manifest(tmp_path, tiny_model, train_data):
    p = paths(tmp_path, tiny_model, train_data)
    assert sft.train(recipe("lora"), p) == 0
    manifest = json.loads(p.manifest.read_text())
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2] and manifest["kind"] == "adapter"
    assert manifest["global_batch"] == 4 and manifest["gradient_accumulation"] == 2 and manifest["global_step"] == 6
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for epoch in manifest["epochs"]:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), epoch["path"])
        assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert not torch.equal(
        *[
            weights(p.checkpoint_dir / f"epoch-{e}")["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"]
            for e in (1, 2)
        ]
    )


def test_full_fine_tuning_same_code_path(tmp_path, tiny_model, train_data):
    p = paths(tmp_path, tiny_model, train_data)
    assert sft.train(recipe("full", sft={"num_train_epochs": 1}), p) == 0
    manifest = json.loads(p.manifest.read_text())
    assert manifest["kind"] == "full"
    folder = p.checkpoint_dir / "epoch-1"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()
    assert not any(n.startswith(("optimizer", "scheduler", "rng_state")) for n in os.listdir(folder))


PAPER_TEXT = {"formula": "paper", "weighted": True, "normalize": False, "k_schedule": "fixed", "eps": 1e-12}
PAPER_CODE = {"formula": "span", "weighted": True, "normalize": True, "k_schedule": "paper_code", "eps": 1e-8}


@pytest.mark.parametrize(("mode", "penalty"), [("col", PAPER_TEXT), ("both", PAPER_CODE)])
def test_regularized_lora_trains_and_logs_the_penalty(tmp_path, tiny_model, train_data, mode, penalty):
    p = paths(tmp_path, tiny_model, train_data)
    reg = {"mode": mode, "beta": 1.0, "k": 8, "reduction": "sum", **penalty}
    r = recipe("lora", sft={"num_train_epochs": 1}, ortho_reg=reg)
    assert sft.train(r, p) == 0
    history = training_log(p)["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [e["step"] for e in steps] == [1, 2, 3]  # logging_steps 1: every optimizer step
    assert all({"ortho_penalty", "learning_rate", "grad_norm", "epoch"} <= set(e) for e in steps)
    assert steps[-1]["ortho_penalty"] > 0  # B starts at zero (ΔW = 0, no penalty) and moves
    assert (p.checkpoint_dir / "epoch-1" / "adapter_model.safetensors").exists()


def test_layer_range_lora_trains_exactly_the_named_modules(tmp_path, tiny_model, train_data):
    """`targets: [up_proj]`, `layers: [1, 1]` (the paper code's `lora_up_proj_only_from1_to1`): PEFT wraps
    up_proj of layer 1 alone, the adapter file holds its factors alone, adapter_config.json says so."""
    p = paths(tmp_path, tiny_model, train_data)
    r = recipe("lora", sft={"num_train_epochs": 1}, lora=lora_fields(1, ["up_proj"], 16, 0.0, layers=[1, 1]))
    assert sft.train(r, p) == 0
    adapter = p.checkpoint_dir / "epoch-1"
    assert sorted(weights(adapter)) == [f"base_model.model.model.layers.1.mlp.up_proj.lora_{f}.weight" for f in "AB"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["target_modules"], config["layers_to_transform"], config["layers_pattern"]) == (
        1, ["up_proj"], [1], "layers",
    )  # fmt: skip
    assert float(weights(adapter)["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"].abs().sum()) > 0


def test_layers_outside_the_model_stop_the_job_before_any_weight_is_read(tmp_path, tiny_model, train_data):
    """A hub or GGUF model's layer count is known only to the job: it reads the config (here a folder with
    config.json and no weights at all) and names the run and key."""
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model / "config.json").read_text())
    p = dataclasses.replace(paths(tmp_path, tiny_model, train_data), base_model=str(config_only))
    r = recipe("lora", lora=lora_fields(1, ["up_proj"], 16, 0.0, layers=[1, 2]))
    with pytest.raises(ConfigError) as err:
        sft.train(r, p)
    assert str(err.value) == (
        f"runs ('lora').layers: layers [1, 2] reach past the model's 2 decoder layers (0-1) of model 'tiny' "
        f"({config_only})"
    )
    assert not p.state_dir.exists()


def test_same_seed_gives_identical_losses(tmp_path, tiny_model, train_data):
    losses = []
    for name in ("a", "b"):
        p = paths(tmp_path, tiny_model, train_data, name)
        sft.train(recipe("lora", sft={"num_train_epochs": 1}), p)
        losses.append([e["loss"] for e in training_log(p)["log_history"] if "loss" in e])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_sigterm_mid_epoch_saves_state_and_the_rerun_resumes_to_the_same_weights(
    tmp_path, tiny_model, train_data, monkeypatch
):
    """Tolerance: max |difference| 1e-6 between resumed and uninterrupted final adapters (float32, CPU)."""
    whole = paths(tmp_path, tiny_model, train_data, "whole")
    assert sft.train(recipe("lora"), whole) == 0

    from transformers import TrainerCallback

    class SigtermAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # mid-epoch 2 (3 optimizer steps per epoch)
                os.kill(os.getpid(), signal.SIGTERM)

    build = sft.build_trainer

    def build_with_sigterm(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(SigtermAtStep())
        return trainer

    split = paths(tmp_path, tiny_model, train_data, "split")
    monkeypatch.setattr(sft, "build_trainer", build_with_sigterm)
    assert sft.train(recipe("lora"), split) == PREEMPTED_EXIT_CODE
    monkeypatch.undo()
    # The handler only flags; the trainer saves at the end of the next step (step 5 of 6).
    assert not split.manifest.exists() and [c.name for c in split.state_dir.glob("checkpoint-*")] == ["checkpoint-5"]
    assert (split.checkpoint_dir / "epoch-1").is_dir() and not (split.checkpoint_dir / "epoch-2").exists()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert sft.train(recipe("lora"), split) == 0
    a, b = weights(whole.checkpoint_dir / "epoch-2"), weights(split.checkpoint_dir / "epoch-2")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


RANK_ARGS = """
import json, sys
from pathlib import Path
from safelora.config import ConfigError
from safelora.training import sft
from safelora.training.recipe import parse_recipe
recipe, state = parse_recipe(json.loads(sys.argv[1])), Path(sys.argv[2])
paths = sft.TrainPaths(train_data=state / "unused.jsonl", base_model="unused", state_dir=state,
                            checkpoint_dir=state / "ckpt", manifest=state / "manifest.json")
configs = [sft.sft_config(recipe, paths, sft.WorldInfo(2, rank, rank), on_gpu=False).hf_deepspeed_config.config
           for rank in (1, 0)]
print(json.dumps(configs))
"""


def test_a_rank_gets_the_deepspeed_config_before_rank_0_has_written_anything(tmp_path, repo):
    """Rank 1 builds its trainer arguments first, with rank 0 not started (state folder absent):
    the ZeRO config must not come from a file rank 0 writes. In a subprocess: DeepSpeed's config
    object is process-wide state."""
    import subprocess
    import sys

    r = recipe("full", deepspeed={"stage": 3, "offload_optimizer": False, "offload_params": False})
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-c", RANK_ARGS, json.dumps(r), str(state)],
        env={**os.environ, "PYTHONPATH": str(repo / "src")},  # this checkout's package
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank1, rank0 = json.loads(result.stdout.splitlines()[-1])
    assert rank1 == rank0
    assert rank1["zero_optimization"]["stage"] == 3
    assert rank1["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert not state.exists()  # nothing shared on disk


@pytest.mark.parametrize("completion_only", [True, False])
def test_loss_scope_switch(tmp_path, tiny_model, train_data, completion_only):
    """completion_only_loss masks the prompt out of the labels; off, every real token is a label
    (TRL 0.15/0.16's behaviour on prompt/completion data, see docs/training.md)."""
    p = paths(tmp_path, tiny_model, train_data)
    exporter = sft.EpochExporter(p.checkpoint_dir, tokenizer=None, is_main=True)
    world = sft.WorldInfo(world_size=1, rank=0, local_rank=0)
    r = recipe("lora", sft={"completion_only_loss": completion_only})
    trainer = sft.build_trainer(parse_recipe(r), p, world, exporter)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled, tokens = int((batch["labels"] != -100).sum()), int(batch["attention_mask"].sum())
    if completion_only:
        assert 0 < labelled < tokens
    else:
        assert labelled == tokens


def test_training_string_puts_think_in_the_loss_only_in_the_paper_code_format(tmp_path, deepseek_model, repo):
    """One DirectRefusal-style row (the demo data's first) both ways through build_trainer (TRL's
    SFTTrainer, completion-only loss): the paper code's string (train.py:147-148) trains on
    `<think>` with no newline after it; R1's chat template puts `<think>\n` in the prompt. Prints
    both renderings (token ids, text, which tokens are in the loss) with the tiny BPE tokenizer that
    has R1-Distill's special tokens (its ids and word pieces are not R1's)."""
    from transformers import AutoTokenizer

    from safelora.data import build_examples, load_refusal_rows
    from safelora.io import atomic_write_jsonl

    tokenizer = AutoTokenizer.from_pretrained(deepseek_model)
    source = {"path": str(repo / "data/demo/refusals.jsonl"), "rows": 1, "prompt_field": "prompt"}
    rows = load_refusal_rows({**source, "response_field": "refusal", "response_marker": "Answer:"})
    world = sft.WorldInfo(world_size=1, rank=0, local_rank=0)
    think = tokenizer.convert_tokens_to_ids("<think>")
    in_loss = {}
    for fmt in ("paper_code", "chat_template"):
        data = tmp_path / f"{fmt}.jsonl"
        [example] = build_examples(rows, tokenizer, "I should not answer this question!", fmt)
        atomic_write_jsonl(data, [example])
        p = paths(tmp_path, deepseek_model, data, name=fmt)
        exporter = sft.EpochExporter(p.checkpoint_dir, None, True)
        trainer = sft.build_trainer(parse_recipe(recipe("lora")), p, world, exporter)
        batch = next(iter(trainer.get_train_dataloader()))
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert ids == tokenizer(example["prompt"] + example["completion"])["input_ids"]
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
        in_loss[fmt] = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert in_loss[fmt] == ids[len(ids) - len(in_loss[fmt]) :]  # the loss covers the tail
        print(f"\n== {fmt}: prompt {example['prompt']!r}, completion {example['completion']!r}")
        print(f"token ids: {ids}")
        tokens = (f"{tokenizer.decode([i])!r}{'*' * (label != -100)}" for i, label in zip(ids, labels, strict=True))
        print("tokens (* = in the loss):", " ".join(tokens))
    code, chat = in_loss["paper_code"], in_loss["chat_template"]
    assert code[0] == think and tokenizer.decode(code[1:3]).startswith("I should")  # no newline after <think>
    assert think not in chat and tokenizer.decode(chat[:2]).startswith("I should")  # <think>\n is prompt
    close = tokenizer.convert_tokens_to_ids("</think>")
    refusals = [tokenizer.decode(t[t.index(close) + 1 :]) for t in (code, chat)]
    assert refusals == [" I'm sorry, but I can't help with that.<｜end▁of▁sentence｜>", refusals[0][1:]]  # unstripped


@pytest.mark.slow
def test_full_fine_tuning_under_deepspeed_zero3_on_cpu(tmp_path, tiny_model, train_data, repo):
    """One gloo process, as torchrun sets it up, through the real CLI. It runs in a subprocess:
    ZeRO-3 leaves process-wide state (zero.Init, a process group) that would leak into other tests.
    Checkpoints are the consolidated 16-bit-gather saves and load without DeepSpeed."""
    import subprocess
    import sys

    import yaml

    recipe_path = tmp_path / "recipe.yaml"
    r = recipe(
        "full",
        sft={"num_train_epochs": 1},
        parallelism="data_parallel",
        deepspeed={"stage": 3, "offload_optimizer": False, "offload_params": False},
    )
    recipe_path.write_text(yaml.safe_dump(r))
    p = paths(tmp_path, tiny_model, train_data)
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29533",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            str(repo / "workflow_scripts/train.py"),
            "--recipe",
            str(recipe_path),
            "--train-data",
            str(train_data),
            "--base",
            str(tiny_model),
            "--state-dir",
            str(p.state_dir),
            "--checkpoint-dir",
            str(p.checkpoint_dir),
            "--manifest",
            str(p.manifest),
            "--mem-mb",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(p.checkpoint_dir / "epoch-1")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    trained, initial = model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    assert trained.shape == initial.shape == (256, 128)
    assert not torch.equal(trained, initial)


def test_the_32b_recipes_zero3_config_offloads_to_cpu_in_fp16():
    """The paper code's ds_config_zero3_32b.json: ZeRO-3, optimizer and parameters on the CPU, fp16
    with DeepSpeed's loss scaler ("auto": the Trainer's fp16 flag fills it)."""
    ds = sft.deepspeed_config({"stage": 3, "offload_optimizer": True, "offload_params": True}, bf16=False, fp16=True)
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert (ds["fp16"]["enabled"], ds["bf16"]["enabled"]) == ("auto", False)
