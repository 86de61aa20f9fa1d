"""Results table, bootstrap intervals, judge agreement and Pareto fronts.

Aggregation reads only `Score` summaries and weight-analysis tables (docs/design.md), never
generations. Column names of the results table encode what they hold, so figures can read the
table alone: `<metric>:<benchmark>[:<variant>]` (e.g. `pass@1:humaneval:plus`), each with
`<col>_lo` / `<col>_hi` bounds. See docs/aggregation.md.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safelora.io import atomic_write_text

METRICS = ("safety", "over_refusal", "pass@1")
REASONING_METRIC = "pass@1"
METHODS = ("base", "full", "lora", "reg-col", "reg-both", "om-col", "om-both")
LORA_FAMILY = ("lora", "reg-col", "reg-both", "om-col", "om-both")
TARGETS = ("mlp", "mlp_attn")
PLUS, BASE_VARIANT = "plus", "base"
_NO_VARIANT = ("", "default")

# Preferred order only; any other benchmark found in the data follows, alphabetically.
BENCHMARK_ORDER = ("strongreject", "xstest", "aime", "gpqa", "humaneval", "mbpp")
BENCHMARK_LABELS = {
    "strongreject": "StrongREJECT",
    "xstest": "XSTest",
    "aime": "AIME",
    "gpqa": "GPQA",
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
}
METRIC_LABELS = {"safety": "safety", "over_refusal": "over-refusal", "pass@1": "pass@1"}

ID_COLUMNS = ("model", "run", "epoch")
META_COLUMNS = ("method", "rank", "targets", "lambda", "source", "main")
AVERAGE_COLUMN = "reasoning_avg"
UNPARSEABLE_COLUMN = "unparseable"
WEIGHT_COLUMNS = ("layer", "module", "stable_rank", "col_cos", "col_top16", "row_cos", "row_top16", "delta_fro")


class ScoreFileError(ValueError):
    """A malformed Score file; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# Column names


@dataclass(frozen=True)
class ColumnKey:
    """One metric column of the results table."""

    metric: str
    benchmark: str
    variant: str | None = None

    @property
    def name(self) -> str:
        return ":".join([self.metric, self.benchmark] + ([self.variant] if self.variant else []))

    @classmethod
    def parse(cls, name: str) -> ColumnKey | None:
        """The key a column name encodes, or None for other columns (ids, metadata, `_lo`/`_hi`)."""
        parts = str(name).split(":")
        if parts[0] not in METRICS or len(parts) not in (2, 3) or parts[-1].endswith(("_lo", "_hi")):
            return None
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @property
    def benchmark_label(self) -> str:
        label = BENCHMARK_LABELS.get(self.benchmark, self.benchmark)
        if self.variant == PLUS:
            return f"{label}+"
        if self.variant in (None, BASE_VARIANT):
            return label
        return f"{label} ({self.variant})"

    @property
    def label(self) -> str:
        return f"{self.benchmark_label} {METRIC_LABELS[self.metric]}"

    def sort_key(self) -> tuple[int, int, str, int, str]:
        bench = BENCHMARK_ORDER.index(self.benchmark) if self.benchmark in BENCHMARK_ORDER else len(BENCHMARK_ORDER)
        variant_rank = {None: 0, BASE_VARIANT: 1, PLUS: 2}.get(self.variant, 3)
        return (METRICS.index(self.metric), bench, self.benchmark, variant_rank, self.variant or "")


def metric_columns(table: pd.DataFrame) -> list[ColumnKey]:
    """The metric columns of a results table, in display order."""
    keys = [ColumnKey.parse(c) for c in table.columns]
    return sorted((k for k in keys if k is not None), key=ColumnKey.sort_key)


def headline_reasoning_columns(keys: Iterable[ColumnKey]) -> list[ColumnKey]:
    """One pass@1 column per benchmark: the `plus` variant where there is one (Figure 2), else
    the benchmark's only (or first) variant. These feed the average reasoning score."""
    by_benchmark: dict[str, list[ColumnKey]] = {}
    for key in sorted(keys, key=ColumnKey.sort_key):
        if key.metric == REASONING_METRIC:
            by_benchmark.setdefault(key.benchmark, []).append(key)
    chosen = []
    for variants in by_benchmark.values():
        plus = [k for k in variants if k.variant == PLUS]
        chosen.append(plus[0] if plus else variants[0])
    return chosen


def base_variant_columns(keys: Iterable[ColumnKey]) -> list[ColumnKey]:
    """pass@1 columns of the `base` variant of benchmarks that also have a `plus` one (Figure 6)."""
    keys = list(keys)
    with_plus = {k.benchmark for k in keys if k.metric == REASONING_METRIC and k.variant == PLUS}
    return sorted(
        (k for k in keys if k.metric == REASONING_METRIC and k.variant == BASE_VARIANT and k.benchmark in with_plus),
        key=ColumnKey.sort_key,
    )


def first_column(keys: Iterable[ColumnKey], metric: str) -> ColumnKey | None:
    """The first column of a metric in display order (e.g. the safety score the figures use)."""
    for key in sorted(keys, key=ColumnKey.sort_key):
        if key.metric == metric:
            return key
    return None


# ---------------------------------------------------------------------------------------------
# Reading Score files


@dataclass(frozen=True)
class ScoreFile:
    path: str
    model: str
    run: str
    epoch: int
    benchmark: str
    seed: int
    metrics: list[dict[str, Any]]
    agreement: list[dict[str, Any]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field(obj: Mapping[str, Any], key: str, check: Any, what: str, path: str, where: str) -> Any:
    if key not in obj:
        raise ScoreFileError(f"{path}: {where}missing key '{key}'")
    if not check(obj[key]):
        raise ScoreFileError(f"{path}: {where}key '{key}' must be {what}, got {obj[key]!r}")
    return obj[key]


def _optional_number(value: Any) -> bool:
    return value is None or _is_number(value)


def _read_metric(entry: Any, path: str, index: int) -> dict[str, Any]:
    where = f"metrics[{index}]: "
    if not isinstance(entry, dict):
        raise ScoreFileError(f"{path}: {where}must be an object")
    metric = _field(entry, "metric", lambda v: v in METRICS, f"one of {METRICS}", path, where)
    variant = _field(entry, "variant", lambda v: v is None or isinstance(v, str), "a string or null", path, where)
    grader = _field(entry, "grader", lambda v: isinstance(v, str) and v, "a non-empty string", path, where)
    primary = _field(entry, "primary", lambda v: isinstance(v, bool), "true or false", path, where)
    value = _field(entry, "value", _optional_number, "a number or null", path, where)
    counts = {
        key: _field(entry, key, lambda v: _is_int(v) and v >= 0, "a non-negative integer", path, where)
        for key in ("n_problems", "n_samples", "unparseable")
    }
    per_problem = _field(
        entry,
        "per_problem",
        lambda v: isinstance(v, dict) and all(_optional_number(x) for x in v.values()),
        "an object of numbers (or nulls) per problem id",
        path,
        where,
    )
    # a problem whose samples were all unparseable has no per-problem value
    if len(per_problem) > counts["n_problems"]:
        raise ScoreFileError(
            f"{path}: {where}key 'per_problem' has {len(per_problem)} problems but n_problems is {counts['n_problems']}"
        )
    return {
        "metric": metric,
        "variant": None if variant in _NO_VARIANT else variant,
        "grader": grader,
        "primary": primary,
        "value": math.nan if value is None else float(value),
        **counts,
        "per_problem": {str(k): (math.nan if v is None else float(v)) for k, v in per_problem.items()},
    }


def _read_agreement(entry: Any, path: str, index: int) -> dict[str, Any]:
    where = f"agreement[{index}]: "
    if not isinstance(entry, dict):
        raise ScoreFileError(f"{path}: {where}must be an object")
    graders = _field(
        entry,
        "graders",
        lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(g, str) for g in v),
        "a list of two grader names",
        path,
        where,
    )
    kappa = _field(entry, "kappa", _optional_number, "a number or null", path, where)
    n = _field(entry, "n", lambda v: _is_int(v) and v >= 0, "a non-negative integer", path, where)
    return {
        "grader_a": graders[0],
        "grader_b": graders[1],
        "kappa": math.nan if kappa is None else float(kappa),
        "n": n,
    }


def read_score_file(path: str | Path) -> ScoreFile:
    """Read and validate one Score JSON; any problem raises ScoreFileError naming file and key."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as err:
        raise ScoreFileError(f"{path}: not valid JSON: {err.msg} (line {err.lineno})") from err
    if not isinstance(obj, dict):
        raise ScoreFileError(f"{path}: the top level must be an object")
    text = lambda v: isinstance(v, str) and bool(v)  # noqa: E731
    model = _field(obj, "model", text, "a non-empty string", path, "")
    run = _field(obj, "run", text, "a non-empty string", path, "")
    epoch = _field(obj, "epoch", lambda v: _is_int(v) and v >= 0, "a non-negative integer", path, "")
    benchmark = _field(obj, "benchmark", text, "a non-empty string", path, "")
    seed = obj.get("seed", 0)
    if not _is_int(seed):
        raise ScoreFileError(f"{path}: key 'seed' must be an integer, got {seed!r}")
    raw_metrics = _field(obj, "metrics", lambda v: isinstance(v, list) and v, "a non-empty list", path, "")
    metrics = [_read_metric(m, path, i) for i, m in enumerate(raw_metrics)]
    seen: set[tuple[Any, ...]] = set()
    primaries: Counter[tuple[str, str | None]] = Counter()
    for i, m in enumerate(metrics):
        ident = (m["metric"], m["variant"], m["grader"])
        if ident in seen:
            raise ScoreFileError(f"{path}: metrics[{i}]: duplicate (metric, variant, grader) {ident}")
        seen.add(ident)
        primaries[(m["metric"], m["variant"])] += m["primary"]
    for (metric, variant), count in primaries.items():
        if count != 1:
            raise ScoreFileError(
                f"{path}: key 'primary': metric '{metric}' variant {variant!r} has {count} primary graders, needs 1"
            )
    raw_agreement = obj.get("agreement", [])
    if not isinstance(raw_agreement, list):
        raise ScoreFileError(f"{path}: key 'agreement' must be a list, got {raw_agreement!r}")
    agreement = [_read_agreement(a, path, i) for i, a in enumerate(raw_agreement)]
    return ScoreFile(path, model, run, epoch, benchmark, seed, metrics, agreement)


def read_score_files(paths: Iterable[str | Path]) -> list[ScoreFile]:
    """Read every file; two files for the same (checkpoint, benchmark, seed) are an error."""
    files = [read_score_file(p) for p in paths]
    owners: dict[tuple[Any, ...], str] = {}
    for f in files:
        ident = (f.model, f.run, f.epoch, f.benchmark, f.seed)
        if ident in owners:
            raise ScoreFileError(f"{f.path}: same model/run/epoch/benchmark/seed as {owners[ident]}")
        owners[ident] = f.path
    return files


SCORE_COLUMNS = (
    "model", "run", "epoch", "benchmark", "seed", "metric", "variant", "grader", "primary",
    "value", "n_problems", "n_samples", "unparseable", "per_problem", "path",
)  # fmt: skip


def scores_frame(files: Sequence[ScoreFile]) -> pd.DataFrame:
    """Tidy table, one row per (file, metric entry); `per_problem` keeps the dict for the bootstrap."""
    rows = [
        {
            "model": f.model,
            "run": f.run,
            "epoch": f.epoch,
            "benchmark": f.benchmark,
            "seed": f.seed,
            "path": f.path,
            **m,
        }
        for f in files
        for m in f.metrics
    ]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def load_scores(paths: Iterable[str | Path]) -> pd.DataFrame:
    return scores_frame(read_score_files(paths))


AGREEMENT_COLUMNS = ("model", "run", "epoch", "benchmark", "seed", "grader_a", "grader_b", "kappa", "n")


def agreement_frame(files: Sequence[ScoreFile]) -> pd.DataFrame:
    """Judge agreement (Cohen's kappa) per checkpoint, benchmark and grader pair."""
    rows = [
        {"model": f.model, "run": f.run, "epoch": f.epoch, "benchmark": f.benchmark, "seed": f.seed, **a}
        for f in files
        for a in f.agreement
    ]
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def load_agreement(paths: Iterable[str | Path]) -> pd.DataFrame:
    return agreement_frame(read_score_files(paths))


# ---------------------------------------------------------------------------------------------
# Run metadata and expected checkpoints


def runs_meta_frame(meta: Mapping[str, Mapping[str, Any]], source: str = "runs metadata") -> pd.DataFrame:
    """Validate run → {method, rank, targets, lambda[, source, main]}.

    `main` marks the config's `aggregate.main_run` (the LoRA run Figures 2, 5 and 6 show); a run
    without it is not main. Unknown keys are ignored.
    """
    rows = []
    for run, entry in meta.items():
        where = f"{source}: run '{run}': "
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}must be an object")
        method = entry.get("method")
        if method not in METHODS:
            raise ValueError(f"{where}key 'method' must be one of {METHODS}, got {method!r}")
        rank = entry.get("rank")
        if rank is not None and not (_is_int(rank) and rank > 0):
            raise ValueError(f"{where}key 'rank' must be a positive integer or null, got {rank!r}")
        targets = entry.get("targets")
        if targets is not None and targets not in TARGETS:
            raise ValueError(f"{where}key 'targets' must be one of {TARGETS} or null, got {targets!r}")
        lam = entry.get("lambda")
        if not _optional_number(lam):
            raise ValueError(f"{where}key 'lambda' must be a number or null, got {lam!r}")
        main = entry.get("main")
        if main is not None and not isinstance(main, bool):
            raise ValueError(f"{where}key 'main' must be true, false or null, got {main!r}")
        src = entry.get("source")
        if src is not None and not isinstance(src, str):
            raise ValueError(f"{where}key 'source' must be a run name or null, got {src!r}")
        rows.append({"run": run, "method": method, "rank": rank, "targets": targets, "lambda": lam, "source": src,
                     "main": main})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["run", *META_COLUMNS])
    frame["main"] = frame["main"].eq(True)
    return frame.set_index("run")


def load_runs_meta(path: str | Path) -> pd.DataFrame:
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: runs metadata must be an object mapping run name to its fields")
    return runs_meta_frame(meta, source=str(path))


@dataclass(frozen=True)
class ExpectedCheckpoint:
    """A checkpoint the config asks for; `benchmarks` None means 'every benchmark seen'."""

    model: str
    run: str
    epoch: int
    benchmarks: tuple[str, ...] | None = None


def parse_expected(entries: Any, source: str = "expected") -> list[ExpectedCheckpoint]:
    """Entries are `[model, run, epoch]` or `{"model", "run", "epoch"[, "benchmarks"]}`."""
    if not isinstance(entries, list):
        raise ValueError(f"{source}: must be a list of checkpoints")
    result = []
    for i, entry in enumerate(entries):
        if isinstance(entry, list) and len(entry) == 3:
            entry = dict(zip(ID_COLUMNS, entry))
        if not isinstance(entry, dict):
            raise ValueError(f"{source}[{i}]: must be [model, run, epoch] or an object")
        model, run, epoch = (entry.get(k) for k in ID_COLUMNS)
        if not (isinstance(model, str) and isinstance(run, str) and _is_int(epoch)):
            raise ValueError(f"{source}[{i}]: needs string 'model', string 'run' and integer 'epoch', got {entry!r}")
        benchmarks = entry.get("benchmarks")
        if benchmarks is not None and not (
            isinstance(benchmarks, list) and all(isinstance(b, str) for b in benchmarks)
        ):
            raise ValueError(f"{source}[{i}]: key 'benchmarks' must be a list of names, got {benchmarks!r}")
        result.append(ExpectedCheckpoint(model, run, epoch, None if benchmarks is None else tuple(benchmarks)))
    return result


def load_expected(path: str | Path) -> list[ExpectedCheckpoint]:
    with open(path, encoding="utf-8") as fh:
        return parse_expected(json.load(fh), source=str(path))


def missing_report(scores: pd.DataFrame, expected: Sequence[ExpectedCheckpoint]) -> pd.DataFrame:
    """Expected checkpoints lacking Score files: one row each, with the benchmarks not found."""
    seen = scores.groupby(list(ID_COLUMNS))["benchmark"].agg(set).to_dict() if len(scores) else {}
    every = set(scores["benchmark"])
    rows = []
    for exp in expected:
        wanted = set(exp.benchmarks) if exp.benchmarks is not None else every
        have = seen.get((exp.model, exp.run, exp.epoch), set())
        absent = sorted(wanted - have, key=_benchmark_order)
        if absent or not have:
            rows.append({"model": exp.model, "run": exp.run, "epoch": exp.epoch, "missing": ", ".join(absent) or "all"})
    return pd.DataFrame(rows, columns=["model", "run", "epoch", "missing"])


def missing_text(missing: pd.DataFrame) -> str:
    if missing.empty:
        return "Nothing missing: every expected checkpoint has every benchmark.\n"
    lines = [f"{r.model} {r.run} epoch {r.epoch}: missing {r.missing}" for r in missing.itertuples()]
    return f"{len(lines)} expected checkpoint(s) incomplete:\n" + "\n".join(lines) + "\n"


def _benchmark_order(name: str) -> tuple[int, str]:
    return (BENCHMARK_ORDER.index(name) if name in BENCHMARK_ORDER else len(BENCHMARK_ORDER), name)


# ---------------------------------------------------------------------------------------------
# Bootstrap


def _as_matrix(per_problem: Mapping[str, float] | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(per_problem, Mapping):
        matrix = np.asarray(list(per_problem.values()), dtype=float)
    else:
        matrix = np.asarray(per_problem, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(
            f"per-problem values must be a mapping, a vector or a problems x seeds matrix, got {matrix.ndim}-D"
        )
    return matrix


def bootstrap_means(matrix: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` resamples of a problems x seeds matrix: rows (problems) and columns
    (seeds) are each drawn with replacement; NaN cells (no parseable sample) are left out."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n_problems, n_seeds = matrix.shape
    if n_problems == 0 or n_seeds == 0 or np.isnan(matrix).all():
        return np.full(n_boot, math.nan)
    rows = rng.integers(0, n_problems, size=(n_boot, n_problems))
    cols = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), dtype=int)
    sample = matrix[rows[:, :, None], cols[:, None, :]]
    present = ~np.isnan(sample)
    counts = present.sum(axis=(1, 2))
    sums = np.where(present, sample, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def percentile_interval(means: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = means[~np.isnan(means)]
    if means.size == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def bootstrap_ci(
    per_problem: Mapping[str, float] | np.ndarray | Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems (and seeds, for a matrix)."""
    means = bootstrap_means(_as_matrix(per_problem), n_boot, np.random.default_rng(seed))
    return percentile_interval(means, level)


def _cell_rng(seed: int, *parts: Any) -> np.random.Generator:
    """A generator per table cell, so adding a checkpoint leaves every other interval unchanged."""
    tag = zlib.crc32("|".join(str(p) for p in parts).encode())
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


def _seed_matrix(rows: pd.DataFrame) -> np.ndarray:
    """Problems x seeds matrix from the per-seed dicts (NaN where a seed lacks a problem)."""
    problems = sorted(set().union(*rows["per_problem"]))
    return np.array([[pp.get(p, math.nan) for pp in rows["per_problem"]] for p in problems], dtype=float).reshape(
        len(problems), len(rows)
    )


# ---------------------------------------------------------------------------------------------
# The results table


def results_table(
    scores: pd.DataFrame,
    expected: Sequence[ExpectedCheckpoint],
    runs_meta: pd.DataFrame,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per checkpoint (expected ones first, in order; then any other scored one).

    Values are the primary grader's, averaged over seeds; `_lo`/`_hi` the bootstrap interval.
    A checkpoint or benchmark without a Score file is NaN, never zero.
    """
    primary = scores[scores["primary"].astype(bool)]
    keys = sorted({ColumnKey(m, b, None if pd.isna(v) else v)
                   for m, b, v in zip(primary["metric"], primary["benchmark"], primary["variant"], strict=True)},
                  key=ColumnKey.sort_key)  # fmt: skip
    headline = headline_reasoning_columns(keys)
    groups = {k: g for k, g in primary.groupby(["model", "run", "epoch", "metric", "benchmark"], dropna=False)}
    checkpoints = list(dict.fromkeys([(e.model, e.run, e.epoch) for e in expected] + _scored(scores)))
    unknown = sorted({run for _, run, _ in checkpoints} - set(runs_meta.index))
    if unknown:
        raise ValueError(f"runs metadata has no entry for run(s): {', '.join(unknown)}")
    unparseable = scores.groupby(list(ID_COLUMNS))["unparseable"].sum().to_dict()

    rows = []
    for model, run, epoch in checkpoints:
        row: dict[str, Any] = {"model": model, "run": run, "epoch": epoch, **runs_meta.loc[run].to_dict()}
        draws: dict[ColumnKey, np.ndarray] = {}
        for key in keys:
            group = groups.get((model, run, epoch, key.metric, key.benchmark))
            cell = None if group is None else group[group["variant"].fillna("").eq(key.variant or "")]
            if cell is None or cell.empty:
                row[key.name] = row[f"{key.name}_lo"] = row[f"{key.name}_hi"] = math.nan
                continue
            draws[key] = bootstrap_means(_seed_matrix(cell), n_boot, _cell_rng(seed, model, run, epoch, key.name))
            row[key.name] = float(cell["value"].mean())
            row[f"{key.name}_lo"], row[f"{key.name}_hi"] = percentile_interval(draws[key], level)
        if headline and all(k in draws for k in headline):
            row[AVERAGE_COLUMN] = float(np.mean([row[k.name] for k in headline]))
            avg_draws = np.mean([draws[k] for k in headline], axis=0)
            row[f"{AVERAGE_COLUMN}_lo"], row[f"{AVERAGE_COLUMN}_hi"] = percentile_interval(avg_draws, level)
        else:
            row[AVERAGE_COLUMN] = row[f"{AVERAGE_COLUMN}_lo"] = row[f"{AVERAGE_COLUMN}_hi"] = math.nan
        row[UNPARSEABLE_COLUMN] = unparseable.get((model, run, epoch), math.nan)
        rows.append(row)

    value_columns = [c for k in keys for c in (k.name, f"{k.name}_lo", f"{k.name}_hi")]
    average = [AVERAGE_COLUMN, f"{AVERAGE_COLUMN}_lo", f"{AVERAGE_COLUMN}_hi"] if headline else []
    columns = [*ID_COLUMNS, *META_COLUMNS, *value_columns, *average, UNPARSEABLE_COLUMN]
    return pd.DataFrame(rows, columns=columns)


def _scored(scores: pd.DataFrame) -> list[tuple[str, str, int]]:
    ids = scores[list(ID_COLUMNS)].drop_duplicates().sort_values(list(ID_COLUMNS))
    return [(m, r, int(e)) for m, r, e in ids.itertuples(index=False)]


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))


def read_results_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table["main"] = table["main"].astype(str).str.lower().eq("true")
    return table


# ---------------------------------------------------------------------------------------------
# Markdown


def _format_value(value: Any, low: Any, high: Any) -> str:
    if pd.isna(value):
        return "–"
    if pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown table: values as `0.612 [0.571, 0.650]` (95% interval), `–` where not evaluated."""
    keys = metric_columns(table)
    has_lambda = "lambda" in table and table["lambda"].notna().any()
    has_average = AVERAGE_COLUMN in table
    header = ["model", "run", "epoch", *(["λ"] if has_lambda else []), *(k.label for k in keys)]
    header += [*(["avg reasoning pass@1"] if has_average else []), "unparseable"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row["model"]), str(row["run"]), str(int(row["epoch"]))]
        if has_lambda:
            cells.append("" if pd.isna(row["lambda"]) else f"{row['lambda']:g}")
        cells += [_format_value(row[k.name], row[f"{k.name}_lo"], row[f"{k.name}_hi"]) for k in keys]
        if has_average:
            cells.append(_format_value(row[AVERAGE_COLUMN], row[f"{AVERAGE_COLUMN}_lo"], row[f"{AVERAGE_COLUMN}_hi"]))
        cells.append("–" if pd.isna(row[UNPARSEABLE_COLUMN]) else str(int(row[UNPARSEABLE_COLUMN])))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Membership of each (x, y) in the Pareto front, maximizing both coordinates.

    A point is on the front unless another point is at least as good in both coordinates and
    strictly better in one. Duplicates of a front point are all on the front; a point with a
    NaN coordinate is never on the front and dominates nothing.
    """
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    valid = ~np.isnan(arr).any(axis=1)
    x, y = arr[:, 0][:, None], arr[:, 1][:, None]
    geq = (x <= x.T) & (y <= y.T)  # [i, j]: point j is at least as good as point i
    gt = (x < x.T) | (y < y.T)
    dominated = (geq & gt & valid[None, :]).any(axis=1)
    return [bool(v and not d) for v, d in zip(valid, dominated, strict=True)]


# ---------------------------------------------------------------------------------------------
# Weight-analysis tables

_WEIGHT_PATH = re.compile(r"(?P<model>[^/\\]+)[/\\](?P<run>[^/\\]+)[/\\]epoch-(?P<epoch>\d+)\.csv$")


def load_weight_tables(paths: Iterable[str | Path], runs_meta: pd.DataFrame) -> pd.DataFrame:
    """Concatenate `.../weights/{model}/{run}/epoch-{e}.csv` tables with model, run, epoch, method."""
    frames = []
    for path in paths:
        match = _WEIGHT_PATH.search(str(path))
        if not match:
            raise ValueError(f"{path}: not a weights/{{model}}/{{run}}/epoch-{{epoch}}.csv path")
        frame = pd.read_csv(path)
        absent = [c for c in WEIGHT_COLUMNS if c not in frame.columns]
        if absent:
            raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
        run = match["run"]
        if run not in runs_meta.index:
            raise ValueError(f"{path}: runs metadata has no entry for run '{run}'")
        frame.insert(0, "model", match["model"])
        frame.insert(1, "run", run)
        frame.insert(2, "epoch", int(match["epoch"]))
        for column in ("method", "rank", "targets", "main"):
            frame[column] = runs_meta.loc[run, column]
        frames.append(frame)
    columns = ["model", "run", "epoch", *WEIGHT_COLUMNS, "method", "rank", "targets", "main"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
