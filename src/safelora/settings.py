"""What a rule hands a job's script: one typed settings object per stage.

Each class is built from the schema-validated config (its defaults filled by `validate_schema` or
`complete_config`) by its `from_config`, the one place a config key is read for that stage; the
rule passes it to the script as JSON (`to_json`, a param, so any change reruns the job) and the
script reads it back with `from_json`, which checks every field once: a missing, unknown or
mistyped key is an error naming the class and the key. No field has a default: a default lives
in the config schema only. Standard library only, so a script's `--help` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any, Self

from safelora.io import stable_json


class SettingsError(argparse.ArgumentTypeError, ValueError):
    """Settings that do not fit their class; as an argparse `type=`, its message is the usage error."""


class Settings:
    """`to_json` / `from_json` for the frozen dataclasses below; `from_json` is each script's
    `--settings` type (`parser.add_argument("--settings", type=GenerationSettings.from_json)`)."""

    def to_json(self) -> str:
        return stable_json(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str) -> Self:
        """The settings a rule passed, checked against this class (SettingsError names the key)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SettingsError(f"{cls.__name__}: not JSON ({err}): {text[:200]}") from None
        return _typed(cls, data, cls.__name__)


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as type `hint`: dataclasses field by field, lists item by item."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected an object, got {value!r}")
        fields = {f.name for f in dataclasses.fields(hint)}
        missing, unknown = sorted(fields - value.keys()), sorted(value.keys() - fields)
        if missing or unknown:
            raise SettingsError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        hints = typing.get_type_hints(hint)
        return hint(**{name: _typed(hints[name], value[name], f"{where}.{name}") for name in fields})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return [_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(option, value, where)
            except SettingsError:
                continue
        raise SettingsError(f"{where}: {value!r} is none of {hint}")
    if hint is type(None):
        if value is not None:
            raise SettingsError(f"{where}: expected null, got {value!r}")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise SettingsError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------
# Generation (rules check_context, generate)


@dataclass(frozen=True)
class Sampling(Settings):
    """Decoding of one benchmark (`benchmarks.<b>.sampling`) with the config's `seed`."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_config(cls, config: dict[str, Any], benchmark: str) -> Sampling:
        return cls(**config["benchmarks"][benchmark]["sampling"], seed=config["seed"])


@dataclass(frozen=True)
class ModelSettings(Settings):
    """How the engine holds one evaluated model (`models.<model>`): precision, context, GPUs, and
    the largest LoRA rank of its runs (vLLM reserves adapter memory for it)."""

    dtype: str
    max_model_len: int
    tensor_parallel: int
    max_lora_rank: int

    @classmethod
    def from_config(cls, config: dict[str, Any], model: str) -> ModelSettings:
        from safelora.config import max_lora_rank

        m = config["models"][model]
        return cls(m["dtype"], m["max_model_len"], m["tensor_parallel"], max_lora_rank(config, model))


@dataclass(frozen=True)
class GenerationSettings(Settings):
    """A generate job's settings but its checkpoint: backend, batch size, decoding, engine."""

    backend: str
    batch_size: int
    sampling: Sampling
    model: ModelSettings

    @classmethod
    def from_config(cls, config: dict[str, Any], model: str, benchmark: str) -> GenerationSettings:
        generation = config["generation"]
        return cls(
            generation["backend"],
            generation["batch_size"],
            Sampling.from_config(config, benchmark),
            ModelSettings.from_config(config, model),
        )


@dataclass(frozen=True)
class ContextSettings(Settings):
    """The budget check_context measures a benchmark's prompts against."""

    max_new_tokens: int
    max_model_len: int

    @classmethod
    def from_config(cls, config: dict[str, Any], model: str, benchmark: str) -> ContextSettings:
        sampling = config["benchmarks"][benchmark]["sampling"]
        return cls(sampling["max_new_tokens"], config["models"][model]["max_model_len"])


# ------------------------------------------------------------------------------------------
# Grading (rules execute_code, judge_epochs_*)


@dataclass(frozen=True)
class Execution(Settings):
    """EvalPlus programs of a code benchmark: the dataset, its problem file, the sandbox limits."""

    dataset: str
    problems: str
    timeout_s: float
    memory_mb: int

    @classmethod
    def from_config(cls, config: dict[str, Any], benchmark: str) -> Execution:
        b = config["benchmarks"][benchmark]
        return cls(b["source"]["evalplus"], b["source"]["path"], **b["execution"])


@dataclass(frozen=True)
class Judge(Settings):
    """A judge model (`judges.<judge>`): what it judges, the weights (hub id or folder), its GPUs,
    its verdict length, the AIME policies of a math judge (None: not set) and its version."""

    kind: str
    model: str
    tensor_parallel: int
    max_new_tokens: int
    fallback_for: str | None
    unboxed: str | None
    unparseable: str | None
    version: int

    @classmethod
    def from_config(cls, config: dict[str, Any], judge: str) -> Judge:
        j = config["judges"][judge]
        return cls(
            kind=j["kind"],
            model=j.get("hub") or j["path"],  # the schema requires exactly one of them
            tensor_parallel=j["tensor_parallel"],
            max_new_tokens=j["max_new_tokens"],
            fallback_for=j.get("fallback_for"),  # optional keys without a default
            unboxed=j.get("unboxed"),
            unparseable=j.get("unparseable"),
            version=j["version"],
        )


@dataclass(frozen=True)
class JudgeSettings(Settings):
    """A judge job's settings: the judge, the kind of benchmark it judges, the backend."""

    judge: Judge
    kind: str
    backend: str

    @classmethod
    def from_config(cls, config: dict[str, Any], judge: str, benchmark: str) -> JudgeSettings:
        return cls(
            Judge.from_config(config, judge), config["benchmarks"][benchmark]["kind"], config["generation"]["backend"]
        )


# ------------------------------------------------------------------------------------------
# Scoring and aggregation (rules score, aggregate)


@dataclass(frozen=True)
class ScoreSettings(Settings):
    """How one benchmark's verdicts become its score: metric kind, graders, the primary one, the
    samples per item the verdicts must cover, the unparseable share tolerated, the scorer version."""

    kind: str
    graders: list[str]
    primary: str
    n: int
    max_unparseable_share: float
    scorer_version: int

    @classmethod
    def from_config(cls, config: dict[str, Any], benchmark: str) -> ScoreSettings:
        b = config["benchmarks"][benchmark]
        return cls(
            b["kind"],
            b["graders"],
            b["primary"],
            b["sampling"]["n"],
            config["max_unparseable_share"],
            b["scorer_version"],
        )


@dataclass(frozen=True)
class Bootstrap(Settings):
    """The results table's bootstrap intervals (`aggregate.bootstrap`)."""

    n: int
    seed: int
    level: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Bootstrap:
        return cls(**config["aggregate"]["bootstrap"])


# ------------------------------------------------------------------------------------------
# OrthoMerge (rule orthomerge)


@dataclass(frozen=True)
class OrthoMerge(Settings):
    """One OrthoMerge run's projection: variant, scale lambda, and the k directions projected out."""

    variant: str
    lam: float
    k: int

    @classmethod
    def from_config(cls, config: dict[str, Any], run: str) -> OrthoMerge:
        from safelora.config import orthomerge_run

        om = orthomerge_run(config, run)
        return cls(om.variant, om.lam, config["orthomerge"]["k"])
