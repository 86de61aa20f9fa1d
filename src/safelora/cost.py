"""Measured against estimated: each job's wall time from its Snakemake `benchmark:` file beside the
GPU-hour estimate of the same job (`safelora.gpu_hours.job_gpu_hours`), per rule.

The files are written with `--benchmark-extended` (both profiles set it), whose columns name the
job's rule, wildcards and resources, so a file alone says which job it measured on how many GPUs.
Measured GPU-hours are wall seconds x the job's GPUs / 3600; a job without GPUs counts none and
shows its wall hours. A file written before the profiles set `benchmark-extended` names its rule
by its folder only: it adds wall hours, and `?` GPUs, neither GPU-hours nor an estimate. See
docs/aggregation.md.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from safelora import registry
from safelora.gpu_hours import Assumptions, PlannedJob, job_gpu_hours
from safelora.io import atomic_write_text

EXTENDED_COLUMNS = ("s", "max_rss", "jobid", "rule_name", "wildcards", "resources")
COST_COLUMNS = ("rule", "jobs", "gpus_per_job", "gpus_unrecorded", "wall_hours", "gpu_hours", "priced_jobs", "estimated_gpu_hours",
                "measured_over_estimated", "max_rss_gb")  # fmt: skip


@dataclass(frozen=True)
class MeasuredJob:
    """One job's `benchmark:` file: its rule, the job (wildcards, GPUs; None where the file does not
    record them), its wall seconds and peak RSS (MB)."""

    path: str
    rule: str
    job: PlannedJob | None
    wall_s: float
    max_rss_mb: float


def read_benchmark(path: str | Path) -> MeasuredJob:
    """A `benchmark:` TSV of one job (`results/<experiment>/benchmarks/<rule>/...`); its last row
    where Snakemake repeated the job (`repeat()`). Without the extended columns the job is None."""
    frame = pd.read_csv(path, sep="\t")
    if "s" not in frame.columns or frame.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no `s` column, or no row)")
    row = frame.iloc[-1]
    rss = float(pd.to_numeric(row.get("max_rss"), errors="coerce"))  # "-" where not measured
    if any(c not in frame.columns for c in EXTENDED_COLUMNS):
        folders = Path(path).parts[:-1]
        if "benchmarks" not in folders[:-1]:
            raise ValueError(f"{path}: no extended columns and no benchmarks/<rule>/ folder to name its rule")
        rule = folders[len(folders) - folders[::-1].index("benchmarks")]  # the folder after the last `benchmarks`
        return MeasuredJob(str(path), rule, None, float(row["s"]), rss)
    try:
        wildcards, resources = ast.literal_eval(row["wildcards"]), ast.literal_eval(row["resources"])
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{path}: wildcards or resources column is not a Python dict: {err}") from err
    job = PlannedJob(
        rule=str(row["rule_name"]),
        jobid=int(row["jobid"]),
        wildcards={str(k): str(v) for k, v in wildcards.items()},
        resources={"gpu": str(resources.get("gpu", 0))},
    )
    return MeasuredJob(str(path), job.rule, job, float(row["s"]), rss)


def cost_table(measured: Iterable[MeasuredJob], config: dict[str, Any], a: Assumptions | None = None) -> pd.DataFrame:
    """Per rule family (every judge rule is `judge`): jobs, GPUs per job, measured wall hours and
    GPU-hours, the estimate of the same jobs where `Assumptions` prices them, the ratio measured /
    estimated over those priced jobs, and the largest peak RSS (GB)."""
    a = a or Assumptions()
    rows: dict[str, dict[str, Any]] = {}
    for m in measured:
        family = registry.rule_family(m.rule)
        row = rows.setdefault(family, {"rule": family, "jobs": 0, "gpus": set(), "unrecorded": 0, "wall_s": 0.0,
                                       "gpu_s": 0.0, "priced": 0, "priced_gpu_s": 0.0, "estimate_h": 0.0,
                                       "rss": math.nan})  # fmt: skip
        row["jobs"] += 1
        row["wall_s"] += m.wall_s
        row["rss"] = max(row["rss"], m.max_rss_mb) if not math.isnan(row["rss"]) else m.max_rss_mb
        if m.job is None:
            row["unrecorded"] += 1
            continue
        estimate = job_gpu_hours(m.job, config, a)
        row["gpus"].add(m.job.gpus)
        row["gpu_s"] += m.wall_s * m.job.gpus
        if estimate is not None:
            row["priced"] += 1
            row["priced_gpu_s"] += m.wall_s * m.job.gpus
            row["estimate_h"] += estimate
    table = [
        {
            "rule": r["rule"],
            "jobs": r["jobs"],
            "gpus_per_job": ", ".join(
                ["-".join(str(g) for g in sorted({min(r["gpus"]), max(r["gpus"])}))] * bool(r["gpus"])
                + ["?"] * bool(r["unrecorded"])
            ),
            "gpus_unrecorded": r["unrecorded"],
            "wall_hours": r["wall_s"] / 3600,
            "gpu_hours": r["gpu_s"] / 3600,
            "priced_jobs": r["priced"],
            "estimated_gpu_hours": r["estimate_h"] if r["priced"] else math.nan,
            "measured_over_estimated": r["priced_gpu_s"] / 3600 / r["estimate_h"] if r["estimate_h"] else math.nan,
            "max_rss_gb": r["rss"] / 1024,
        }
        for r in rows.values()
    ]
    frame = pd.DataFrame(table, columns=list(COST_COLUMNS))
    return frame.sort_values(["gpu_hours", "wall_hours", "rule"], ascending=[False, False, True], ignore_index=True)


def _hours(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.3f}"


def cost_markdown(table: pd.DataFrame) -> str:
    """The table in Markdown with a total row; `–` where no job of a rule is priced (no estimate)."""
    header = ("| rule | jobs | GPUs per job | measured wall h | measured GPU-h | estimated GPU-h (priced jobs) "
              "| measured / estimated | peak RSS GB |")  # fmt: skip
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        ratio = "–" if math.isnan(r.measured_over_estimated) else f"{r.measured_over_estimated:.2f}"
        rss = "–" if math.isnan(r.max_rss_gb) else f"{r.max_rss_gb:.1f}"
        lines.append(f"| {r.rule} | {r.jobs} | {r.gpus_per_job} | {_hours(r.wall_hours)} | {_hours(r.gpu_hours)} "
                     f"| {_hours(r.estimated_gpu_hours)} ({r.priced_jobs}) | {ratio} | {rss} |")  # fmt: skip
    estimated = table["estimated_gpu_hours"].sum(min_count=1)
    lines.append(f"| **total** | {table['jobs'].sum()} | | {_hours(table['wall_hours'].sum())} "
                 f"| {_hours(table['gpu_hours'].sum())} | {_hours(estimated)} ({table['priced_jobs'].sum()}) | | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_cost(paths: Iterable[str | Path], config: dict[str, Any], out_csv: str | Path, out_md: str | Path) -> str:
    """Read the benchmark files, write the table as CSV and Markdown; return the Markdown."""
    table = cost_table([read_benchmark(p) for p in paths], config)
    atomic_write_text(out_csv, table.to_csv(index=False, lineterminator="\n"))
    text = cost_markdown(table)
    atomic_write_text(out_md, text)
    return text
