"""One function per figure of the paper (Figures 1–7), two of its later versions (LoRA target
modules, layer ranges) and three beyond it.

Every function takes tidy tables (the aggregated results table, the agreement table or the
weight-analysis rows) and an output path, and always writes a PNG: when the data a figure needs is
absent it writes a placeholder that says what is missing, so the report always builds.
Colours are Okabe–Ito (colour-blind safe) and every method also has its own marker, so figures
read in grayscale. Matplotlib is used through `Figure` objects only (no pyplot global state).
"""

from __future__ import annotations

import io
import json
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from safelora import registry
from safelora.io import atomic_write_bytes
from safelora.report.aggregate import (
    AVERAGE_COLUMN,
    LORA_FAMILY,
    TRUNCATION_SHARES,
    Benchmarks,
    ColumnKey,
    base_variant_columns,
    first_column,
    headline_reasoning_columns,
    metric_columns,
    pareto_front,
    truncation_columns,
)

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}  # fmt: skip
# Yellow is left out everywhere: it vanishes on white.
SERIES = [(OKABE_ITO[c], m) for c, m in
          [("vermillion", "o"), ("blue", "s"), ("green", "D"), ("orange", "^"), ("purple", "v"), ("sky", "P"),
           ("black", "X")]]  # fmt: skip

# LoRA ranks in Figure 7: no blue and no triangle, which mark full fine-tuning beside them.
RANK_SERIES = [(OKABE_ITO[c], m) for c, m in
               [("vermillion", "o"), ("green", "D"), ("orange", "P"), ("purple", "v"), ("sky", "X"), ("black", "h")]]  # fmt: skip

METHOD_STYLE = {
    "base": ("Base model", OKABE_ITO["black"], "s"),
    "full": ("Full fine-tuning", OKABE_ITO["blue"], "^"),
    "lora": ("LoRA", OKABE_ITO["vermillion"], "o"),
    "reg-col": ("Regularization-col", OKABE_ITO["sky"], "v"),
    "reg-both": ("Regularization-both", OKABE_ITO["green"], "D"),
    "om-col": ("OrthoMerge-col", OKABE_ITO["orange"], "P"),
    "om-both": ("OrthoMerge-both", OKABE_ITO["purple"], "*"),
}
TARGET_LABELS = {"mlp": "MLP", "mlp_attn": "MLP + QKVO"}  # others (up_proj, ...) by their own name
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALIGNMENT_METRICS = {
    "col_cos": r"(a) column: $\|W_I^\top \Delta W\| \,/\, \|W_I\| \|\Delta W\|$",
    "col_top16": r"(b) column: $\|U_{16} U_{16}^\top \Delta W\| \,/\, \|\Delta W\|$",
    "row_cos": r"(c) row: $\|W_I \Delta W^\top\| \,/\, \|W_I\| \|\Delta W\|$",
    "row_top16": r"(d) row: $\|V_{16} V_{16}^\top \Delta W^\top\| \,/\, \|\Delta W\|$",
}

STYLE = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SAFER = "↑ safer"
BETTER = "↑ better"
CI_NOTE = "error bars: 95% bootstrap intervals"


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _new_figure(rows: int, cols: int, panel: tuple[float, float], **kwargs: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width, so one-panel figures do not clip it."""
    width = max(30, int(fig.get_figwidth() * 10))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")))


def _save(fig: Figure, out: str | os.PathLike[str]) -> None:
    """Render to memory, then write atomically, so no half-written PNG is left."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    atomic_write_bytes(out, buffer.getvalue())


def placeholder(out: str | os.PathLike[str], title: str, message: str) -> None:
    """A figure that says what data it is waiting for."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(8, 3), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=14, weight="bold", transform=ax.transAxes)
        ax.text(0.5, 0.35, f"Not drawn: {message}", ha="center", va="center", wrap=True, transform=ax.transAxes)
        _save(fig, out)


def _empty_panel(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _lighten(color: str, strength: float) -> tuple[float, float, float]:
    """Blend with white: strength 1 is the colour itself, 0 is white."""
    rgb = np.array(to_rgb(color))
    return tuple(1 - strength * (1 - rgb))  # type: ignore[return-value]


def _epoch_strength(epochs: pd.Series) -> pd.Series:
    """0.3 for a run's first epoch up to 1 for its last: lighter = earlier (Figures 3c and 7)."""
    order = epochs.rank(method="dense")
    top = order.max()
    return 0.3 + 0.7 * (order - 1) / (top - 1) if top > 1 else pd.Series(1.0, index=epochs.index)


def _err(rows: pd.DataFrame, column: str) -> np.ndarray:
    """Asymmetric error-bar lengths from `_lo`/`_hi`; missing bounds draw no bar."""
    value = rows[column].to_numpy(float)
    low = np.nan_to_num(value - rows[f"{column}_lo"].to_numpy(float), nan=0.0)
    high = np.nan_to_num(rows[f"{column}_hi"].to_numpy(float) - value, nan=0.0)
    return np.vstack([np.clip(low, 0, None), np.clip(high, 0, None)])


def _scatter_ci(
    ax: Axes,
    rows: pd.DataFrame,
    x: str,
    y: str,
    color: Any,
    marker: str,
    label: str | None = None,
    ci_alpha: float = 0.6,
    **kw: Any,
) -> None:
    rows = rows[rows[x].notna() & rows[y].notna()]
    if rows.empty:
        return
    ax.errorbar(
        rows[x], rows[y], xerr=_err(rows, x), yerr=_err(rows, y), fmt="none", ecolor=color, elinewidth=0.8,
        capsize=2, alpha=ci_alpha, zorder=2,
    )  # fmt: skip
    ax.scatter(rows[x], rows[y], color=color, marker=marker, s=kw.pop("s", 46), edgecolors="0.15", linewidths=0.5,
               label=label, zorder=3, **kw)  # fmt: skip


def _method_handles(methods: Sequence[str]) -> list[Line2D]:
    return [
        Line2D([], [], color=METHOD_STYLE[m][1], marker=METHOD_STYLE[m][2], linestyle="", markersize=8,
               markeredgecolor="0.15", label=METHOD_STYLE[m][0])
        for m in methods
    ]  # fmt: skip


def _bottom_legend(fig: Figure, handles: Sequence[Any], title: str | None = None) -> None:
    if handles:
        per_row = max(1, int(fig.get_figwidth() // 2.3))  # about 2.3 inches per entry
        fig.legend(handles=list(handles), loc="outside lower center", ncol=min(len(handles), per_row), frameon=False,
                   title=title)  # fmt: skip


def _safety_label(key: ColumnKey) -> str:
    return f"{key.benchmark_label} safety score ({SAFER})"


def _label_grid_edges(ax: Axes, bottom_row: bool, left_column: bool, safety: ColumnKey) -> None:
    """Reasoning-vs-safety panels: the y label on the left column, the x label on the bottom row."""
    if left_column:
        ax.set_ylabel(f"pass@1 ({BETTER})")
    if bottom_row:
        ax.set_xlabel(_safety_label(safety))


def _final_epochs(rows: pd.DataFrame) -> pd.DataFrame:
    """Each run's last epoch (the checkpoint the rank ablation reports)."""
    return rows[rows["epoch"] == rows.groupby(["model", "run"])["epoch"].transform("max")]


def _main_lora(table: pd.DataFrame) -> pd.Series:
    return (table["method"] == "lora") & table["main"].astype(bool)


def _has_points(rows: pd.DataFrame, x: str, ys: Sequence[str]) -> bool:
    """Whether any row has `x` and at least one of `ys`."""
    return bool((rows[x].notna() & rows[list(ys)].notna().any(axis=1)).any())


def _models(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["model"]))


# ---------------------------------------------------------------------------------------------
# Figures 2 and 6: reasoning vs safety per checkpoint


def title_with_benchmarks(figure: str, columns: Sequence[ColumnKey]) -> str:
    """The figure's registry title, followed by the labels of the benchmarks it shows."""
    title = registry.FIGURES[figure].title
    return f"{title} ({' / '.join(k.benchmark_label for k in columns)})" if columns else title


def _reasoning_vs_safety(
    table: pd.DataFrame, safety: ColumnKey | None, columns: list[ColumnKey], figure: str, out: str | os.PathLike[str]
) -> None:
    """Figures 2 and 6."""
    title = title_with_benchmarks(figure, columns)
    if safety is None or not columns:
        what = "a safety benchmark" if safety is None else "the reasoning benchmarks this figure shows"
        placeholder(out, title, f"the results table has no scores for {what}.")
        return
    rows = table[table["method"].isin(["base", "full"]) | _main_lora(table)]
    if not _has_points(rows, safety.name, [k.name for k in columns]):
        placeholder(out, title, "no checkpoint of the base model, full fine-tuning or LoRA is scored yet.")
        return
    models = _models(rows)
    methods = [m for m in ("base", "full", "lora") if (rows["method"] == m).any()]
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), len(columns), (3.7, 3.3), sharex=True)
        for i, model in enumerate(models):
            for j, key in enumerate(columns):
                ax = axes[i, j]
                panel = rows[(rows["model"] == model) & rows[key.name].notna() & rows[safety.name].notna()]
                ax.set_title(f"{model}: {key.benchmark_label}")
                if panel.empty:
                    _empty_panel(ax, "no scores yet")
                    continue
                for method in methods:
                    _, color, marker = METHOD_STYLE[method]
                    _scatter_ci(ax, panel[panel["method"] == method], safety.name, key.name, color, marker)
                _label_grid_edges(ax, i == len(models) - 1, j == 0, safety)
        _suptitle(fig, f"{title}\nevery checkpoint (all epochs); {CI_NOTE}")
        _bottom_legend(fig, _method_handles(methods))
        _save(fig, out)


def fig2_reasoning_vs_safety(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 2: pass@1 (plus variants of HumanEval/MBPP) vs safety, base vs full vs LoRA."""
    keys = metric_columns(table, benchmarks)
    _reasoning_vs_safety(table, first_column(keys, "safety"), headline_reasoning_columns(keys), "fig2", out)


def fig6_reasoning_vs_safety_base(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 6: as Figure 2 on the base (non-plus) variants of the code benchmarks."""
    keys = metric_columns(table, benchmarks)
    _reasoning_vs_safety(table, first_column(keys, "safety"), base_variant_columns(keys), "fig6", out)


# ---------------------------------------------------------------------------------------------
# Figures 3 and 7: LoRA rank and target-module ablations


def _ablation_rows(table: pd.DataFrame, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LoRA runs over every layer sharing the main run's target modules (one per rank), and full fine-tuning."""
    rows = table[table["model"] == model]
    main = rows[_main_lora(rows)]
    targets = main["targets"].iloc[0] if not main.empty else "mlp"
    lora = _all_layer_lora(rows)
    lora = lora[(lora["targets"] == targets) & lora["rank"].notna()]
    return lora, rows[rows["method"] == "full"]


def _all_layer_lora(rows: pd.DataFrame) -> pd.DataFrame:
    """Plain LoRA runs (no regularizer, no OrthoMerge) on every layer: no `layers` range."""
    return rows[(rows["method"] == "lora") & rows["layers"].isna()]


def _module_rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """LoRA runs at the main run's rank, one per target-module set (Figure 3c)."""
    rows = _all_layer_lora(table[table["model"] == model])
    main = rows[rows["main"].astype(bool)]
    if main.empty:
        return rows.iloc[0:0]
    return rows[rows["rank"] == main["rank"].iloc[0]]


def _summary_reasoning(table: pd.DataFrame, benchmarks: Benchmarks) -> tuple[str, str] | None:
    """Average reasoning pass@1 when any row has it, else the first reasoning column."""
    if AVERAGE_COLUMN in table and table[AVERAGE_COLUMN].notna().any():
        return AVERAGE_COLUMN, "average reasoning pass@1"
    headline = headline_reasoning_columns(metric_columns(table, benchmarks))
    return (headline[0].name, f"{headline[0].benchmark_label} pass@1") if headline else None


def _rank_positions(lora: pd.DataFrame, full: pd.DataFrame) -> dict[Any, int]:
    ranks = sorted(int(r) for r in lora["rank"].dropna().unique())
    positions: dict[Any, int] = {r: i for i, r in enumerate(ranks)}
    if not full.empty:
        positions["full"] = len(ranks)
    return positions


def _rank_axis(ax: Axes, positions: dict[Any, int]) -> None:
    ax.set_xticks(list(positions.values()), [f"r={p}" if p != "full" else "full" for p in positions])
    ax.set_xlim(-0.5, len(positions) - 0.5)
    ax.set_xlabel("LoRA rank (full fine-tuning rightmost)")


def _plot_against_rank(ax: Axes, final: pd.DataFrame, positions: dict[Any, int], column: str, color: str,
                       marker: str) -> None:  # fmt: skip
    points = final.assign(
        pos=[positions["full" if m == "full" else int(r)] for m, r in zip(final["method"], final["rank"], strict=True)]
    )
    points = points[points[column].notna()].sort_values("pos")
    if points.empty:
        return
    ax.errorbar(points["pos"], points[column], yerr=_err(points, column), color=color, marker=marker, markersize=7,
                markeredgecolor="0.15", capsize=3, linewidth=1.4)  # fmt: skip


def _module_panel(ax: Axes, rows: pd.DataFrame, safety: ColumnKey, reasoning: tuple[str, str]) -> list[Line2D]:
    handles = []
    # SERIES[4:]: colours not used by the benchmark lines of panels (a) and (b)
    for (targets, group), (color, marker) in zip(rows.groupby("targets", sort=True), SERIES[4:], strict=False):
        group = group.assign(strength=_epoch_strength(group["epoch"]))
        for _, row in group.iterrows():
            _scatter_ci(ax, row.to_frame().T, safety.name, reasoning[0], _lighten(color, row["strength"]), marker)
        label = f"LoRA {TARGET_LABELS.get(targets, targets)} (r={int(group['rank'].iloc[0])})"
        handles.append(Line2D([], [], color=color, marker=marker, linestyle="", markersize=8, label=label,
                              markeredgecolor="0.15"))  # fmt: skip
    ax.set_xlabel(_safety_label(safety))
    ax.set_ylabel(f"{reasoning[1]} ({BETTER})")
    return handles


def fig3_rank_ablation(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 3: (a) reasoning and (b) safety at the final epoch per LoRA rank, full rightmost;
    (c) MLP vs MLP+QKVO LoRA, every epoch, lightness by epoch."""
    title = registry.FIGURES["fig3"].title
    safety = first_column(metric_columns(table, benchmarks), "safety")
    reasoning = _summary_reasoning(table, benchmarks)
    headline = headline_reasoning_columns(metric_columns(table, benchmarks))
    models = [m for m in _models(table)
              if _ablation_rows(table, m)[0]["rank"].nunique() >= 2 or _module_rows(table, m)["targets"].nunique() >= 2]  # fmt: skip
    if safety is None or reasoning is None or not models:
        placeholder(out, title, "needs safety and reasoning scores for LoRA runs of at least two ranks "
                                "(rank ablation) or two target-module sets (MLP vs MLP + QKVO).")  # fmt: skip
        return
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), 3, (4.4, 3.6))
        handles: list[Any] = []
        for i, model in enumerate(models):
            lora, full = _ablation_rows(table, model)
            final = _final_epochs(pd.concat([lora, full]))
            positions = _rank_positions(lora, full)
            ax_a, ax_b, ax_c = axes[i]
            if lora["rank"].nunique() >= 2:
                for key, (color, marker) in zip(headline, SERIES, strict=False):
                    _plot_against_rank(ax_a, final, positions, key.name, color, marker)
                _plot_against_rank(ax_b, final, positions, safety.name, OKABE_ITO["black"], "o")
                for ax in (ax_a, ax_b):
                    _rank_axis(ax, positions)
                ax_a.set_ylabel(f"pass@1 ({BETTER})")
                ax_b.set_ylabel(_safety_label(safety))
            else:
                _empty_panel(ax_a, "only one LoRA rank")
                _empty_panel(ax_b, "only one LoRA rank")
            ax_a.set_title(f"{model}: (a) reasoning, final epoch")
            ax_b.set_title(f"{model}: (b) safety, final epoch")
            modules = _module_rows(table, model)
            ax_c.set_title(f"{model}: (c) target modules, all epochs")
            if modules["targets"].nunique() >= 2:
                handles += [h for h in _module_panel(ax_c, modules, safety, reasoning) if h.get_label() not in
                            {x.get_label() for x in handles}]  # fmt: skip
            else:
                _empty_panel(ax_c, "no second target-module set\n(MLP + QKVO) for this model")
        bench_handles = [Line2D([], [], color=c, marker=m, markeredgecolor="0.15", label=k.benchmark_label)
                         for k, (c, m) in zip(headline, SERIES, strict=False)]  # fmt: skip
        _suptitle(fig, f"{title}\n(c): lighter = earlier epoch; {CI_NOTE}")
        _bottom_legend(fig, bench_handles + handles)
        _save(fig, out)


Series = tuple[str, pd.DataFrame, tuple[Any, str]]  # (legend label, its checkpoints' rows, (colour, marker))


def _all_epochs_figure(
    table: pd.DataFrame,
    benchmarks: Benchmarks,
    out: str | os.PathLike[str],
    figure: str,
    series_of: Callable[[pd.DataFrame, str], list[Series]],
    missing: str,
) -> None:
    """Reasoning vs safety at every epoch, one panel per (model, headline reasoning benchmark) and one
    series per group of runs, lighter = earlier epoch (Figures 3c and 7). `series_of(table, model)`
    gives a model's series, none when it has nothing to compare; `missing` says what a placeholder waits for."""
    title = registry.FIGURES[figure].title
    safety = first_column(metric_columns(table, benchmarks), "safety")
    headline = headline_reasoning_columns(metric_columns(table, benchmarks))
    series = {model: series_of(table, model) for model in _models(table)}
    models = [model for model, found in series.items() if found]
    if safety is None or not headline or not models:
        placeholder(out, title, missing)
        return
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), len(headline), (3.7, 3.4), sharex=True)
        labels: dict[str, Line2D] = {}
        for i, model in enumerate(models):
            for j, key in enumerate(headline):
                ax = axes[i, j]
                ax.set_title(f"{model}: {key.benchmark_label}")
                for label, group, (color, marker) in series[model]:
                    group = group.assign(strength=_epoch_strength(group["epoch"]))
                    for _, row in group.iterrows():
                        _scatter_ci(
                            ax, row.to_frame().T, safety.name, key.name, _lighten(color, row["strength"]), marker
                        )
                    labels.setdefault(label, Line2D([], [], color=color, marker=marker, linestyle="", markersize=8,
                                                    markeredgecolor="0.15", label=label))  # fmt: skip
                _label_grid_edges(ax, i == len(models) - 1, j == 0, safety)
        _suptitle(fig, f"{title} (lighter = earlier epoch)\n{CI_NOTE}")
        _bottom_legend(fig, list(labels.values()))
        _save(fig, out)


def _styled(groups: list[tuple[str, pd.DataFrame]], styles: Sequence[tuple[Any, str]] = SERIES) -> list[Series]:
    """Each group with the next style; past the palette's end the styles repeat (labels still differ)."""
    return [(label, rows, styles[i % len(styles)]) for i, (label, rows) in enumerate(groups)]


def _rank_series(table: pd.DataFrame, model: str) -> list[Series]:
    """Figure 7: one series per LoRA rank of the main run's targets, and full fine-tuning; none with one rank."""
    lora, full = _ablation_rows(table, model)
    if lora["rank"].nunique() < 2:
        return []
    series = _styled([(f"LoRA r={int(r)}", g) for r, g in lora.groupby("rank")], RANK_SERIES)
    full_style = (METHOD_STYLE["full"][1], METHOD_STYLE["full"][2])
    return series + ([("full fine-tuning", full, full_style)] if not full.empty else [])


def _targets_label(targets: str, rank: Any) -> str:
    return f"LoRA {TARGET_LABELS.get(targets, targets)} r={int(rank)}"


def _targets_order(targets: str) -> tuple[int, str]:
    """MLP, MLP + QKVO, then single modules in q, k, v, o, gate, up, down order, then any other set."""
    order = [*TARGET_LABELS, *MODULE_ORDER]
    return (order.index(targets) if targets in order else len(order), targets)


def _module_set_series(table: pd.DataFrame, model: str) -> list[Series]:
    """One series per target-module set at each LoRA rank that has two or more sets (every layer)."""
    lora = _all_layer_lora(table[table["model"] == model])
    lora = lora[lora["rank"].notna()]
    groups = []
    for rank, at_rank in lora.groupby("rank"):
        if at_rank["targets"].nunique() >= 2:
            for targets in sorted(at_rank["targets"].unique(), key=_targets_order):
                groups.append((_targets_label(targets, rank), at_rank[at_rank["targets"] == targets]))
    return _styled(groups)


def _layer_start(layers: str) -> int:
    return int(layers.split("-")[0])


def _layer_range_series(table: pd.DataFrame, model: str) -> list[Series]:
    """For each (targets, rank) with a layer-range run: that setting on every layer, then each range by its first layer."""
    lora = table[(table["model"] == model) & (table["method"] == "lora") & table["rank"].notna()]
    groups = []
    for (targets, rank), setting in lora.groupby(["targets", "rank"], sort=False):
        ranged = setting[setting["layers"].notna()]
        if ranged.empty:
            continue
        label = _targets_label(targets, rank)
        every = setting[setting["layers"].isna()]
        groups += [(f"{label}, every layer", every)] if not every.empty else []
        for layers in sorted(ranged["layers"].unique(), key=_layer_start):
            groups.append((f"{label}, layers {layers}", ranged[ranged["layers"] == layers]))
    return _styled(groups)


def fig7_rank_all_epochs(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 7: reasoning vs safety for every LoRA rank (and full) at every epoch; lighter = earlier."""
    _all_epochs_figure(table, benchmarks, out, "fig7", _rank_series,
                       "needs safety and reasoning scores for LoRA runs of at least two ranks.")  # fmt: skip


def module_sets_all_epochs(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 3c of the later versions: reasoning vs safety per LoRA target-module set (MLP, up_proj, ...)."""
    _all_epochs_figure(table, benchmarks, out, "modules", _module_set_series,
                       "needs safety and reasoning scores for LoRA runs of two target-module sets at one rank.")  # fmt: skip


def layer_ranges_all_epochs(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """The later versions' layer study: reasoning vs safety per LoRA layer range (e.g. 0-15, 16-31, 32-47)."""
    _all_epochs_figure(table, benchmarks, out, "layers", _layer_range_series,
                       "needs safety and reasoning scores for a LoRA run with `layers` (a range of layers).")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Figure 5: Pareto fronts per method


def fig5_pareto(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 5: per method, only the checkpoints on its (safety, pass@1) Pareto front."""
    title = registry.FIGURES["fig5"].title
    safety = first_column(metric_columns(table, benchmarks), "safety")
    headline = headline_reasoning_columns(metric_columns(table, benchmarks))
    rows = table[table["method"].isin(LORA_FAMILY) & ((table["method"] != "lora") | table["main"].astype(bool))]
    if safety is None or not headline or not _has_points(rows, safety.name, [k.name for k in headline]):
        placeholder(out, title, "needs safety and reasoning scores for LoRA-family runs "
                                "(LoRA, Regularization, OrthoMerge).")  # fmt: skip
        return
    models = _models(rows)
    methods = [m for m in LORA_FAMILY if (rows["method"] == m).any()]
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), len(headline), (3.7, 3.4), sharex=True)
        for i, model in enumerate(models):
            for j, key in enumerate(headline):
                ax = axes[i, j]
                ax.set_title(f"{model}: {key.benchmark_label}")
                panel = rows[(rows["model"] == model) & rows[key.name].notna() & rows[safety.name].notna()]
                if panel.empty:
                    _empty_panel(ax, "no scores yet")
                    continue
                for method in methods:
                    points = panel[panel["method"] == method]
                    front = points[pareto_front(list(zip(points[safety.name], points[key.name], strict=True)))]
                    front = front.sort_values(safety.name)
                    _, color, marker = METHOD_STYLE[method]
                    ax.plot(front[safety.name], front[key.name], color=color, linewidth=1, alpha=0.7, zorder=1)
                    _scatter_ci(
                        ax, front, safety.name, key.name, color, marker, ci_alpha=0.35, s=90 if marker == "*" else 46
                    )
                _label_grid_edges(ax, i == len(models) - 1, j == 0, safety)
        _suptitle(fig, f"{title} (epochs and λ per method)\n{CI_NOTE}")
        _bottom_legend(fig, _method_handles(methods))
        _save(fig, out)


# ---------------------------------------------------------------------------------------------
# Beyond the paper: over-refusal and judge agreement


def overrefusal_vs_safety(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Safety vs over-refusal for every checkpoint: upper left is safe without refusing benign prompts."""
    title = registry.FIGURES["overrefusal"].title
    keys = metric_columns(table, benchmarks)
    safety, refusal = first_column(keys, "safety"), first_column(keys, "over_refusal")
    if safety is None or refusal is None:
        placeholder(out, title, "needs both a safety and an over-refusal benchmark in the results table.")
        return
    if not _has_points(table, refusal.name, [safety.name]):
        placeholder(out, title, "no checkpoint has both a safety and an over-refusal score yet.")
        return
    models = _models(table)
    methods = [m for m in METHOD_STYLE if (table["method"] == m).any()]
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(1, len(models), (4.6, 4.0), sharey=True)
        for ax, model in zip(axes[0], models, strict=True):
            panel = table[table["model"] == model]
            for method in methods:
                _, color, marker = METHOD_STYLE[method]
                _scatter_ci(
                    ax, panel[panel["method"] == method], refusal.name, safety.name, color, marker, ci_alpha=0.3
                )
            ax.set_title(model)
            ax.set_xlabel(f"{refusal.benchmark_label} over-refusal rate (↓ better)")
        axes[0, 0].set_ylabel(_safety_label(safety))
        _suptitle(fig, f"{title}: every checkpoint\n{CI_NOTE}")
        _bottom_legend(fig, _method_handles(methods))
        _save(fig, out)


def truncation(table: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Share of samples stopped at the token limit (solid) and with thinking never closed (dashed)
    per epoch, one line per run, a panel per (model, benchmark). Scores are unchanged by it."""
    title = registry.FIGURES["truncation"].title
    truncated, unclosed = (truncation_columns(table, prefix) for prefix in TRUNCATION_SHARES)
    panels = [
        (model, column, column.replace("truncated_share", "unclosed_think_share", 1))
        for model in _models(table)
        for column in sorted(truncated, key=lambda c: benchmarks.order(c.split(":", 1)[1]))
        if table.loc[table["model"] == model, column].notna().any()
    ]
    if not panels:
        placeholder(out, title, "no Score file with truncation counts in the results table.")
        return
    runs = list(dict.fromkeys(table["run"]))
    styles = dict(zip(runs, _styled([(run, table) for run in runs]), strict=True))
    cols = min(len(panels), 3)
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(-(-len(panels) // cols), cols, (4.4, 3.2), sharey=True)
        for ax, (model, column, unclosed_column) in zip(axes.flat, panels, strict=False):
            rows = table[table["model"] == model].sort_values("epoch")
            for run, group in rows.groupby("run", sort=False):
                _, _, (color, marker) = styles[run]
                ax.plot(group["epoch"], group[column], color=color, marker=marker, linewidth=1.2, markersize=5)
                if unclosed_column in unclosed:
                    ax.plot(group["epoch"], group[unclosed_column], color=color, marker=marker, linestyle="--",
                            linewidth=1, markersize=3, markerfacecolor="none")  # fmt: skip
            benchmark = column.split(":", 1)[1]
            ax.set_title(f"{model}: {benchmarks.labels.get(benchmark, benchmark)}")
            ax.set_xlabel("epoch")
            ax.set_ylim(-0.03, 1.03)
            ax.xaxis.get_major_locator().set_params(integer=True)
        for ax in axes[:, 0]:
            ax.set_ylabel("share of samples")
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_axis_off()
        _suptitle(fig, f"{title}\nsolid: stopped at the token limit; dashed: </think> never closed")
        handles = [Line2D([], [], color=c, marker=m, label=run) for run, (_, _, (c, m)) in styles.items()]
        _bottom_legend(fig, handles, title="run")
        _save(fig, out)


def judge_agreement(agreement: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Cohen's kappa between two graders per checkpoint: a run x epoch grid per model and grader pair."""
    title = registry.FIGURES["agreement"].title
    agreement = agreement[agreement["kappa"].notna()] if "kappa" in agreement else agreement.iloc[0:0]
    if agreement.empty:
        placeholder(out, title, "no Score file has an agreement entry (benchmarks with a single grader).")
        return
    agreement = agreement.assign(
        pair=[
            f"{b}: {a} vs {c}"
            for b, a, c in zip(agreement["benchmark"], agreement["grader_a"], agreement["grader_b"], strict=True)
        ]
    )
    panels = list(agreement.groupby(["model", "pair"], sort=False))
    runs = max(g["run"].nunique() for _, g in panels)
    epochs = max(g["epoch"].nunique() for _, g in panels)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = _new_figure(len(panels), 1, (3.2 + 0.6 * epochs, 0.8 + 0.32 * runs))
        for ax, ((model, pair), group) in zip(axes[:, 0], panels, strict=True):
            grid = group.pivot_table(index="run", columns="epoch", values="kappa", aggfunc="mean")
            grid = grid.reindex(index=list(dict.fromkeys(group["run"])), columns=sorted(grid.columns))
            image = ax.imshow(grid.to_numpy(float), cmap="cividis", vmin=0, vmax=1, aspect="auto")
            for (i, j), kappa in np.ndenumerate(grid.to_numpy(float)):
                if not np.isnan(kappa):
                    ax.text(j, i, f"{kappa:.2f}", ha="center", va="center", fontsize=9,
                            color="white" if kappa < 0.6 else "black")  # fmt: skip
            ax.set_xticks(range(grid.shape[1]), [str(e) for e in grid.columns])
            ax.set_yticks(range(grid.shape[0]), list(grid.index))
            ax.set_xlabel("epoch")
            ax.set_title(f"{model}: {pair}")
        fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.6, label="κ (1 = perfect, 0 = chance; blank = not scored)")
        _suptitle(fig, title)
        _save(fig, out)


# ---------------------------------------------------------------------------------------------
# Figures 1 and 4: weight analysis


def _module_order(modules: Sequence[str]) -> list[str]:
    """Modules in q, k, v, o, gate, up, down order (matched on the name's end), others after."""

    def rank(name: str) -> tuple[int, str]:
        for i, short in enumerate(MODULE_ORDER):
            if name.endswith(short):
                return (i, name)
        return (len(MODULE_ORDER), name)

    return sorted(set(modules), key=rank)


def _run_label(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    if first["method"] == "full":
        return f"full fine-tuning, epoch {int(first['epoch'])}"
    targets = TARGET_LABELS.get(first["targets"], first["targets"])
    layers = f" layers {first['layers']}" if isinstance(first["layers"], str) else ""
    return f"LoRA r={int(first['rank'])} {targets}{layers}, epoch {int(first['epoch'])}"


def _spans(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans: list[list[int]] = []
    for v in sorted(values):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _not_adapted_note(group: pd.DataFrame) -> str:
    """What a checkpoint's weight table covers and its update leaves out (rows with adapted False):
    modules it never adapts, and the layers it adapts when not all; empty when it adapts everything."""
    adapted = group[group["adapted"].astype(bool)]
    notes = []
    absent = [m for m in _module_order(group["module"]) if m not in set(adapted["module"])]
    if absent:
        notes.append("not adapted: " + ", ".join(m.removesuffix("_proj") for m in absent))
    if adapted["layer"].nunique() < group["layer"].nunique():
        notes.append(f"adapted layers {_spans(adapted['layer'].unique())} only")
    return "; ".join(notes)


def fig1_stable_rank(weights: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 1: stable rank of ΔW per layer, colour by module; full fine-tuning, LoRA alongside."""
    title = registry.FIGURES["fig1"].title
    rows = _final_epochs(weights[weights["method"].isin(["full", "lora"])]) if len(weights) else weights
    if rows.empty:
        placeholder(out, title, "no weight-analysis table of a full or LoRA run (results/analysis/weights/).")
        return
    panels = [(m, g) for (m, _, _), g in rows.groupby(["model", "method", "run"], sort=False)]
    panels.sort(key=lambda p: (p[0], p[1]["method"].iloc[0] != "full", p[1]["run"].iloc[0]))
    modules = _module_order(rows.loc[rows["adapted"].astype(bool), "module"])
    styles = dict(zip(modules, SERIES, strict=False))
    cols = min(len(panels), 3)
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(-(-len(panels) // cols), cols, (5.2, 3.4))
        for ax, (model, group) in zip(axes.flat, panels, strict=False):
            for module in modules:
                data = group[(group["module"] == module) & group["adapted"].astype(bool)].sort_values("layer")
                color, marker = styles[module]
                ax.plot(data["layer"], data["stable_rank"], color=color, marker=marker, markersize=4, linewidth=1,
                        label=module)  # fmt: skip
            note = _not_adapted_note(group)
            ax.set_title(f"{model}: {_run_label(group)}" + (f"\n({note})" if note else ""))
            ax.set_xlim(group["layer"].min() - 0.5, group["layer"].max() + 0.5)
            ax.set_xlabel("layer index")
            ax.set_ylabel("stable rank of ΔW")
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_axis_off()
        _suptitle(
            fig,
            f"{title}\n" + r"stable rank $= \|\Delta W\|_F^2 \,/\, \|\Delta W\|_2^2$ (each panel has its own scale)",
        )
        handles = [Line2D([], [], color=c, marker=m, label=mod) for mod, (c, m) in styles.items()]
        _bottom_legend(fig, handles, title="module")
        _save(fig, out)


def _alignment_runs(weights: pd.DataFrame, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Full and the LoRA run to compare with it: MLP + QKVO LoRA if analysed (as in the paper),
    else the main LoRA run, else any; each at its last analysed epoch."""
    rows = _final_epochs(weights[weights["model"] == model])
    full = rows[rows["method"] == "full"]
    lora = rows[rows["method"] == "lora"]
    for choice in (
        lora[(lora["targets"] == "mlp_attn") & lora["layers"].isna()],
        lora[lora["main"].astype(bool)],
        lora,
    ):
        if not choice.empty:
            return full, choice[choice["run"] == choice["run"].iloc[0]]
    return full, lora


def fig4_alignment(weights: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Figure 4: the four alignment metrics, averaged over layers per module type, full vs LoRA."""
    title = registry.FIGURES["fig4"].title
    models = (
        [m for m in _models(weights) if all(not r.empty for r in _alignment_runs(weights, m))] if len(weights) else []
    )
    if not models:
        placeholder(out, title, "needs weight-analysis tables of both a full and a LoRA run of one model.")
        return
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), 4, (3.9, 3.4))
        handles: list[Any] = []
        for i, model in enumerate(models):
            full, lora = _alignment_runs(weights, model)
            modules = _module_order(pd.concat([full, lora])["module"])
            x = np.arange(len(modules))
            for ax, (metric, label) in zip(axes[i], ALIGNMENT_METRICS.items(), strict=True):
                bars = []
                for offset, run, (color, hatch) in ((-0.2, full, (OKABE_ITO["blue"], "")),
                                                    (0.2, lora, (OKABE_ITO["vermillion"], "//"))):  # fmt: skip
                    adapted = run[run["adapted"].astype(bool)]
                    means = adapted.groupby("module")[metric].mean().reindex(modules)
                    bars.append(ax.bar(x + offset, means.to_numpy(float), width=0.4, color=color, hatch=hatch,
                                       edgecolor="0.15", linewidth=0.5, label=_run_label(run)))  # fmt: skip
                    for position in x[means.isna().to_numpy()]:
                        ax.text(position + offset, 0, "not adapted", rotation=90, ha="center", va="bottom",
                                fontsize=7, color="0.35")  # fmt: skip
                ax.set_xticks(x, [m.removesuffix("_proj") for m in modules])
                ax.set_title(label, fontsize=10)
                ax.set_xlabel("module")
                if metric == "col_cos":
                    ax.set_ylabel(f"{model}\nmean over layers (↓ more orthogonal)")
            handles += [b for b in bars if b.get_label() not in {h.get_label() for h in handles}]
        _suptitle(fig, title)
        _bottom_legend(fig, handles)
        _save(fig, out)


def load_training_logs(manifests: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per logged training step of each run: model, run, step, loss, learning_rate, grad_norm,
    ortho_penalty (NaN where the run has no regularizer), steps_per_epoch and epochs, read from the trainer's
    `trainer_state.json` that each training manifest names (`training_log`)."""
    frames = []
    for path in manifests:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        state = json.loads(Path(manifest["training_log"]).read_text(encoding="utf-8"))
        steps = pd.DataFrame([e for e in state["log_history"] if "loss" in e])
        if steps.empty:
            continue
        steps = steps.reindex(columns=["step", "loss", "learning_rate", "grad_norm", "ortho_penalty"])
        epochs = state["num_train_epochs"]
        frames.append(steps.assign(model=manifest["model"], run=manifest["run"], epochs=epochs,
                                   steps_per_epoch=state["max_steps"] / epochs))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_curves(logs: pd.DataFrame, benchmarks: Benchmarks, out: str | os.PathLike[str]) -> None:
    """Training loss against optimizer step per run, one row of panels per model, dashed lines at the
    runs' epoch ends; a second panel with the orthogonality regularizer's term where a run has one."""
    title = registry.FIGURES["training_curves"].title
    if logs.empty:
        placeholder(out, title, "no training log (the training manifests' trainer_state.json) with a logged loss.")
        return
    models = list(dict.fromkeys(logs["model"]))
    with_reg = bool(logs["ortho_penalty"].notna().any())
    with matplotlib.rc_context(STYLE):
        fig, axes = _new_figure(len(models), 2 if with_reg else 1, (6.4, 3.4))
        handles: dict[str, Line2D] = {}
        styles = dict(zip(dict.fromkeys(logs["run"]), SERIES * len(logs), strict=False))
        for row, model in zip(axes, models, strict=True):
            rows = logs[logs["model"] == model]
            for run, group in rows.groupby("run", sort=False):
                color, marker = styles[run]
                style = {"color": color, "marker": marker, "markersize": 3, "linewidth": 1, "label": run,
                         "markevery": max(1, len(group) // 12)}  # fmt: skip
                handles[run] = row[0].plot(group["step"], group["loss"], **style)[0]
                for epoch in range(1, int(group["epochs"].iloc[0]) + 1):
                    row[0].axvline(epoch * group["steps_per_epoch"].iloc[0], color=color, linestyle="--",
                                   linewidth=0.8, alpha=0.6)  # fmt: skip
                if with_reg and group["ortho_penalty"].notna().any():
                    row[1].plot(group["step"], group["ortho_penalty"], **style)
            row[0].set_title(f"{model}: training loss")
            row[0].set_xlabel("optimizer step")
            row[0].set_ylabel("loss (logged mean)")
            if with_reg:
                row[1].set_title(f"{model}: orthogonality regularizer term")
                row[1].set_xlabel("optimizer step")
                if rows["ortho_penalty"].notna().any():
                    row[1].set_ylabel("β · penalty (logged mean)")
                else:
                    _empty_panel(row[1], "no regularized run of this model")
        _suptitle(fig, title)
        _bottom_legend(fig, list(handles.values()), title="run")
        _save(fig, out)


# ---------------------------------------------------------------------------------------------

# name -> function; what each reads and its title: safelora/registry.py FIGURES
FIGURES: dict[str, Callable[[pd.DataFrame, Benchmarks, str | os.PathLike[str]], None]] = {
    "fig1": fig1_stable_rank,
    "fig2": fig2_reasoning_vs_safety,
    "fig3": fig3_rank_ablation,
    "fig4": fig4_alignment,
    "fig5": fig5_pareto,
    "fig6": fig6_reasoning_vs_safety_base,
    "fig7": fig7_rank_all_epochs,
    "modules": module_sets_all_epochs,
    "layers": layer_ranges_all_epochs,
    "overrefusal": overrefusal_vs_safety,
    "agreement": judge_agreement,
    "training_curves": training_curves,
    "truncation": truncation,
}
registry.check_implemented("figures", list(registry.FIGURES), FIGURES)
