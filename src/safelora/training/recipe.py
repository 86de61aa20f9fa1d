"""A run's training recipe as the libraries take it (open-r1's pattern: the recipe file is the trainer's arguments).

The recipe file (`write_recipe`, from `safelora.config.training_recipe`) has three sections:

- `sft`: TRL `SFTConfig` fields under their own names, parsed by `HfArgumentParser.parse_dict`
  (TRL's `TrlParser` is one) together with the fields the job sets itself (`training.sft.sft_config`);
- `lora` (LoRA runs): PEFT `LoraConfig` fields, passed to `LoraConfig` as they are;
- `safelora`: the project's own options, `SafeLoraOptions`, parsed the same way.

A key that is not a field of its section's class is refused, naming the section and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safelora.config import ConfigError

SECTIONS = ("sft", "lora", "safelora")

# SFTConfig fields the job sets, not the recipe: how it saves, logs and loads data.
JOB_ARGS: dict[str, Any] = {
    "packing": False,  # one example per sequence, as the paper code
    "save_strategy": "epoch",  # a trainer checkpoint at each epoch end, published as epoch-<e>/
    "save_total_limit": 1,  # the state folder keeps the newest (resume); epochs are published copies
    "report_to": "none",  # the per-step log is the trainer's log history, published as trainer_state.json
    "dataloader_num_workers": 0,
}


@dataclass(frozen=True)
class SafeLoraOptions:
    """The project's options of a training run: every recipe value that is no SFTConfig or LoraConfig field."""

    model: str  # config `models` key
    run: str  # config `runs[].name`
    method: str  # full | lora
    model_source: dict  # config `models.<model>.source`
    dtype: str  # weights' dtype on GPU (CPU trains in float32)
    data_source: str  # config `training_data.source`
    data: dict  # that source's settings and `think`
    version: int  # config `versions.train`
    gpus: int  # the paper's GPU count (Appendix A.5)
    global_batch: int  # samples per optimizer step, kept by gradient accumulation
    parallelism: str  # model_split | data_parallel
    deepspeed: dict | None  # ZeRO settings {stage, offload_optimizer, offload_params}, or None
    ortho_reg: dict | None  # the orthogonality regularizer's settings, or None


@dataclass(frozen=True)
class Recipe:
    sft: dict[str, Any]  # the recipe's SFTConfig fields, as written
    declared: Any  # SFTConfig of those fields (TRL's defaults for the rest), on CPU: what the recipe asks
    lora: Any  # peft.LoraConfig, or None for full fine-tuning
    options: SafeLoraOptions


def parse_recipe(recipe: dict[str, Any], source: str = "recipe") -> Recipe:
    """Check a recipe's sections and keys against SFTConfig, LoraConfig and SafeLoraOptions."""
    unknown = [k for k in recipe if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    options = parse_dataclass(SafeLoraOptions, recipe.get("safelora") or {}, f"{source}: safelora")
    if (options.method == "lora") != ("lora" in recipe):
        raise ConfigError(f"{source}: a `lora` section is for method 'lora' and only it (method '{options.method}')")
    sft = dict(recipe.get("sft") or {})
    job_set = [k for k in sft if k in JOB_ARGS]
    if job_set:
        raise ConfigError(f"{source}: sft.{job_set[0]} is set by the training job, not the recipe")
    declared = sft_dataclass({**sft, "output_dir": ".", "use_cpu": True}, f"{source}: sft")
    lora = None
    if "lora" in recipe:
        from peft import LoraConfig

        try:
            lora = LoraConfig(**recipe["lora"])
        except (TypeError, ValueError) as err:  # an unknown key or a bad value
            raise ConfigError(f"{source}: lora: {err}") from err
    return Recipe(sft=sft, declared=declared, lora=lora, options=options)


def sft_dataclass(values: dict[str, Any], where: str) -> Any:
    from trl import SFTConfig

    return parse_dataclass(SFTConfig, values, where)


def parse_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """`HfArgumentParser(cls).parse_dict` (unknown keys are errors), its errors naming where."""
    from transformers import HfArgumentParser

    try:
        (parsed,) = HfArgumentParser(cls).parse_dict(values)
    except (TypeError, ValueError) as err:  # an unknown or missing key, or a value __post_init__ refuses
        raise ConfigError(f"{where}: {err}") from err
    return parsed
