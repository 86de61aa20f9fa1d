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

import contextlib
import errno
import json
import os
import shutil
import signal
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safelora.config import ConfigError, gradient_accumulation, layer_range_problem
from safelora.io import atomic_dir, atomic_write_json, read_jsonl
from safelora.locks import writer_lock
from safelora.training import published
from safelora.training.recipe import JOB_ARGS, Recipe, parse_recipe, sft_dataclass

# Exit code after a SIGTERM-triggered save: the job failed, so Snakemake's --retries (or SLURM's
# requeue) reruns it, and the rerun resumes from the saved state.
PREEMPTED_EXIT_CODE = 75

# The trainer's state file (transformers' TrainerState.save_to_json), published beside the epoch folders
# for its `log_history`: the run's per-step training log.
TRAINING_LOG = "trainer_state.json"

# Files of a trainer checkpoint that make up the model (everything else is optimizer/RNG state).
_STATE_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state", "trainer_state.json", "training_args.bin", "global_step")


@dataclass(frozen=True)
class TrainPaths:
    train_data: Path  # prompt/completion JSONL
    base_model: str  # local folder or hub id
    state_dir: Path  # resumable trainer state
    checkpoint_dir: Path  # where epoch-<e>/ folders are published
    manifest: Path  # written last
    svd: Path | None = None  # cached base SVD for the orthogonality regularizer


@dataclass(frozen=True)
class WorldInfo:
    world_size: int
    rank: int
    local_rank: int

    @classmethod
    def from_env(cls) -> WorldInfo:
        return cls(
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def deepspeed_config(settings: dict[str, Any], bf16: bool, fp16: bool = False) -> dict[str, Any]:
    """ZeRO config; 16-bit weights are gathered on save so checkpoints load without DeepSpeed.
    fp16 (the paper code's 32B recipe, ds_config_zero3_32b.json) adds DeepSpeed's dynamic loss scaler."""
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
        "fp16": {"enabled": "auto" if fp16 else False},
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


def _device_map(recipe: Recipe, on_gpu: bool) -> str | None:
    """`auto` (split the layers over every visible GPU, as the paper code) for `model_split` on GPUs."""
    return "auto" if on_gpu and recipe.options.parallelism == "model_split" else None


def _load_model_and_tokenizer(recipe: Recipe, base_model: str, on_gpu: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=_torch_dtype(recipe.options.dtype, on_gpu), device_map=_device_map(recipe, on_gpu)
    )
    if recipe.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, recipe.lora)
    return model, tokenizer


def check_lora_layers(recipe: Recipe, base_model: str) -> None:
    """Reject a LoRA layer range outside the base model, reading only its config (no weights).

    Planning checks this for local `source.path` models; hub and GGUF-converted models are checked here.
    """
    layers = recipe.lora.layers_to_transform if recipe.lora is not None else None
    if not layers:
        return
    from transformers import AutoConfig

    num_layers = AutoConfig.from_pretrained(base_model).get_text_config().num_hidden_layers
    problem = layer_range_problem([min(layers), max(layers)], num_layers)
    if problem:
        opts = recipe.options
        raise ConfigError(f"runs ('{opts.run}').layers: {problem} of model '{opts.model}' ({base_model})")


def sft_config(recipe: Recipe, paths: TrainPaths, world: WorldInfo, on_gpu: bool) -> Any:
    """The trainer's `SFTConfig`: the recipe's fields, the job's (`recipe.JOB_ARGS`) and the device's.

    Gradient accumulation keeps the recipe's global batch on the job's processes; on CPU (the demo,
    the tests) there is no mixed precision.
    """
    declared, opts = recipe.declared, recipe.options
    bf16, fp16 = on_gpu and declared.bf16, on_gpu and declared.fp16
    device_args = {
        "output_dir": str(paths.state_dir),
        "gradient_accumulation_steps": gradient_accumulation(
            opts.global_batch, declared.per_device_train_batch_size, world.world_size
        ),
        "bf16": bf16,
        "fp16": fp16,
        "use_cpu": not on_gpu,
        # A dict, built by every rank from the recipe: no file that rank 0 writes while the others read it.
        "deepspeed": deepspeed_config(opts.deepspeed, bf16, fp16) if opts.deepspeed else None,
        "ddp_find_unused_parameters": False if world.world_size > 1 else None,
    }
    return sft_dataclass({**recipe.sft, **JOB_ARGS, **device_args}, "recipe: sft")


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


class DiskFullError(OSError):
    """The disk filled up while the trainer saved; names the path, the space free and the space needed."""


def checkpoint_problem(folder: Path) -> str | None:
    """Why a trainer checkpoint cannot be resumed from, or None when it is complete.

    Complete: trainer_state.json for this step, model or adapter weights whose safetensors headers
    match their sizes, and the optimizer state (optimizer.pt and scheduler.pt, or DeepSpeed's
    global_step<N>/) as readable torch archives. Hugging Face writes trainer_state.json last.
    """
    try:
        step = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json is unreadable ({err})"
    if folder.name != f"checkpoint-{step}":
        return f"trainer_state.json is for step {step}"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no model or adapter weights (*.safetensors)"
    zero = folder / f"global_step{step}"
    archives = sorted(zero.glob("*.pt")) if zero.is_dir() else [folder / "optimizer.pt", folder / "scheduler.pt"]
    if not archives:
        return f"{zero.name}/ holds no optimizer state"
    for path in weights + archives:
        problem = _unreadable(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def _unreadable(path: Path) -> str | None:
    """Why a safetensors file or torch archive cannot be loaded (headers and sizes only, no tensors read)."""
    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        else:
            zipfile.ZipFile(path).close()  # torch.save writes a zip; a cut one has no central directory
    except FileNotFoundError:
        return "is missing"
    except Exception as err:  # noqa: BLE001 - any failure to open means the file is cut or corrupt
        return f"is cut or corrupt ({type(err).__name__}: {err})"
    return None


def last_complete_checkpoint(state_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete trainer checkpoint, and the newer incomplete ones skipped with the reason."""
    folders = sorted(
        (p for p in state_dir.glob("checkpoint-*") if p.name[len("checkpoint-") :].isdigit()),
        key=lambda p: int(p.name[len("checkpoint-") :]),
    )
    skipped = []
    for folder in reversed(folders):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def resume_checkpoint(paths: TrainPaths, exporter: EpochExporter) -> str | None:
    """Where to resume: the last complete checkpoint, once every epoch up to it is published.

    Incomplete checkpoints (a kill or a full disk while saving) are removed, saying why. The
    epoch a checkpoint ends is re-published if the job died before exporting it; an earlier
    epoch that is missing (a deleted folder) cannot be rebuilt from the state, so training
    restarts from the first step.
    """
    checkpoint, skipped = last_complete_checkpoint(paths.state_dir)
    for folder, problem in skipped:
        print(f"skipping incomplete checkpoint {folder}: {problem}", flush=True)
        if exporter.is_main:
            shutil.rmtree(folder, ignore_errors=True)
    if checkpoint is None:
        return None
    epoch = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["epoch"] or 0.0
    done = int(epoch + 1e-6)
    missing = [e for e in range(1, done + 1) if not (paths.checkpoint_dir / f"epoch-{e}").is_dir()]
    if missing == [done] and abs(epoch - done) < 1e-6:
        print(f"publishing epoch {done} from {checkpoint} (the job stopped before exporting it)", flush=True)
        if exporter.is_main:
            export_checkpoint(checkpoint, paths.checkpoint_dir / f"epoch-{done}", exporter.tokenizer)
    elif missing:
        print(
            f"epochs {missing} are not in {paths.checkpoint_dir} and {checkpoint} is past them: "
            "training restarts from the first step",
            flush=True,
        )
        if exporter.is_main:
            for folder in paths.state_dir.glob("checkpoint-*"):
                shutil.rmtree(folder)
        return None
    return str(checkpoint)


def require_checkpoint(ref: str | None) -> None:
    """Fail naming a published epoch checkpoint (results/checkpoints/…/epoch-<e>) that is gone, and how
    to rebuild it, or whose files are not the ones its training manifest records (published.verify)."""
    manifest = published.manifest_of(Path(ref)) if ref else None
    if manifest is None:
        return
    if not Path(ref).exists():
        raise FileNotFoundError(
            f"checkpoint {ref} is missing (deleted or pruned after training; {manifest} lists it). "
            f"Rebuild it by retraining the run: snakemake --forcerun {manifest}"
        )
    published.verify(Path(ref))


def _write_failure(err: BaseException) -> bool:
    """Whether an exception (or its cause) is a failed file write: ENOSPC, torch's or safetensors' I/O error."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if any(s in str(err) for s in ("No space left", "StorageFull", "iostream error", "file write failed")):
            return True
        err = err.__cause__ or err.__context__
    return False


def checkpoint_bytes(model: Any, method: str) -> int:
    """Disk a trainer checkpoint needs: saved weights (adapter or whole model) plus AdamW's two moments."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    saved = trainable if method == "lora" else sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return saved + moments


def disk_full_error(paths: TrainPaths, trainer: Any, method: str) -> DiskFullError:
    """The error for a failed save: the incomplete folder, the space free and what a checkpoint takes
    (the last complete checkpoint's size, or the estimate from the model when there is none)."""
    complete, skipped = last_complete_checkpoint(paths.state_dir)
    target = skipped[0][0] if skipped else paths.state_dir
    need = (
        sum(p.stat().st_size for p in complete.rglob("*") if p.is_file())
        if complete
        else checkpoint_bytes(trainer.model, method)
    )
    return DiskFullError(
        errno.ENOSPC,
        f"disk full while saving {target}: {_human(shutil.disk_usage(paths.state_dir).free)} free, a checkpoint "
        f"needs {_human(need)} (plus the epoch's published weights in {paths.checkpoint_dir}). "
        "Free space and rerun: training resumes from the last complete checkpoint",
    )


def _human(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def build_trainer(recipe: Recipe, paths: TrainPaths, world: WorldInfo, exporter: EpochExporter) -> Any:
    import torch
    from datasets import Dataset
    from transformers import set_seed

    on_gpu = torch.cuda.is_available()
    args = sft_config(recipe, paths, world, on_gpu)
    set_seed(args.seed)  # before the model exists: LoRA's initialization draws from the RNG
    model, tokenizer = _load_model_and_tokenizer(recipe, paths.base_model, on_gpu)
    exporter.tokenizer = tokenizer
    records = read_jsonl(paths.train_data)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    trainer_cls, extra = _trainer_class(recipe, paths)
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[_as_callback(exporter)],
        **extra,
    )


def _trainer_class(recipe: Recipe, paths: TrainPaths) -> tuple[Any, dict[str, Any]]:
    from trl import SFTTrainer

    reg = recipe.options.ortho_reg
    if not reg:
        return SFTTrainer, {}
    from safelora.training.ortho_reg import OrthoRegConfig, OrthoSFTTrainer

    config = OrthoRegConfig(
        mode=reg["mode"],
        beta=reg["beta"],
        rank=reg["k"],
        k_schedule=reg["k_schedule"],
        formula=reg["formula"],
        weighted=reg["weighted"],
        normalize=reg["normalize"],
        reduction=reg["reduction"],
        eps=reg["eps"],
        svd_cache=str(paths.svd) if paths.svd else None,
        seed=recipe.declared.seed,
    )
    return OrthoSFTTrainer, {"ortho": config}


def train(recipe_values: dict[str, Any], paths: TrainPaths, source: str = "recipe") -> int:
    """Run (or resume) one training job from a recipe (`source` names it in errors); return the exit code."""
    recipe = parse_recipe(recipe_values, source)
    check_lora_layers(recipe, paths.base_model)
    world = WorldInfo.from_env()
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    # One trainer per state folder: a second one (an orphan of a killed driver beside its rerun)
    # would remove the first's in-progress checkpoint as incomplete. Rank 0 holds it for the job.
    with writer_lock(paths.state_dir, "train") if world.rank == 0 else contextlib.nullcontext():
        return _train(recipe, paths, world)


def _train(recipe: Recipe, paths: TrainPaths, world: WorldInfo) -> int:
    exporter = EpochExporter(paths.checkpoint_dir, tokenizer=None, is_main=world.rank == 0)
    exporter.install_sigterm_handler()
    trainer = build_trainer(recipe, paths, world, exporter)
    resume = resume_checkpoint(paths, exporter)
    if resume:
        print(f"resuming from {resume}", flush=True)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except Exception as err:
        if _write_failure(err) and world.rank == 0:
            raise disk_full_error(paths, trainer, recipe.options.method) from err
        raise
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


def write_manifest(recipe: Recipe, paths: TrainPaths, world: WorldInfo, trainer: Any) -> None:
    """The run's manifest, after its training log (`trainer_state.json` beside the epoch folders,
    the trainer's own file: `log_history` has loss, learning rate, grad norm and `ortho_penalty` per
    logged step)."""
    losses = epoch_losses(trainer.state.log_history)
    epochs = []
    for epoch in range(1, round(trainer.args.num_train_epochs) + 1):
        folder = paths.checkpoint_dir / f"epoch-{epoch}"
        if not folder.is_dir():
            raise RuntimeError(f"epoch {epoch} finished but {folder} was not published")
        entry = {"epoch": epoch, "path": str(folder), "train_loss": losses.get(epoch)}
        epochs.append({**entry, "files": published.file_records(folder)})
    log = paths.checkpoint_dir / TRAINING_LOG
    tmp = log.with_name(f".{log.name}.tmp")
    trainer.state.save_to_json(str(tmp))
    tmp.replace(log)
    opts, args = recipe.options, trainer.args
    atomic_write_json(
        paths.manifest,
        {
            "model": opts.model,
            "run": opts.run,
            "method": opts.method,
            "base_model": paths.base_model,
            "kind": "adapter" if opts.method == "lora" else "full",
            "world_size": world.world_size,
            "per_device_batch": args.per_device_train_batch_size,
            "gradient_accumulation": args.gradient_accumulation_steps,
            "global_batch": args.per_device_train_batch_size * world.world_size * args.gradient_accumulation_steps,
            "global_step": trainer.state.global_step,
            "epochs": epochs,
            "training_log": str(log),
        },
    )
