"""The workflow configuration: schema validation, cross-field checks and the run grid.

`common.smk` validates with `validate_schema` (the JSON Schema, filling its defaults) and then calls
`check_config`; `load_config` does both for a config file read outside Snakemake (the tests), and
`complete_config` for a config already in memory (the benchmark scripts). Every error names the key
it is about.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from safelora import registry
from safelora.io import stable_json

SCHEMA_PATH = Path(str(resources.files("safelora") / "schemas" / "config.schema.yaml"))

# The values vLLM accepts for `max_lora_rank`; an adapter's rank is served with the next one up.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

BASE_RUN = "base"


class ConfigError(ValueError):
    """A configuration problem, naming the offending key."""


@dataclass(frozen=True)
class Checkpoint:
    model: str
    run: str
    epoch: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.run}/epoch-{self.epoch}"


@dataclass(frozen=True)
class OrthoMergeRun:
    name: str
    source: str
    variant: str
    lam: float


def load_config(path: str | Path, workdir: str | Path = ".") -> dict[str, Any]:
    """Read, schema-validate (filling defaults) and cross-check a config file.

    Data paths in the config are relative to `workdir`, the folder Snakemake runs in.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.load(fh, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(config).__name__}")
    validate_schema(config, source=str(path))
    check_config(config, workdir)
    return config


def complete_config(config: dict[str, Any], workdir: str | Path = ".") -> dict[str, Any]:
    """Fill schema defaults everywhere, then cross-check: for a config not read through `validate_schema`
    (which fills defaults itself), e.g. a benchmark script's or a test's edited copy."""
    schema = load_schema()
    _fill_defaults(config, schema, schema)
    check_config(config, workdir)
    return config


@functools.cache
def _cached_schema() -> dict[str, Any]:
    # libyaml's loader where PyYAML has it: the schema is read at every plan (docs/cluster.md)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


def load_schema() -> dict[str, Any]:
    """The config schema (a fresh copy: callers may not change the cached one)."""
    return copy.deepcopy(_cached_schema())


def validate_schema(config: dict[str, Any], source: str = "config") -> None:
    """JSON-Schema validation that fills in defaults, as snakemake.utils.validate does."""
    schema = load_schema()
    errors = sorted(_validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: invalid value at '{where}': {err.message}")
    _fill_defaults(config, schema, schema)


def _validator(schema: dict[str, Any]) -> Any:
    """A JSON-Schema validator of `schema` whose `integer` is an int: `1.0` is not one (JSON Schema's is)."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _fill_defaults(node: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    schema = _resolve(schema, root)
    if isinstance(node, dict):
        for key, sub in schema.get("properties", {}).items():
            sub = _resolve(sub, root)
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                _fill_defaults(node[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in node.items():
                if key not in schema.get("properties", {}):
                    _fill_defaults(value, extra, root)
        for sub in schema.get("allOf", []):
            _fill_defaults(node, sub, root)
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for item in node:
            _fill_defaults(item, schema["items"], root)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = {**root["$defs"][name], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def check_config(config: dict[str, Any], workdir: str | Path = ".") -> None:
    """Cross-field checks the schema cannot express; raise ConfigError naming the key."""
    _check_training_data(config, Path(workdir))
    _check_overrides(config)
    _check_runs(config)
    _check_layers(config, Path(workdir))
    _check_orthomerge(config)
    _check_analysis(config)
    _check_main_run(config)
    _check_benchmarks(config, Path(workdir))
    _check_templates(config)
    _check_lambda_names(config)
    _check_prune(config)


def _check_training_data(config: dict[str, Any], workdir: Path) -> None:
    data = config["training_data"]
    if data["source"] not in data["sources"]:
        raise ConfigError(
            f"training_data.source: '{data['source']}' is not one of training_data.sources "
            f"({', '.join(sorted(data['sources']))})"
        )
    for name, source in data["sources"].items():
        if "path" in source:
            _require_file(f"training_data.sources.{name}.path", workdir / source["path"], source["path"])


def _check_runs(config: dict[str, Any]) -> None:
    seen: set[str] = set()
    for i, run in enumerate(config["runs"]):
        key = f"runs[{i}] ('{run['name']}')"
        if run["name"] in seen:
            raise ConfigError(f"{key}: duplicate run name '{run['name']}'")
        seen.add(run["name"])
        if "." in run["name"]:
            raise ConfigError(f"{key}: '.' is reserved for OrthoMerge run names")
        if (run["method"] == BASE_RUN) != (run["name"] == BASE_RUN):
            raise ConfigError(f"{key}: the run named 'base' and only it has method 'base'")
        for model in run["models"]:
            if model not in config["models"]:
                raise ConfigError(f"{key}.models: unknown model '{model}' (known: {', '.join(config['models'])})")
        if run["method"] == "lora":
            for field in ("rank", "targets"):
                if field not in run:
                    raise ConfigError(f"{key}: a LoRA run needs '{field}'")
            if run["targets"] not in config["lora_targets"]:
                raise ConfigError(
                    f"{key}.targets: unknown target set '{run['targets']}' (known: {', '.join(config['lora_targets'])})"
                )
            vllm_lora_rank(run["rank"], where=f"{key}.rank")
            reg = run.get("ortho_reg")
            if reg and reg["formula"] == "paper" and (not reg["weighted"] or reg["normalize"]):
                raise ConfigError(f"{key}.ortho_reg: weighted and normalize apply to formula 'span' only")
            layers = run.get("layers")
            if layers and layers[0] > layers[1]:
                raise ConfigError(f"{key}.layers: [from, to] with from <= to (both included), got {layers}")
        elif any(field in run for field in ("rank", "targets", "layers", "ortho_reg")):
            raise ConfigError(f"{key}: rank, targets, layers and ortho_reg apply to LoRA runs only")
        if run["method"] in ("full", "lora"):
            _check_batches(config, run, key)


def layer_range_problem(layers: list[int], num_layers: int) -> str | None:
    """Why `layers: [from, to]` does not fit a model of `num_layers` decoder layers (None when it does)."""
    if layers[1] >= num_layers:
        return f"layers {layers} reach past the model's {num_layers} decoder layers (0-{num_layers - 1})"
    return None


def local_num_layers(source: dict[str, Any], workdir: Path) -> int | None:
    """`num_hidden_layers` of a local `source: {path: ...}` model's config.json; None for hub and GGUF
    sources or a folder without one (the train job checks those at its start, `training.sft`)."""
    if "path" not in source:
        return None
    try:
        model_config = json.loads((workdir / source["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    layers = model_config.get("num_hidden_layers")
    return layers if isinstance(layers, int) else None


def _check_layers(config: dict[str, Any], workdir: Path) -> None:
    """A LoRA run's `layers` lie inside each of its models, where the layer count can be read at planning."""
    for i, run in enumerate(config["runs"]):
        if not run.get("layers"):
            continue
        for model in run["models"]:
            num_layers = local_num_layers(config["models"][model]["source"], workdir)
            problem = None if num_layers is None else layer_range_problem(run["layers"], num_layers)
            if problem:
                raise ConfigError(f"runs[{i}] ('{run['name']}').layers: {problem} of model '{model}'")


def _check_batches(config: dict[str, Any], run: dict[str, Any], key: str) -> None:
    settings = method_settings(config, run)
    per_model = settings["per_model"]
    where = f"training.{run['method']}"
    if settings["deepspeed"] and settings["parallelism"] != "data_parallel":
        raise ConfigError(f"{key}: {where}.deepspeed needs parallelism 'data_parallel' (one process per GPU)")
    if settings["bf16"] and settings["fp16"]:
        raise ConfigError(f"{key}: {where}: bf16 and fp16 are both true; set bf16: false with fp16: true")
    for model in run["models"]:
        size = config["models"][model]["size"]
        if size not in per_model:
            raise ConfigError(f"{key}: {where}.per_model has no entry for size '{size}' of model '{model}'")
        batch = per_model[size]
        ranks = data_parallel_ranks(settings["parallelism"], batch["gpus"])
        try:
            gradient_accumulation(batch["global_batch"], batch["per_device_train_batch_size"], ranks)
        except ConfigError as err:
            raise ConfigError(f"{where}.per_model.{size}: {err} (parallelism '{settings['parallelism']}')") from err


def data_parallel_ranks(parallelism: str, gpus: int) -> int:
    """Training processes of a job: one for `model_split` (the model spans its GPUs), else one per GPU."""
    return 1 if parallelism == "model_split" else gpus


def steps_per_epoch(rows: int, global_batch: int, per_device_batch: int, ranks: int) -> int:
    """Optimizer steps per epoch as the Trainer counts them (the sampler pads each rank's share)."""
    accumulation = gradient_accumulation(global_batch, per_device_batch, ranks)
    micro_batches = math.ceil(math.ceil(rows / ranks) / per_device_batch)
    return math.ceil(micro_batches / accumulation)


def vllm_lora_rank(rank: int, where: str = "rank") -> int:
    """The `max_lora_rank` vLLM needs to serve an adapter of this rank (documented round-up)."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"{where}: rank {rank} exceeds the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


def _check_orthomerge(config: dict[str, Any]) -> None:
    merge = config.get("orthomerge")
    if not merge:
        return
    runs = {run["name"]: run for run in config["runs"]}
    for source in merge["sources"]:
        if source not in runs:
            raise ConfigError(f"orthomerge.sources: unknown run '{source}'")
        if runs[source]["method"] != "lora":
            raise ConfigError(f"orthomerge.sources: run '{source}' is not a LoRA run")
    if merge.get("epochs") not in ("all", "last"):
        for source in merge["sources"]:
            epochs = run_epochs(config, source)
            bad = [e for e in merge["epochs"] if e > epochs]
            if bad:
                raise ConfigError(f"orthomerge.epochs: run '{source}' has {epochs} epochs, not {bad}")


def _check_analysis(config: dict[str, Any]) -> None:
    analysis = config.get("analysis")
    if not analysis:
        return
    runs = {run["name"]: run for run in config["runs"]}
    for name in analysis["runs"]:
        if name not in runs or runs[name]["method"] == BASE_RUN:
            raise ConfigError(f"analysis.runs: '{name}' is not a training run")
        if isinstance(analysis["epochs"], list):
            epochs = run_epochs(config, name)
            bad = [e for e in analysis["epochs"] if e > epochs]
            if bad:
                raise ConfigError(f"analysis.epochs: run '{name}' has {epochs} epochs, not {bad}")


def _check_main_run(config: dict[str, Any]) -> None:
    """`aggregate.main_run` names a plain LoRA run, and must be set when there is one."""
    plain_lora = [r["name"] for r in config["runs"] if r["method"] == "lora" and not r.get("ortho_reg")]
    name = config["aggregate"].get("main_run")
    if name is None and plain_lora:
        raise ConfigError(f"aggregate.main_run: name the LoRA run Figures 2, 5 and 6 show, one of {plain_lora}")
    if name is not None and name not in plain_lora:
        raise ConfigError(f"aggregate.main_run: '{name}' is not a LoRA run without ortho_reg (one of {plain_lora})")


def _check_prune(config: dict[str, Any]) -> None:
    """Every listed epoch exists in every trained run: pruning must never delete all of a run's checkpoints."""
    keep = (config.get("prune") or {}).get("keep_epochs")
    if not isinstance(keep, list):
        return
    if not keep:
        raise ConfigError("prune.keep_epochs: an empty list would delete every checkpoint (use 'last' or list epochs)")
    for run in config["runs"]:
        if run["method"] != BASE_RUN:
            epochs = run_epochs(config, run["name"])
            bad = [e for e in keep if e > epochs]
            if bad:
                raise ConfigError(f"prune.keep_epochs: run '{run['name']}' has {epochs} epochs, not {bad}")


def _require_file(key: str, path: Path, written: str) -> None:
    if not path.exists():
        raise ConfigError(f"{key}: file not found: {written}")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{key}: {written} is {kind}; name a data file")


def local_files(source: dict[str, Any]) -> dict[str, str]:
    """The local data files a data source names, by key (none for a hub source)."""
    return {key: source[key] for key in ("csv", "jsonl", "path") if key in source}


def _check_benchmarks(config: dict[str, Any], workdir: Path) -> None:
    judges = config["judges"]
    for name, bench in config["benchmarks"].items():
        key = f"benchmarks.{name}"
        allowed = registry.graders_by_kind()[bench["kind"]]
        for grader in bench["graders"]:
            kind = judges[grader]["kind"] if grader in judges else grader
            if grader not in judges and grader not in registry.GRADERS:
                raise ConfigError(f"{key}.graders: unknown grader '{grader}' (not a judge or a built-in grader)")
            if kind not in allowed:
                raise ConfigError(f"{key}.graders: '{grader}' cannot grade a '{bench['kind']}' benchmark")
            fallback = judges.get(grader, {}).get("fallback_for")
            if fallback and fallback not in bench["graders"]:
                raise ConfigError(f"{key}.graders: '{grader}' is a fallback for '{fallback}', which is not listed")
        if bench["primary"] not in bench["graders"]:
            raise ConfigError(f"{key}.primary: '{bench['primary']}' is not one of its graders")
        source = bench["source"]
        for field, path in local_files(source).items():
            _require_file(f"{key}.source.{field}", workdir / path, path)
        if bench["kind"] == "code" and "evalplus" not in source:
            raise ConfigError(f"{key}.source: a code benchmark needs an 'evalplus' source")
        if bench["runs"] != "all":
            families = {orthomerge_family(om.source, om.variant) for om in orthomerge_runs(config)}
            unknown = [r for r in bench["runs"] if r not in set(all_run_names(config)) | families]
            if unknown:
                raise ConfigError(
                    f"{key}.runs: unknown run(s) {unknown} (a run name, an OrthoMerge run or a family "
                    f"'<source>.om-<variant>')"
                )
        if bench["sampling"]["temperature"] == 0 and bench["sampling"]["n"] > 1:
            raise ConfigError(f"{key}.sampling: n > 1 with greedy decoding gives identical samples")


def _check_overrides(config: dict[str, Any]) -> None:
    """A run's settings (`training.<method>` with its `overrides` applied) are valid as that block."""
    schema = load_schema()
    for i, run in enumerate(config["runs"]):
        if "overrides" not in run:
            continue
        key = f"runs[{i}] ('{run['name']}').overrides"
        if run["method"] == BASE_RUN:
            raise ConfigError(f"{key}: the base run is not trained, so it has no training settings to override")
        block = {"$defs": schema["$defs"], **schema["properties"]["training"]["properties"][run["method"]]}
        errors = sorted(_validator(block).iter_errors(method_settings(config, run)), key=lambda e: list(e.path))
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path)
            raise ConfigError(
                f"{key}{'.' + where if where else ''}: {errors[0].message} (checked as training.{run['method']})"
            )


# The fields a benchmark's `prompt_template` is formatted with (evaluation.items.load_benchmark,
# evaluation.parsers.gpqa_prompt); a template must use each of them.
TEMPLATE_FIELDS = {
    "multiple_choice": ("question", "choice1", "choice2", "choice3", "choice4"),
    "other": ("problem",),
}


def _check_templates(config: dict[str, Any]) -> None:
    """Each `prompt_template` formats with its benchmark's fields, all of them, and no others."""
    for name, bench in config["benchmarks"].items():
        template = bench.get("prompt_template")
        if template is None:
            continue
        key = f"benchmarks.{name}.prompt_template"
        fields = TEMPLATE_FIELDS["multiple_choice" if bench["kind"] == "multiple_choice" else "other"]
        named = ", ".join(f"{{{f}}}" for f in fields)
        literal = "write a literal brace as {{ or }}"
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            unknown = [f for f in used if f not in fields]
            if not unknown:
                template.format(**dict.fromkeys(fields, ""))
        except (ValueError, IndexError, KeyError) as err:
            raise ConfigError(f"{key}: not a valid template ({err}); its fields are {named}; {literal}") from err
        if unknown:
            raise ConfigError(f"{key}: unknown field {{{unknown[0]}}}: its fields are {named}; {literal}")
        missing = [f for f in fields if f not in used]
        if missing:
            raise ConfigError(
                f"{key}: no {{{missing[0]}}} field: every prompt would leave out the item's {missing[0]} "
                f"(its fields are {named})"
            )


def _check_lambda_names(config: dict[str, Any]) -> None:
    """Two λ values of a variant must not format to one OrthoMerge run name (one would silently win)."""
    for variant, lambdas in ((config.get("orthomerge") or {}).get("variants") or {}).items():
        seen: dict[str, float] = {}
        for lam in lambdas:
            label = _format_lambda(lam)
            if label in seen:
                raise ConfigError(
                    f"orthomerge.variants.{variant}: lambdas {seen[label]!r} and {lam!r} both give run names "
                    f"ending '-l{label}' (6 significant digits), so one would replace the other; use values "
                    "that differ within 6 digits"
                )
            seen[label] = lam


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key '{key}' (first at line {first[key]}; YAML keeps only the last)",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the constructor below reports it
        return super().construct_mapping(node, deep)


def check_duplicate_keys(paths: list[str | Path]) -> None:
    """Re-read each config file refusing duplicate keys: Snakemake's loader drops all but the last."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                yaml.load(fh, Loader=_UniqueKeyLoader)
        except yaml.constructor.ConstructorError as err:
            mark = err.problem_mark
            raise ConfigError(f"{path}: line {mark.line + 1}: {err.problem}") from err


def parse_cli_leaves(config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Give the nested values of `--config` overrides their YAML types in `config`.

    Snakemake parses a top-level `--config key=value` as int, float or bool, but a nested one
    (`"benchmarks={strongreject: {limit: 3}}"`) with YAML's BaseLoader, whose leaves are all
    strings (`'3'`). Each string leaf below the top level is parsed as a YAML scalar (3, 1.0e-4,
    true, null; anything else stays a string), as it would be read from a config file.
    """
    for key, value in overrides.items():
        if isinstance(value, (dict, list)) and key in config:
            config[key] = _parse_leaves(config[key], value)


def _parse_leaves(target: Any, override: Any) -> Any:
    if isinstance(override, dict) and isinstance(target, dict):
        for key, value in override.items():
            target[key] = _parse_leaves(target.get(key), value)
        return target
    if isinstance(override, dict):
        return {key: _parse_leaves(None, value) for key, value in override.items()}
    if isinstance(override, list):
        return [_parse_leaves(None, item) for item in override]
    return _yaml_scalar(override) if isinstance(override, str) else override


def _yaml_scalar(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool) else text


EXPERIMENT_MARKER = "experiment.json"


def config_label(path: str | Path) -> str:
    """A config file as an experiment records it: relative to the working folder when inside it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def check_experiment_owner(results: str | Path, configfiles: list[str | Path]) -> None:
    """Refuse a config whose `experiment:` folder was written under other config files.

    `results/<experiment>/experiment.json` (`claim_experiment`) records the config files of the
    first run that wrote there; another set of files naming the same experiment would replace its
    results. Editing those files, or `--config` overrides, are the same experiment.
    """
    marker = Path(results) / EXPERIMENT_MARKER
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))["configfiles"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{marker}: unreadable ({err}); delete it to let this config claim {results}/") from err
    mine = sorted(config_label(p) for p in configfiles)
    if owner != mine:
        raise ConfigError(
            f"experiment: {results}/ holds the results of config {', '.join(owner)}, and "
            f"{', '.join(mine)} names the same experiment; give this config its own `experiment:` name "
            f"(or delete {marker} to hand the folder over)"
        )


def claim_experiment(results: str | Path, configfiles: list[str | Path]) -> None:
    """Record the config files that write `results/<experiment>/` (once; see `check_experiment_owner`)."""
    marker = Path(results) / EXPERIMENT_MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"configfiles": sorted(config_label(p) for p in configfiles)}) + "\n", encoding="utf-8")
    try:
        os.link(tmp, marker)  # never replaces a marker another process wrote meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    check_experiment_owner(results, configfiles)


# ---------------------------------------------------------------------------------------------
# The run grid


def run_by_name(config: dict[str, Any], name: str) -> dict[str, Any]:
    for run in config["runs"]:
        if run["name"] == name:
            return run
    raise ConfigError(f"runs: no run named '{name}'")


def training_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, run) pairs that are trained."""
    return [(m, r["name"]) for r in config["runs"] if r["method"] != BASE_RUN for m in r["models"]]


def method_settings(config: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    settings = copy.deepcopy(config["training"][run["method"]])
    settings.update(copy.deepcopy(run.get("overrides", {})))
    return settings


def run_epochs(config: dict[str, Any], name: str) -> int:
    run = run_by_name(config, name)
    if run["method"] == BASE_RUN:
        return 0
    return int(method_settings(config, run)["num_train_epochs"])


def orthomerge_runs(config: dict[str, Any]) -> list[OrthoMergeRun]:
    merge = config.get("orthomerge")
    if not merge:
        return []
    return [
        OrthoMergeRun(
            name=f"{orthomerge_family(source, variant)}-l{_format_lambda(lam)}", source=source, variant=variant, lam=lam
        )
        for source in merge["sources"]
        for variant, lambdas in merge["variants"].items()
        for lam in lambdas
    ]


def orthomerge_family(source: str, variant: str) -> str:
    """`<source>.om-<variant>`: the OrthoMerge runs of one source and variant, every λ."""
    return f"{source}.om-{variant}"


def _format_lambda(lam: float) -> str:
    return f"{lam:g}"


def _select_epochs(selection: Any, epochs: int) -> list[int]:
    if selection == "all":
        return list(range(1, epochs + 1))
    if selection == "last":
        return [epochs]
    return sorted(set(selection))


def checkpoint_epochs(config: dict[str, Any], run: str) -> list[int]:
    """The epochs of a run's evaluated checkpoints: 0 for the base, each training epoch, the
    OrthoMerge epochs (`orthomerge.epochs`) of its source."""
    if is_orthomerge(run):
        source = orthomerge_run(config, run).source
        return _select_epochs(config["orthomerge"]["epochs"], run_epochs(config, source))
    epochs = run_epochs(config, run)
    return list(range(1 if epochs else 0, epochs + 1))


def checkpoints(config: dict[str, Any]) -> list[Checkpoint]:
    """Every checkpoint that is evaluated: base, each training epoch, each OrthoMerge copy."""
    result = []
    for run in config["runs"]:
        for model in run["models"]:
            result.extend(Checkpoint(model, run["name"], e) for e in checkpoint_epochs(config, run["name"]))
    for om in orthomerge_runs(config):
        for model in run_by_name(config, om.source)["models"]:
            result.extend(Checkpoint(model, om.name, e) for e in checkpoint_epochs(config, om.name))
    return result


def benchmark_evaluates(config: dict[str, Any], benchmark: str, run: str) -> bool:
    """Whether `benchmarks.<benchmark>.runs` selects this run (a name, or an OrthoMerge family)."""
    selection = config["benchmarks"][benchmark]["runs"]
    if selection == "all":
        return True
    if is_orthomerge(run):
        om = orthomerge_run(config, run)
        return run in selection or orthomerge_family(om.source, om.variant) in selection
    return run in selection


def evaluations(config: dict[str, Any]) -> list[tuple[Checkpoint, str]]:
    """Every (checkpoint, benchmark) pair that is scored, in checkpoint then benchmark order."""
    return [(c, b) for c in checkpoints(config) for b in config["benchmarks"] if benchmark_evaluates(config, b, c.run)]


def analysis_checkpoints(config: dict[str, Any]) -> list[Checkpoint]:
    analysis = config.get("analysis")
    if not analysis:
        return []
    result = []
    for name in analysis["runs"]:
        run = run_by_name(config, name)
        for model in run["models"]:
            for epoch in _select_epochs(analysis["epochs"], run_epochs(config, name)):
                result.append(Checkpoint(model, name, epoch))
    return result


def all_run_names(config: dict[str, Any]) -> list[str]:
    return [run["name"] for run in config["runs"]] + [om.name for om in orthomerge_runs(config)]


def orthomerge_run(config: dict[str, Any], name: str) -> OrthoMergeRun:
    for om in orthomerge_runs(config):
        if om.name == name:
            return om
    raise ConfigError(f"no OrthoMerge run named '{name}'")


def is_orthomerge(name: str) -> bool:
    return "." in name


# Where a `training.<method>` key goes in the recipe (`safelora.training.recipe`): PEFT `LoraConfig`
# fields to `lora`, the project's options to `safelora` (`SafeLoraOptions`); every other key is a TRL
# `SFTConfig` field, `sft` (tests/test_recipe.py checks these names against the libraries' classes).
LORA_KEYS = ("lora_alpha", "lora_dropout")
OPTION_KEYS = ("parallelism", "deepspeed")


def training_recipe(config: dict[str, Any], model: str, run_name: str) -> dict[str, Any]:
    """Everything that determines a training run's weights, resolved for one model: SFTConfig fields
    (`sft`), LoraConfig fields (`lora`, LoRA runs) and the project's options (`safelora`)."""
    run = run_by_name(config, run_name)
    settings = method_settings(config, run)
    model_cfg = config["models"][model]
    # mem_mb is the job's memory request, not a setting of the weights: left out of the recipe (and its hash)
    batch = settings.pop("per_model")[model_cfg["size"]]
    data = config["training_data"]
    sft = {key: value for key, value in settings.items() if key not in LORA_KEYS + OPTION_KEYS}
    sft.update(
        per_device_train_batch_size=batch["per_device_train_batch_size"],
        max_length=data["max_length"],
        seed=config["seed"],
        data_seed=config["seed"],
    )
    options = {
        "model": model,
        "run": run_name,
        "method": run["method"],
        "model_source": model_cfg["source"],
        "dtype": model_cfg["dtype"],
        "data_source": data["source"],
        "data": {"think": data["think"], **data["sources"][data["source"]]},
        "version": config["versions"]["train"],
        "gpus": batch["gpus"],
        "global_batch": batch["global_batch"],
        **{key: settings[key] for key in OPTION_KEYS},
        "ortho_reg": run.get("ortho_reg"),
    }
    recipe: dict[str, Any] = {"sft": sft, "safelora": options}
    if run["method"] == "lora":
        recipe["lora"] = lora_fields(
            run["rank"], config["lora_targets"][run["targets"]], settings["lora_alpha"], settings["lora_dropout"],
            run.get("layers"),
        )  # fmt: skip
    return recipe


def lora_fields(
    rank: int, targets: list[str], alpha: float, dropout: float, layers: list[int] | None = None
) -> dict[str, Any]:
    """PEFT `LoraConfig` fields of a LoRA run (its `rank`, `targets` resolved, `layers`).

    `layers: [from, to]` becomes PEFT's own `layers_to_transform` (from..to, both included) with
    `layers_pattern="layers"`: the modules named `targets` in `….layers.<i>.…` for those i only, the
    paper code's `layers.{i}.mlp.{m}` target names. Both keys are saved in adapter_config.json; the
    adapter file holds exactly those modules' factors, which is what vLLM serves.
    """
    fields: dict[str, Any] = {
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",  # paper code (train.py LoraConfig)
    }
    if layers:
        fields.update(layers_to_transform=list(range(layers[0], layers[1] + 1)), layers_pattern="layers")
    return fields


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(stable_json(recipe).encode()).hexdigest()[:12]


def gradient_accumulation(global_batch: int, per_device_batch: int, world_size: int) -> int:
    """Accumulation steps that keep the configured global batch on `world_size` processes (the one
    place that computes them: the trainer's `gradient_accumulation_steps`, the planning checks, step counts)."""
    per_step = per_device_batch * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"global_batch {global_batch} is not a multiple of {world_size} process(es) x "
            f"per_device_train_batch_size {per_device_batch}"
        )
    return global_batch // per_step


def runs_meta(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Method, rank, targets, layers, λ and `main` (the config's `aggregate.main_run`) per run name, for aggregation and figures."""
    meta: dict[str, dict[str, Any]] = {}
    for run in config["runs"]:
        method = run["method"]
        if run.get("ortho_reg"):
            method = f"reg-{run['ortho_reg']['mode']}"
        meta[run["name"]] = {
            "method": method,
            "rank": run.get("rank"),
            "targets": run.get("targets"),
            "layers": run.get("layers"),
            "lambda": None,
            "source": None,
            "main": run["name"] == config["aggregate"].get("main_run"),
        }
    for om in orthomerge_runs(config):
        meta[om.name] = {
            **meta[om.source],
            "method": f"om-{om.variant}",
            "lambda": om.lam,
            "source": om.source,
            "main": False,
        }
    return meta


def max_lora_rank(config: dict[str, Any], model: str) -> int:
    """vLLM `max_lora_rank` for one model's adapters (0 when it has none)."""
    ranks = [r["rank"] for r in config["runs"] if r["method"] == "lora" and model in r["models"]]
    return vllm_lora_rank(max(ranks)) if ranks else 0
