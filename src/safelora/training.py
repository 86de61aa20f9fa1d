"""Safety SFT: full fine-tuning (optionally under DeepSpeed ZeRO) and LoRA through one code path.

`parallelism: model_split` (the paper code's layout): one process, the model split over the job's
GPUs by `device_map="auto"`; `data_parallel`: one process per GPU (DDP or DeepSpeed). Either way
the configured global batch is kept by gradient accumulation derived from the world size.
Resumable trainer state lives in a state folder keyed by the recipe hash, outside Snakemake's
outputs, so a rerun or requeue after a crash, SIGTERM (SLURM preemption) or SIGKILL resumes from
the last saved state. At each epoch end the model (full) or adapter (LoRA) is published
atomically as `epoch-<e>/`; the manifest is written last.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safelora.config import gradient_accumulation
from safelora.io import atomic_dir, atomic_write_json, read_jsonl

# Exit code after a SIGTERM-triggered save: the job failed, so Snakemake's --retries (or SLURM's
# requeue) reruns it, and the rerun resumes from the saved state.
PREEMPTED_EXIT_CODE = 75

# Files of a trainer checkpoint that make up the model (everything else is optimizer/RNG state).
_STATE_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state", "trainer_state.json", "training_args.bin", "global_step")


@dataclass(frozen=True)
class TrainPaths:
    train_data: Path      # prompt/completion JSONL
    base_model: str       # local folder or hub id
    state_dir: Path       # resumable trainer state
    checkpoint_dir: Path  # where epoch-<e>/ folders are published
    manifest: Path        # written last
    svd: Path | None = None  # cached base SVD for the orthogonality regularizer


@dataclass(frozen=True)
class WorldInfo:
    world_size: int
    rank: int
    local_rank: int

    @classmethod
    def from_env(cls) -> "WorldInfo":
        return cls(
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def deepspeed_config(settings: dict[str, Any], bf16: bool) -> dict[str, Any]:
    """ZeRO config; 16-bit weights are gathered on save so checkpoints load without DeepSpeed."""
    zero: dict[str, Any] = {"stage": settings["stage"], "overlap_comm": True, "contiguous_gradients": True}
    if settings.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if settings.get("offload_params"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if settings["stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto" if bf16 else False},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def _torch_dtype(name: str, on_gpu: bool) -> Any:
    import torch

    if not on_gpu:
        return torch.float32  # bf16 matmuls on CPU are slow and lossy; the demo and tests train in fp32
    return getattr(torch, name)


def _device_map(recipe: dict[str, Any], on_gpu: bool) -> str | None:
    """`auto` (split the layers over every visible GPU, as the paper code) for `model_split` on GPUs."""
    return "auto" if on_gpu and recipe["parallelism"] == "model_split" else None


def _load_model_and_tokenizer(recipe: dict[str, Any], base_model: str, on_gpu: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=_torch_dtype(recipe["dtype"], on_gpu), device_map=_device_map(recipe, on_gpu)
    )
    if recipe["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = recipe["lora"]
        config = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["targets"]),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model, tokenizer


def sft_config(recipe: dict[str, Any], paths: TrainPaths, world: WorldInfo, on_gpu: bool) -> Any:
    from trl import SFTConfig

    batch = recipe["batch"]
    accumulation = gradient_accumulation(batch["global_batch"], batch["per_device_batch"], world.world_size)
    bf16 = on_gpu and recipe["mixed_precision"] == "bf16"
    fp16 = on_gpu and recipe["mixed_precision"] == "fp16"
    deepspeed = None
    if recipe.get("deepspeed"):
        ds_path = paths.state_dir / "deepspeed.json"
        if world.rank == 0:
            atomic_write_json(ds_path, deepspeed_config(recipe["deepspeed"], bf16))
        deepspeed = str(ds_path)
    return SFTConfig(
        output_dir=str(paths.state_dir),
        num_train_epochs=recipe["epochs"],
        per_device_train_batch_size=batch["per_device_batch"],
        gradient_accumulation_steps=accumulation,
        learning_rate=recipe["learning_rate"],
        weight_decay=recipe["weight_decay"],
        lr_scheduler_type=recipe["lr_scheduler"],
        warmup_steps=recipe["warmup_steps"],
        gradient_checkpointing=recipe.get("gradient_checkpointing", False),
        max_length=recipe["data"]["max_length"],
        completion_only_loss=recipe["completion_only_loss"],
        packing=False,
        bf16=bf16,
        fp16=fp16,
        use_cpu=not on_gpu,
        deepspeed=deepspeed,
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=1,
        seed=recipe["seed"],
        data_seed=recipe["seed"],
        report_to="none",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if world.world_size > 1 else None,
    )


class EpochExporter:
    """Trainer callback: publish each epoch's model files atomically, and stop cleanly on SIGTERM."""

    def __init__(self, checkpoint_dir: Path, tokenizer: Any, is_main: bool) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.tokenizer = tokenizer
        self.is_main = is_main
        self.preempted = False

    def install_sigterm_handler(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.preempted = True

    # transformers.TrainerCallback protocol (duck-typed; see _as_callback)
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.preempted:
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = state.epoch or 0.0
        if not self.is_main or abs(epoch - round(epoch)) > 1e-6:
            return
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        export_checkpoint(source, self.checkpoint_dir / f"epoch-{round(epoch)}", self.tokenizer)


def export_checkpoint(source: Path, target: Path, tokenizer: Any) -> None:
    """Copy the model files (not optimizer or RNG state) of a trainer checkpoint, atomically."""
    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            if item.name.startswith(_STATE_ONLY) or item.is_dir():
                continue
            shutil.copy2(item, tmp / item.name)
        tokenizer.save_pretrained(tmp)


def _as_callback(exporter: EpochExporter) -> Any:
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        on_step_end = staticmethod(exporter.on_step_end)
        on_save = staticmethod(exporter.on_save)

    return _Callback()


def last_checkpoint(state_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(state_dir)) if state_dir.is_dir() else None


def build_trainer(recipe: dict[str, Any], paths: TrainPaths, world: WorldInfo, exporter: EpochExporter) -> Any:
    import torch
    from datasets import Dataset
    from transformers import set_seed

    on_gpu = torch.cuda.is_available()
    set_seed(recipe["seed"])  # before the model exists: LoRA's initialization draws from the RNG
    model, tokenizer = _load_model_and_tokenizer(recipe, paths.base_model, on_gpu)
    exporter.tokenizer = tokenizer
    records = read_jsonl(paths.train_data)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    args = sft_config(recipe, paths, world, on_gpu)
    trainer_cls, extra = _trainer_class(recipe, paths)
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[_as_callback(exporter)],
        **extra,
    )


def _trainer_class(recipe: dict[str, Any], paths: TrainPaths) -> tuple[Any, dict[str, Any]]:
    from trl import SFTTrainer

    reg = recipe.get("ortho_reg")
    if not reg:
        return SFTTrainer, {}
    from safelora.ortho_reg import OrthoRegConfig, OrthoSFTTrainer

    config = OrthoRegConfig(
        mode=reg["mode"],
        beta=reg["beta"],
        rank=reg["k"],
        formula=reg["formula"],
        weighted=reg["weighted"],
        normalize=reg["normalize"],
        reduction=reg["reduction"],
        svd_cache=str(paths.svd) if paths.svd else None,
        seed=recipe["seed"],
    )
    return OrthoSFTTrainer, {"ortho": config}


def train(recipe: dict[str, Any], paths: TrainPaths) -> int:
    """Run (or resume) one training job; return the process exit code."""
    world = WorldInfo.from_env()
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    exporter = EpochExporter(paths.checkpoint_dir, tokenizer=None, is_main=world.rank == 0)
    exporter.install_sigterm_handler()
    trainer = build_trainer(recipe, paths, world, exporter)
    resume = last_checkpoint(paths.state_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if exporter.preempted:
        print(f"SIGTERM: state saved in {paths.state_dir}; rerun to resume", flush=True)
        return PREEMPTED_EXIT_CODE
    if world.rank == 0:
        write_manifest(recipe, paths, world, trainer)
    return 0


def epoch_losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    """Mean logged training loss per epoch (epoch e covers logged epochs in (e-1, e])."""
    sums: dict[int, list[float]] = {}
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            epoch = max(1, int(-(-entry["epoch"] // 1)))  # ceiling
            sums.setdefault(epoch, []).append(float(entry["loss"]))
    return {epoch: sum(values) / len(values) for epoch, values in sums.items()}


def write_manifest(recipe: dict[str, Any], paths: TrainPaths, world: WorldInfo, trainer: Any) -> None:
    losses = epoch_losses(trainer.state.log_history)
    epochs = []
    for epoch in range(1, recipe["epochs"] + 1):
        folder = paths.checkpoint_dir / f"epoch-{epoch}"
        if not folder.is_dir():
            raise RuntimeError(f"epoch {epoch} finished but {folder} was not published")
        epochs.append({"epoch": epoch, "path": str(folder), "train_loss": losses.get(epoch)})
    batch = recipe["batch"]
    atomic_write_json(
        paths.manifest,
        {
            "model": recipe["model"],
            "run": recipe["run"],
            "method": recipe["method"],
            "base_model": paths.base_model,
            "kind": "adapter" if recipe["method"] == "lora" else "full",
            "world_size": world.world_size,
            "per_device_batch": batch["per_device_batch"],
            "gradient_accumulation": trainer.args.gradient_accumulation_steps,
            "global_batch": batch["per_device_batch"] * world.world_size * trainer.args.gradient_accumulation_steps,
            "global_step": trainer.state.global_step,
            "epochs": epochs,
            "log_history": trainer.state.log_history,
        },
    )
