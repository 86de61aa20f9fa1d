"""Every figure writes a PNG from a synthetic but realistic grid, and a placeholder without data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_aggregate import BENCH, RUNS_META, metric_entry, score_record, write_scores

from safelora import registry
from safelora.report import aggregate as agg
from safelora.report import figures

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SYNTHETIC_META = {
    **RUNS_META,
    "lora-r64-mlp": {"method": "lora", "rank": 64, "targets": "mlp", "lambda": None, "source": None},
    "lora-r4-mlp-attn": {"method": "lora", "rank": 4, "targets": "mlp_attn", "lambda": None, "source": None},
    "reg-col": {"method": "reg-col", "rank": 4, "targets": "mlp", "lambda": None, "source": None},
    "lora-r4-mlp.om-col-l1": {"method": "om-col", "rank": 4, "targets": "mlp", "lambda": 1.0, "source": "lora-r4-mlp"},
}
# (safety, reasoning multiplier) of each run's last epoch; earlier epochs move from the base model towards it
RUN_EFFECT = {
    "base": (0.35, 1.0), "full": (0.97, 0.55), "lora-r4-mlp": (0.93, 0.97), "lora-r1-mlp": (0.92, 0.98),
    "lora-r64-mlp": (0.85, 0.9), "lora-r4-mlp-attn": (0.93, 0.96), "reg-col": (0.92, 0.97),
    "reg-both": (0.93, 0.97), "lora-r4-mlp.om-both-l1.15": (0.94, 0.98), "lora-r4-mlp.om-col-l1": (0.9, 0.98),
}  # fmt: skip
# benchmark -> (variant -> base-model accuracy), problems, samples per problem
REASONING = {
    "aime": ({None: 0.55}, 30, 8),
    "gpqa": ({None: 0.5}, 198, 8),
    "humaneval": ({"base": 0.88, "plus": 0.82}, 164, 8),
    "mbpp": ({"base": 0.8, "plus": 0.68}, 378, 8),
}


def synthetic_scores(folder: Path, models: list[str], epochs: dict[str, int], seed: int = 0) -> list[Path]:
    """Score files shaped like the paper's grid (StrongREJECT, XSTest, AIME, GPQA, HumanEval(+), MBPP(+))."""
    rng = np.random.default_rng(seed)
    records = []
    for model in models:
        for run, (safety_end, keep_end) in RUN_EFFECT.items():
            for epoch in range(1 if epochs[run] else 0, epochs[run] + 1):
                t = epoch / epochs[run] if epochs[run] else 0.0
                safety = 0.35 + (safety_end - 0.35) * min(1.0, 1.6 * t)
                keep = 1 + (keep_end - 1) * t
                ck = (model, run, epoch)
                unsafe = rng.random(313) > safety
                guard = [0.0 if u else 1.0 for u in unsafe]
                match = [g if rng.random() > 0.1 else 1 - g for g in guard]
                records.append(score_record(*ck, "strongreject", [
                    metric_entry("safety", dict(enumerate(guard)), grader="llama_guard", unparseable=int(rng.integers(0, 3))),
                    metric_entry("safety", dict(enumerate(match)), grader="refusal_match", primary=False),
                ], agreement=[{"graders": ["llama_guard", "refusal_match"], "kappa": float(rng.uniform(0.5, 0.9)),
                               "n": 313}]))  # fmt: skip
                refused = (rng.random(250) < 0.02 + 0.25 * (safety - 0.35)).astype(float)
                records.append(score_record(*ck, "xstest", [
                    metric_entry("over_refusal", dict(enumerate(refused.tolist())), grader="refusal_match")]))  # fmt: skip
                for bench, (variants, n, k) in REASONING.items():
                    difficulty = np.random.default_rng(hash(bench) % 2**32).random(n)
                    entries = []
                    for variant, acc in variants.items():
                        p = np.clip(acc * keep + (0.5 - difficulty) * 0.6, 0, 1)
                        per = (rng.binomial(k, p) / k).tolist()
                        entries.append(metric_entry("pass@1", dict(enumerate(per)), variant=variant, grader="g",
                                                    samples_per_problem=k))  # fmt: skip
                    records.append(score_record(*ck, bench, entries))
    return write_scores(folder, records)


def synthetic_weights(folder: Path, model: str, layers: int = 12) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for run, epoch, rank_cap, modules in [
        ("full", 2, 90, figures.MODULE_ORDER),
        ("lora-r4-mlp", 3, 4, figures.MODULE_ORDER[4:]),
        ("lora-r4-mlp-attn", 3, 4, figures.MODULE_ORDER),
    ]:
        rows = []
        for layer in range(layers):
            for module in modules:
                cos = rng.uniform(0.05, 0.2) * (0.6 if run != "full" else 1)
                rows.append({"layer": layer, "module": module, "stable_rank": rng.uniform(0.3, 1) * rank_cap,
                             "col_cos": cos, "col_top16": cos * 1.5, "row_cos": cos * 0.9, "row_top16": cos * 1.3,
                             "delta_fro": rng.uniform(0.1, 1)})  # fmt: skip
        path = folder / "weights" / model / run / f"epoch-{epoch}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        paths.append(path)
    return paths


EPOCHS = {run: (0 if run == "base" else 2 if run == "full" else 3) for run in RUN_EFFECT}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("synthetic")
    files = agg.read_score_files(synthetic_scores(folder, ["r1-7b"], EPOCHS))
    meta = agg.runs_meta_frame(SYNTHETIC_META)
    table = agg.results_table(agg.scores_frame(files), [], meta, BENCH, n_boot=30)
    weights = agg.load_weight_tables(synthetic_weights(folder, "r1-7b"), meta)
    return table, agg.agreement_frame(files), weights


def _inputs(name: str, synthetic: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    table, agreement, weights = synthetic
    return {"table": table, "agreement": agreement, "weights": weights}[registry.FIGURES[name].reads]


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_figure_writes_png(name: str, synthetic: tuple[pd.DataFrame, ...], tmp_path: Path) -> None:
    out = tmp_path / f"{name}.png"
    figures.FIGURES[name](_inputs(name, synthetic), BENCH, out)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000  # a drawn figure, not the small placeholder


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_placeholder_when_data_is_absent(name: str, synthetic: tuple[pd.DataFrame, ...], tmp_path: Path) -> None:
    empty = _inputs(name, synthetic).iloc[0:0]
    out = tmp_path / f"{name}.png"
    figures.FIGURES[name](empty, BENCH, out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_demo_like_grid_without_ablations_gets_placeholders(
    synthetic: tuple[pd.DataFrame, ...], tmp_path: Path
) -> None:
    table = synthetic[0]
    demo = table[table["run"].isin(["base", "full", "lora-r4-mlp"])]
    for name in ("fig3", "fig7"):
        drawn, placeholder = tmp_path / f"{name}.png", tmp_path / f"{name}-placeholder.png"
        figures.FIGURES[name](table, BENCH, drawn)
        figures.FIGURES[name](demo, BENCH, placeholder)
        assert placeholder.stat().st_size < drawn.stat().st_size / 2


def test_plot_cli(synthetic: tuple[pd.DataFrame, ...], tmp_path: Path) -> None:
    table_path = tmp_path / "results.csv"
    agg.write_csv(synthetic[0], table_path)
    out = tmp_path / "fig2.png"
    script = str(REPO / "workflow_scripts" / "plot.py")
    bench = tmp_path / "benchmarks.json"
    bench.write_text(json.dumps([{"name": n, "label": label, "kind": "safety"} for n, label in BENCH.labels.items()]))
    subprocess.run([sys.executable, script, "--figure", "fig2", "--table", str(table_path), "--benchmarks", str(bench),
                    "--out", str(out)], check=True)  # fmt: skip
    assert out.read_bytes().startswith(PNG_MAGIC)
    agreement_path = tmp_path / "agreement.csv"
    agg.write_csv(synthetic[1], agreement_path)
    subprocess.run([sys.executable, script, "--figure", "agreement", "--agreement", str(agreement_path),
                    "--benchmarks", str(bench), "--out", str(tmp_path / "agreement.png")], check=True)  # fmt: skip
    assert (tmp_path / "agreement.png").stat().st_size > 20_000
    for figure, needs in (("fig4", b"--runs-meta"), ("agreement", b"--agreement"), ("fig5", b"--table")):
        missing = subprocess.run([sys.executable, script, "--figure", figure, "--benchmarks", str(bench),
                                  "--out", str(out)], capture_output=True)  # fmt: skip
        assert missing.returncode == 2 and needs in missing.stderr


def test_titles_name_the_benchmarks_shown(synthetic: tuple[pd.DataFrame, ...]) -> None:
    keys = agg.metric_columns(synthetic[0], BENCH)
    headline = agg.headline_reasoning_columns(keys)
    assert figures.title_with_benchmarks("fig2", headline) == (
        "Figure 2: reasoning vs safety (" + " / ".join(k.benchmark_label for k in headline) + ")"
    )
    demo = agg.Benchmarks({"strongreject": "StrongREJECT", "arithmetic": "Arithmetic"})
    columns = agg.headline_reasoning_columns(demo.sorted([agg.ColumnKey("pass@1", "arithmetic")]))
    assert figures.title_with_benchmarks("fig2", columns) == "Figure 2: reasoning vs safety (Arithmetic)"
