"""Results table, bootstrap intervals, judge agreement and Pareto fronts.

Aggregation reads only `Score` summaries and weight-analysis tables (docs/design.md), never
generations. Column names of the results table encode what they hold, so figures can read the
table alone: `<metric>:<benchmark>[:<variant>]` (e.g. `pass@1:humaneval:plus`), each with
`<col>_lo` / `<col>_hi` bounds; beside the scores, `truncated_share:<benchmark>` and
`unclosed_think_share:<benchmark>` (`TRUNCATION_SHARES`). See docs/aggregation.md.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safelora.io import atomic_write_text, read_record
from safelora.registry import METRIC_LABELS, METRICS, REASONING_METRIC

LORA_FAMILY = ("lora", "reg-col", "reg-both", "om-col", "om-both")
TARGETS = ("mlp", "mlp_attn")
PLUS, BASE_VARIANT = "plus", "base"

ID_COLUMNS = ("model", "run", "epoch")
META_COLUMNS = ("method", "rank", "targets", "layers", "lambda", "source", "main")
AVERAGE_COLUMN = "reasoning_avg"
UNPARSEABLE_COLUMN = "unparseable"
# Share of a checkpoint's samples on a benchmark that stopped at the token limit, and that never
# closed their thinking (Score `truncation`, parsers.truncation_flags): column prefix -> count, label.
TRUNCATION_SHARES = {
    "truncated_share": ("truncated", "at token limit"),
    "unclosed_think_share": ("unclosed_think", "</think> unclosed"),
}
WEIGHT_COLUMNS = ("layer", "module", "adapted", "stable_rank", "col_cos", "col_top16", "row_cos", "row_top16",
                  "delta_fro")  # fmt: skip
WEIGHT_META_COLUMNS = ("method", "rank", "targets", "layers", "main")


class ScoreFileError(ValueError):
    """Two Score files for the same (checkpoint, benchmark, seed), or a metric whose value is not
    what its per-problem values give; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Column names


@dataclass(frozen=True)
class ColumnKey:
    """One metric column of the results table; `title` is its benchmark's label (config)."""

    metric: str
    benchmark: str
    variant: str | None = None
    title: str | None = field(default=None, compare=False)

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
        """The benchmark's label with its variant: `HumanEval+` for EvalPlus's plus tests."""
        label = self.title or self.benchmark
        if self.variant == PLUS:
            return f"{label}+"
        if self.variant in (None, BASE_VARIANT):
            return label
        return f"{label} ({self.variant})"

    @property
    def label(self) -> str:
        return f"{self.benchmark_label} {METRIC_LABELS[self.metric]}"


@dataclass(frozen=True)
class Benchmarks:
    """Display label of each benchmark, in display order: config.yaml's `benchmarks:` entries
    in their order (describe_grid writes them to benchmarks.json). A benchmark the config does
    not name (say, a Score file of a benchmark since removed) shows under its own name, last."""

    labels: Mapping[str, str]

    @classmethod
    def load(cls, path: str | Path) -> Benchmarks:
        return cls({entry["name"]: entry["label"] for entry in read_record(path, "benchmarks")})

    def order(self, benchmark: str) -> tuple[int, str]:
        names = list(self.labels)
        return (names.index(benchmark) if benchmark in names else len(names), benchmark)

    def sorted(self, keys: Iterable[ColumnKey]) -> list[ColumnKey]:
        """The keys in display order, each titled with its benchmark's label."""
        variant_rank = {None: 0, BASE_VARIANT: 1, PLUS: 2}
        titled = [replace(k, title=self.labels.get(k.benchmark)) for k in keys]
        return sorted(
            titled,
            key=lambda k: (
                METRICS.index(k.metric),
                self.order(k.benchmark),
                variant_rank.get(k.variant, 3),
                k.variant or "",
            ),
        )


def metric_columns(table: pd.DataFrame, benchmarks: Benchmarks) -> list[ColumnKey]:
    """The metric columns of a results table, in display order."""
    return benchmarks.sorted(k for k in map(ColumnKey.parse, table.columns) if k is not None)


def headline_reasoning_columns(keys: Iterable[ColumnKey]) -> list[ColumnKey]:
    """One pass@1 column per benchmark: the `plus` variant where there is one (Figure 2), else
    the benchmark's only (or first) variant. These feed the average reasoning score. `keys` and
    the result are in display order."""
    by_benchmark: dict[str, list[ColumnKey]] = {}
    for key in keys:
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
    return [k for k in keys if k.metric == REASONING_METRIC and k.variant == BASE_VARIANT and k.benchmark in with_plus]


def first_column(keys: Iterable[ColumnKey], metric: str) -> ColumnKey | None:
    """The first column of a metric in `keys` (display order): e.g. the safety score the figures use."""
    for key in keys:
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
    truncation: dict[str, int]


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def read_score_file(path: str | Path) -> ScoreFile:
    """One Score record (schemas/records/score.schema.yaml), checked again where read: its schema and
    ranges, and each metric's value against its per-problem values (`check_metric_values`)."""
    obj = read_record(path, "score")
    for index, metric in enumerate(obj["metrics"]):
        check_metric_values(metric, f"score record {path}: metrics/{index} (grader {metric['grader']})")
    metrics = [
        {**m, "value": _number(m["value"]), "per_problem": {k: _number(v) for k, v in m["per_problem"].items()}}
        for m in obj["metrics"]
    ]
    agreement = [
        {"grader_a": a["graders"][0], "grader_b": a["graders"][1], "kappa": _number(a["kappa"]), "n": a["n"]}
        for a in obj.get("agreement", [])
    ]
    if not obj["truncation"]["truncated"] <= obj["truncation"]["samples"] >= obj["truncation"]["unclosed_think"]:
        raise ScoreFileError(f"score record {path}: truncation counts {obj['truncation']} exceed its samples")
    return ScoreFile(
        str(path),
        obj["model"],
        obj["run"],
        obj["epoch"],
        obj["benchmark"],
        obj.get("seed", 0),
        metrics,
        agreement,
        obj["truncation"],
    )


def check_metric_values(metric: Mapping[str, Any], where: str) -> None:
    """Raise ScoreFileError unless the metric's value is the mean of its per-problem values (what
    score.py computes; null or NaN when no problem has one) and its counts agree."""
    values = [_number(v) for v in metric["per_problem"].values()]
    mean = sum(values) / len(values) if values else math.nan
    value = _number(metric["value"])
    if not (math.isclose(value, mean, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(value) and math.isnan(mean))):
        raise ScoreFileError(f"{where}: value {value} is not the mean {mean} of its {len(values)} per-problem values")
    if len(values) > metric["n_problems"] or metric["unparseable"] > metric["n_samples"]:
        raise ScoreFileError(
            f"{where}: {len(values)} per-problem values for n_problems {metric['n_problems']}, or unparseable "
            f"{metric['unparseable']} above n_samples {metric['n_samples']}"
        )


def read_score_files(paths: Iterable[str | Path]) -> list[ScoreFile]:
    """Read every file; two files for the same (checkpoint, benchmark, seed) are an error (ScoreFileError)."""
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
    "generated", "truncated", "unclosed_think",
)  # fmt: skip


def scores_frame(files: Sequence[ScoreFile]) -> pd.DataFrame:
    """Tidy table, one row per (file, metric entry); `per_problem` keeps the dict for the bootstrap;
    `generated`, `truncated`, `unclosed_think` are the file's truncation counts (on each of its rows)."""
    rows = [
        {
            "model": f.model,
            "run": f.run,
            "epoch": f.epoch,
            "benchmark": f.benchmark,
            "seed": f.seed,
            "path": f.path,
            **m,
            "generated": f.truncation["samples"],
            "truncated": f.truncation["truncated"],
            "unclosed_think": f.truncation["unclosed_think"],
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


def runs_meta_frame(meta: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Run → {method, rank, targets, layers, lambda, source, main} (schemas/records/runs_meta.schema.yaml) as a frame.

    `main` marks the config's `aggregate.main_run` (the LoRA run Figures 2, 5 and 6 show); `layers`
    is the LoRA layer range as text, `16-31` (None: every layer).
    """
    rows = [{"run": run, **{column: entry.get(column) for column in META_COLUMNS}} for run, entry in meta.items()]
    for row in rows:
        row["layers"] = layer_range_label(row["layers"])
    frame = pd.DataFrame(rows, columns=["run", *META_COLUMNS])
    frame["main"] = frame["main"].eq(True)
    return frame.set_index("run")


def layer_range_label(layers: Sequence[int] | None) -> str | None:
    """`[16, 31]` -> `16-31` (both included); None (every layer) stays None."""
    return None if layers is None else f"{layers[0]}-{layers[1]}"


def load_runs_meta(path: str | Path) -> pd.DataFrame:
    return runs_meta_frame(read_record(path, "runs_meta"))


@dataclass(frozen=True)
class ExpectedCheckpoint:
    """A checkpoint the config asks for; `benchmarks` None means 'every benchmark seen'."""

    model: str
    run: str
    epoch: int
    benchmarks: tuple[str, ...] | None = None


def parse_expected(entries: Sequence[Sequence[Any] | Mapping[str, Any]]) -> list[ExpectedCheckpoint]:
    """Entries (schemas/records/expected.schema.yaml) are `[model, run, epoch]` or
    `{"model", "run", "epoch"[, "benchmarks"]}`."""
    entries = [dict(zip(ID_COLUMNS, e, strict=True)) if isinstance(e, list) else e for e in entries]
    return [
        ExpectedCheckpoint(
            e["model"], e["run"], e["epoch"], None if e.get("benchmarks") is None else tuple(e["benchmarks"])
        )
        for e in entries
    ]


def load_expected(path: str | Path) -> list[ExpectedCheckpoint]:
    return parse_expected(read_record(path, "expected"))


def missing_report(
    scores: pd.DataFrame, expected: Sequence[ExpectedCheckpoint], benchmarks: Benchmarks
) -> pd.DataFrame:
    """Expected checkpoints lacking Score files: one row each, with the benchmarks not found."""
    seen = scores.groupby(list(ID_COLUMNS))["benchmark"].agg(set).to_dict() if len(scores) else {}
    every = set(scores["benchmark"])
    rows = []
    for exp in expected:
        wanted = set(exp.benchmarks) if exp.benchmarks is not None else every
        have = seen.get((exp.model, exp.run, exp.epoch), set())
        absent = sorted(wanted - have, key=benchmarks.order)
        if absent or not have:
            rows.append({"model": exp.model, "run": exp.run, "epoch": exp.epoch, "missing": ", ".join(absent) or "all"})
    return pd.DataFrame(rows, columns=["model", "run", "epoch", "missing"])


def missing_text(missing: pd.DataFrame) -> str:
    if missing.empty:
        return "Nothing missing: every expected checkpoint has every benchmark.\n"
    lines = [f"{r.model} {r.run} epoch {r.epoch}: missing {r.missing}" for r in missing.itertuples()]
    return f"{len(lines)} expected checkpoint(s) incomplete:\n" + "\n".join(lines) + "\n"


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
    benchmarks: Benchmarks,
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
    keys = benchmarks.sorted({ColumnKey(m, b, None if pd.isna(v) else v)
                              for m, b, v in zip(primary["metric"], primary["benchmark"], primary["variant"],
                                                 strict=True)})  # fmt: skip
    headline = headline_reasoning_columns(keys)
    groups = {k: g for k, g in primary.groupby(["model", "run", "epoch", "metric", "benchmark"], dropna=False)}
    checkpoints = list(dict.fromkeys([(e.model, e.run, e.epoch) for e in expected] + _scored(scores)))
    unknown = sorted({run for _, run, _ in checkpoints} - set(runs_meta.index))
    if unknown:
        raise ValueError(f"runs metadata has no entry for run(s): {', '.join(unknown)}")
    unparseable = scores.groupby(list(ID_COLUMNS))["unparseable"].sum().to_dict()
    shares = truncation_shares(scores)
    scored_benchmarks = sorted(set(scores["benchmark"]), key=benchmarks.order)
    truncation_columns = [f"{prefix}:{b}" for b in scored_benchmarks for prefix in TRUNCATION_SHARES]

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
        for column in truncation_columns:
            row[column] = shares.get((model, run, epoch, column), math.nan)
        rows.append(row)

    value_columns = [c for k in keys for c in (k.name, f"{k.name}_lo", f"{k.name}_hi")]
    average = [AVERAGE_COLUMN, f"{AVERAGE_COLUMN}_lo", f"{AVERAGE_COLUMN}_hi"] if headline else []
    columns = [*ID_COLUMNS, *META_COLUMNS, *value_columns, *average, UNPARSEABLE_COLUMN, *truncation_columns]
    return pd.DataFrame(rows, columns=columns)


def truncation_shares(scores: pd.DataFrame) -> dict[tuple[str, str, int, str], float]:
    """(model, run, epoch, `<prefix>:<benchmark>`) -> share of the samples with that flag, over the
    checkpoint's Score files of the benchmark (its seeds): each file counted once, not per metric."""
    files = scores.drop_duplicates("path")
    sums = files.groupby([*ID_COLUMNS, "benchmark"])[["generated", *(c for c, _ in TRUNCATION_SHARES.values())]].sum()
    return {
        (model, run, int(epoch), f"{prefix}:{benchmark}"): row[count] / row["generated"]
        if row["generated"]
        else math.nan
        for (model, run, epoch, benchmark), row in sums.iterrows()
        for prefix, (count, _) in TRUNCATION_SHARES.items()
    }


def truncation_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    """The results table's `<prefix>:<benchmark>` columns (a `TRUNCATION_SHARES` prefix), in table order."""
    return [c for c in table.columns if str(c).split(":")[0] == prefix]


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


def to_markdown(table: pd.DataFrame, benchmarks: Benchmarks) -> str:
    """Markdown table: values as `0.612 [0.571, 0.650]` (95% interval), `–` where not evaluated."""
    keys = metric_columns(table, benchmarks)
    has_lambda = "lambda" in table and table["lambda"].notna().any()
    has_average = AVERAGE_COLUMN in table
    header = ["model", "run", "epoch", *(["λ"] if has_lambda else []), *(k.label for k in keys)]
    header += [*(["avg reasoning pass@1"] if has_average else []), "unparseable"]
    shares = [c for prefix in TRUNCATION_SHARES for c in truncation_columns(table, prefix)]
    shares.sort(key=lambda c: benchmarks.order(c.split(":", 1)[1]))
    header += [f"{benchmarks.labels.get(c.split(':', 1)[1], c.split(':', 1)[1])} {TRUNCATION_SHARES[c.split(':')[0]][1]}"
               for c in shares]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row["model"]), str(row["run"]), str(int(row["epoch"]))]
        if has_lambda:
            cells.append("" if pd.isna(row["lambda"]) else f"{row['lambda']:g}")
        cells += [_format_value(row[k.name], row[f"{k.name}_lo"], row[f"{k.name}_hi"]) for k in keys]
        if has_average:
            cells.append(_format_value(row[AVERAGE_COLUMN], row[f"{AVERAGE_COLUMN}_lo"], row[f"{AVERAGE_COLUMN}_hi"]))
        cells.append("–" if pd.isna(row[UNPARSEABLE_COLUMN]) else str(int(row[UNPARSEABLE_COLUMN])))
        cells += ["–" if pd.isna(row[c]) else f"{row[c]:.1%}" for c in shares]
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
        for column in WEIGHT_META_COLUMNS:
            frame[column] = runs_meta.loc[run, column]
        frames.append(frame)
    columns = ["model", "run", "epoch", *WEIGHT_COLUMNS, *WEIGHT_META_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
