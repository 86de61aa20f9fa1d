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
    # the later versions' module and layer ablations at r = 1 (12 synthetic layers: thirds 0-3, 4-7, 8-11)
    "lora-r1-up": {"method": "lora", "rank": 1, "targets": "up_proj"},
    "lora-r1-down": {"method": "lora", "rank": 1, "targets": "down_proj"},
    **{f"lora-r1-up-l{a}-{a + 3}": {"method": "lora", "rank": 1, "targets": "up_proj", "layers": [a, a + 3]}
       for a in (0, 4, 8)},
}  # fmt: skip
# (safety, reasoning multiplier) of each run's last epoch; earlier epochs move from the base model towards it
RUN_EFFECT = {
    "base": (0.35, 1.0), "full": (0.97, 0.55), "lora-r4-mlp": (0.93, 0.97), "lora-r1-mlp": (0.92, 0.98),
    "lora-r64-mlp": (0.85, 0.9), "lora-r4-mlp-attn": (0.93, 0.96), "reg-col": (0.92, 0.97),
    "reg-both": (0.93, 0.97), "lora-r4-mlp.om-both-l1.15": (0.94, 0.98), "lora-r4-mlp.om-col-l1": (0.9, 0.98),
    "lora-r1-up": (0.93, 0.99), "lora-r1-down": (0.9, 0.96), "lora-r1-up-l0-3": (0.85, 0.97),
    "lora-r1-up-l4-7": (0.94, 0.99), "lora-r1-up-l8-11": (0.88, 0.98),
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
                    # long reasoning hits the token limit less as training shortens it; most cut ones are mid-thought
                    samples = n * k
                    truncated = int(rng.binomial(samples, 0.3 * keep * (1 - 0.3 * t)))
                    records.append(score_record(*ck, bench, entries, truncation={
                        "samples": samples, "truncated": truncated, "unclosed_think": int(0.8 * truncated)}))  # fmt: skip
    return write_scores(folder, records)


def synthetic_weights(folder: Path, model: str, layers: int = 12) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    """Tables as analyze_checkpoint writes them: every (layer, module) of the analysis, metrics where adapted."""
    for run, epoch, rank_cap, modules, adapted_layers in [
        ("full", 2, 90, figures.MODULE_ORDER, range(layers)),
        ("lora-r4-mlp", 3, 4, figures.MODULE_ORDER[4:], range(layers)),
        ("lora-r4-mlp-attn", 3, 4, figures.MODULE_ORDER, range(layers)),
        ("lora-r1-up-l4-7", 3, 1, ("up_proj",), range(4, 8)),
    ]:
        rows = []
        for layer in range(layers):
            for module in figures.MODULE_ORDER:
                cos = rng.uniform(0.05, 0.2) * (0.6 if run != "full" else 1)
                metrics = {"stable_rank": rng.uniform(0.3, 1) * rank_cap, "col_cos": cos, "col_top16": cos * 1.5,
                           "row_cos": cos * 0.9, "row_top16": cos * 1.3, "delta_fro": rng.uniform(0.1, 1)}  # fmt: skip
                adapted = module in modules and layer in adapted_layers
                rows.append({"layer": layer, "module": module, "adapted": adapted,
                             **{k: v if adapted else np.nan for k, v in metrics.items()}})  # fmt: skip
        path = folder / "weights" / model / run / f"epoch-{epoch}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        paths.append(path)
    return paths


def synthetic_training_logs(folder: Path, model: str) -> list[Path]:
    """Manifests naming trainer_state.json files as the trainer writes them (10 steps an epoch, logged every 2)."""
    manifests = []
    for run, epochs, reg in (("full", 2, False), ("lora-r4-mlp", 3, False), ("reg-both", 3, True)):
        log = [{"step": s, "epoch": s / 10, "loss": 2.0 * 0.9 ** (s / 2), "learning_rate": 1e-4, "grad_norm": 1.0,
                **({"ortho_penalty": 1e-3 * s} if reg else {})} for s in range(2, 10 * epochs + 1, 2)]  # fmt: skip
        log.append({"step": 10 * epochs, "epoch": float(epochs), "train_loss": 1.0, "train_runtime": 1.0})
        state = folder / "checkpoints" / model / run / "trainer_state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"log_history": log, "max_steps": 10 * epochs, "num_train_epochs": epochs}))
        manifest = folder / "train" / model / run / "manifest.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"model": model, "run": run, "training_log": str(state)}))
        manifests.append(manifest)
    return manifests


EPOCHS = {run: (0 if run == "base" else 2 if run == "full" else 3) for run in RUN_EFFECT}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, ...]:
    folder = tmp_path_factory.mktemp("synthetic")
    files = agg.read_score_files(synthetic_scores(folder, ["r1-7b"], EPOCHS))
    meta = agg.runs_meta_frame(SYNTHETIC_META)
    table = agg.results_table(agg.scores_frame(files), [], meta, BENCH, n_boot=30)
    weights = agg.load_weight_tables(synthetic_weights(folder, "r1-7b"), meta)
    logs = figures.load_training_logs(synthetic_training_logs(folder, "r1-7b"))
    return table, agg.agreement_frame(files), weights, logs


def _inputs(name: str, synthetic: tuple[pd.DataFrame, ...]) -> pd.DataFrame:
    table, agreement, weights, logs = synthetic
    reads = registry.FIGURES[name].reads
    return {"table": table, "agreement": agreement, "weights": weights, "training_logs": logs}[reads]


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


def test_module_and_layer_figures_group_runs_by_runs_meta(synthetic: tuple[pd.DataFrame, ...], tmp_path: Path) -> None:
    """Series come from runs_meta's targets and layers, never from run names."""
    table = synthetic[0]
    modules = [(label, sorted(rows["run"].unique())) for label, rows, _ in figures._module_set_series(table, "r1-7b")]
    assert modules == [
        ("LoRA MLP r=1", ["lora-r1-mlp"]), ("LoRA up_proj r=1", ["lora-r1-up"]),
        ("LoRA down_proj r=1", ["lora-r1-down"]),
        ("LoRA MLP r=4", ["lora-r4-mlp"]), ("LoRA MLP + QKVO r=4", ["lora-r4-mlp-attn"]),
    ]  # fmt: skip
    layers = [(label, sorted(rows["run"].unique())) for label, rows, _ in figures._layer_range_series(table, "r1-7b")]
    assert layers == [
        ("LoRA up_proj r=1, every layer", ["lora-r1-up"]), ("LoRA up_proj r=1, layers 0-3", ["lora-r1-up-l0-3"]),
        ("LoRA up_proj r=1, layers 4-7", ["lora-r1-up-l4-7"]), ("LoRA up_proj r=1, layers 8-11", ["lora-r1-up-l8-11"]),
    ]  # fmt: skip
    assert all(len(rows) == 3 for _, rows, _ in figures._layer_range_series(table, "r1-7b")), "every epoch"
    ranks = [label for label, _, _ in figures._rank_series(table, "r1-7b")]
    assert ranks == ["LoRA r=1", "LoRA r=4", "LoRA r=64", "full fine-tuning"], "layer ranges and other targets stay out"
    no_ranges = table[table["layers"].isna()]
    figures.FIGURES["layers"](table, BENCH, tmp_path / "drawn.png")
    figures.FIGURES["layers"](no_ranges, BENCH, tmp_path / "placeholder.png")
    assert (tmp_path / "placeholder.png").stat().st_size < (tmp_path / "drawn.png").stat().st_size / 2


def test_weight_figures_say_what_a_run_does_not_adapt(synthetic: tuple[pd.DataFrame, ...]) -> None:
    weights = synthetic[2]
    note = {run: figures._not_adapted_note(rows) for run, rows in weights.groupby("run")}
    assert note == {
        "full": "",
        "lora-r4-mlp": "not adapted: q, k, v, o",
        "lora-r4-mlp-attn": "",
        "lora-r1-up-l4-7": "not adapted: q, k, v, o, gate, down; adapted layers 4-7 only",
    }


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


def test_training_curves_from_a_real_regularized_run(tmp_path: Path, tiny_model: Path, train_data: Path) -> None:
    """Train the tiny model with the regularizer (2 epochs of 3 steps, logging every step), then draw
    the figure through plot.py from the run's manifest and the trainer_state.json it names."""
    from tiny_model import recipe

    from safelora.training import sft

    p = sft.TrainPaths(train_data=train_data, base_model=str(tiny_model), state_dir=tmp_path / "state",
                       checkpoint_dir=tmp_path / "ckpt", manifest=tmp_path / "manifest.json")  # fmt: skip
    reg = {"mode": "both", "beta": 1.0, "k": 8, "reduction": "sum", "formula": "span", "weighted": True,
           "normalize": True, "k_schedule": "paper_code", "eps": 1e-8}  # fmt: skip
    assert sft.train(recipe("lora", run="reg-both", ortho_reg=reg), p) == 0
    logs = figures.load_training_logs([p.manifest])
    assert list(logs["step"]) == [1, 2, 3, 4, 5, 6] and set(logs["steps_per_epoch"]) == {3.0}
    assert logs["loss"].notna().all() and logs["ortho_penalty"].notna().all() and logs["ortho_penalty"].iloc[-1] > 0
    bench = tmp_path / "benchmarks.json"
    bench.write_text(json.dumps([{"name": n, "label": label, "kind": "safety"} for n, label in BENCH.labels.items()]))
    out = tmp_path / "training_curves.png"
    subprocess.run([sys.executable, str(REPO / "workflow_scripts" / "plot.py"), "--figure", "training_curves",
                    "--train-manifests", str(p.manifest), "--benchmarks", str(bench), "--out", str(out)],
                   check=True)  # fmt: skip
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 20_000
