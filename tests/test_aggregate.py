"""Results table, bootstrap intervals, Pareto fronts and the records aggregation reads, on synthetic files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from safelora.io import RecordError, write_record
from safelora.report import aggregate as agg

REPO = Path(__file__).resolve().parents[1]
# The paper config's benchmarks: their labels and display order.
BENCH = agg.Benchmarks(
    {n: b["label"] for n, b in yaml.safe_load((REPO / "config.yaml").read_text())["benchmarks"].items()}
)

RUNS_META = {
    "base": {"method": "base", "rank": None, "targets": None, "lambda": None, "source": None},
    "full": {"method": "full", "rank": None, "targets": None, "lambda": None, "source": None},
    "lora-r4-mlp": {"method": "lora", "rank": 4, "targets": "mlp", "lambda": None, "source": None, "main": True},
    "lora-r1-mlp": {"method": "lora", "rank": 1, "targets": "mlp", "lambda": None, "source": None},
    "reg-both": {"method": "reg-both", "rank": 4, "targets": "mlp", "lambda": None, "source": None},
    "lora-r4-mlp.om-both-l1.15": {"method": "om-both", "rank": 4, "targets": "mlp", "lambda": 1.15,
                                  "source": "lora-r4-mlp"},
}  # fmt: skip


def metric_entry(
    metric: str, per_problem: dict[str, float | None], variant: str | None = None, grader: str = "g",
    primary: bool = True, unparseable: int = 0, samples_per_problem: int = 1,
) -> dict[str, Any]:  # fmt: skip
    present = [v for v in per_problem.values() if v is not None]
    return {
        "metric": metric, "variant": variant, "grader": grader, "primary": primary,
        "value": float(np.mean(present)) if present else None, "n_problems": len(per_problem),
        "n_samples": len(per_problem) * samples_per_problem, "unparseable": unparseable, "per_problem": per_problem,
    }  # fmt: skip


def score_record(
    model: str, run: str, epoch: int, benchmark: str, metrics: list[dict[str, Any]],
    agreement: list[dict[str, Any]] | None = None, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    truncation = {"samples": metrics[0]["n_samples"], "truncated": 0, "unclosed_think": 0}
    return {"model": model, "run": run, "epoch": epoch, "benchmark": benchmark, "scorer_version": 1,
            "metrics": metrics, "agreement": agreement or [], "truncation": truncation, **extra}  # fmt: skip


def write_scores(folder: Path, records: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for i, record in enumerate(records):
        path = folder / f"{i:03d}-{record['benchmark']}.json"
        write_record(path, "score", record)
        paths.append(path)
    return paths


def problems(values: list[float | None], prefix: str = "p") -> dict[str, float | None]:
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


def meta() -> pd.DataFrame:
    return agg.runs_meta_frame(RUNS_META)


def expected(*ids: tuple[str, str, int]) -> list[agg.ExpectedCheckpoint]:
    return [agg.ExpectedCheckpoint(*i) for i in ids]


@pytest.fixture
def grid(tmp_path: Path) -> list[Path]:
    """base and lora-r4-mlp epoch 1 fully scored; full epoch 1 has safety only."""
    records = []
    for run, epoch, safe, code_base, code_plus in [
        ("base", 0, [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]),
        ("lora-r4-mlp", 1, [1, 1, 1, 0], [1, 1, 0.5, 0], [1, 0.5, 0.5, 0]),
    ]:
        records.append(score_record("m", run, epoch, "strongreject", [
            metric_entry("safety", problems(safe), grader="llama_guard", unparseable=1),
            metric_entry("safety", problems([1, 1, 1, 1]), grader="refusal_match", primary=False, unparseable=2),
        ], agreement=[{"graders": ["llama_guard", "refusal_match"], "kappa": 0.5, "n": 4}]))  # fmt: skip
        records.append(score_record("m", run, epoch, "humaneval", [
            metric_entry("pass@1", problems(code_base), variant="base", grader="evalplus"),
            metric_entry("pass@1", problems(code_plus), variant="plus", grader="evalplus"),
        ]))  # fmt: skip
        records.append(score_record("m", run, epoch, "aime", [
            metric_entry("pass@1", problems([0.5, 0.25, 0.0]), grader="qwen_math"),
        ]))  # fmt: skip
    records.append(score_record("m", "full", 1, "strongreject", [
        metric_entry("safety", problems([1, 1, 1, 1]), grader="llama_guard")]))  # fmt: skip
    return write_scores(tmp_path, records)


def test_table_values_columns_and_unparseable(grid: list[Path]) -> None:
    scores = agg.load_scores(grid)
    table = agg.results_table(scores, expected(("m", "base", 0), ("m", "lora-r4-mlp", 1)), meta(), BENCH, n_boot=200)
    assert [c.name for c in agg.metric_columns(table, BENCH)] == [
        "safety:strongreject", "pass@1:aime", "pass@1:humaneval:base", "pass@1:humaneval:plus",
    ]  # fmt: skip
    lora = table.set_index("run").loc["lora-r4-mlp"]
    assert lora["safety:strongreject"] == pytest.approx(0.75)  # primary grader, not refusal_match (1.0)
    assert lora["pass@1:humaneval:base"] == pytest.approx(0.625)
    assert lora["pass@1:humaneval:plus"] == pytest.approx(0.5)
    # the average uses the plus variant of HumanEval, alongside AIME
    assert lora[agg.AVERAGE_COLUMN] == pytest.approx((0.25 + 0.5) / 2)
    assert lora["unparseable"] == 3  # all graders count
    assert lora["method"] == "lora" and bool(lora["main"])
    for col in ("safety:strongreject", "pass@1:humaneval:plus", agg.AVERAGE_COLUMN):
        assert lora[f"{col}_lo"] <= lora[col] <= lora[f"{col}_hi"]
    # the scored but unexpected full checkpoint is appended, its reasoning columns NaN
    full = table.set_index("run").loc["full"]
    assert list(table["run"]) == ["base", "lora-r4-mlp", "full"]
    assert full["safety:strongreject"] == 1.0
    assert math.isnan(full["pass@1:aime"]) and math.isnan(full[agg.AVERAGE_COLUMN])


def test_partial_grid_missing_rows_are_nan_and_reported(grid: list[Path]) -> None:
    scores = agg.load_scores(grid)
    exp = expected(("m", "base", 0), ("m", "full", 1), ("m", "full", 2))
    table = agg.results_table(scores, exp, meta(), BENCH, n_boot=50)
    row = table[(table["run"] == "full") & (table["epoch"] == 2)].iloc[0]
    values = row[[c.name for c in agg.metric_columns(table, BENCH)] + ["unparseable", agg.AVERAGE_COLUMN]]
    assert values.isna().all()  # never zero
    missing = agg.missing_report(scores, exp, BENCH)
    assert missing.to_dict("records") == [
        {"model": "m", "run": "full", "epoch": 1, "missing": "aime, humaneval"},
        {"model": "m", "run": "full", "epoch": 2, "missing": "strongreject, aime, humaneval"},
    ]
    text = agg.missing_text(missing)
    assert "full epoch 2: missing strongreject, aime, humaneval" in text
    assert "–" in agg.to_markdown(table, BENCH)


def test_expected_benchmarks_restrict_the_missing_report(grid: list[Path]) -> None:
    scores = agg.load_scores(grid)
    exp = agg.parse_expected([{"model": "m", "run": "full", "epoch": 1, "benchmarks": ["strongreject"]},
                              ["m", "base", 0]])  # fmt: skip
    assert agg.missing_report(scores, exp, BENCH).empty
    assert agg.missing_text(agg.missing_report(scores, exp, BENCH)).startswith("Nothing missing")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["m", "base"], "at '1': \\['m', 'base'\\] is too short"),
        ({"model": "m", "run": "base", "epoch": "0"}, "at '1/epoch': '0' is not of type 'integer'"),
        ({"model": "m", "run": "base", "epoch": 0, "benchmarks": "aime"}, "at '1/benchmarks': 'aime' is not of type"),
    ],
)
def test_malformed_expected_checkpoints_are_refused_where_written(tmp_path: Path, entry: Any, message: str) -> None:
    with pytest.raises(RecordError, match=f"expected record .*expected.json: invalid value {message}"):
        write_record(tmp_path / "expected.json", "expected", [["m", "full", 1], entry])


def test_seeds_are_averaged_and_resampled(tmp_path: Path) -> None:
    records = [
        score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 0, 1, 0]))], seed=0),
        score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 1, 1, 1]))], seed=1),
    ]
    scores = agg.load_scores(write_scores(tmp_path, records))
    table = agg.results_table(scores, expected(("m", "base", 0)), meta(), BENCH, n_boot=400)
    assert table.loc[0, "pass@1:aime"] == pytest.approx(0.75)
    # resampling seeds too: an all-ones seed drawn twice gives a replicate mean of 1
    assert table.loc[0, "pass@1:aime_hi"] == pytest.approx(1.0)


def test_truncation_shares_sit_beside_the_scores_per_benchmark(tmp_path: Path) -> None:
    """Shares over a checkpoint's seeds, each Score file counted once however many metrics it has;
    a benchmark without a Score file is NaN; the Markdown shows them as percentages."""
    code = [metric_entry("pass@1", problems([1, 0]), variant=v, grader="evalplus") for v in ("base", "plus")]
    records = [
        score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 0, 1, 0]))], seed=0,
                     truncation={"samples": 8, "truncated": 4, "unclosed_think": 2}),
        score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 1, 1, 1]))], seed=1,
                     truncation={"samples": 8, "truncated": 2, "unclosed_think": 0}),
        score_record("m", "base", 0, "humaneval", code, truncation={"samples": 4, "truncated": 1, "unclosed_think": 1}),
        score_record("m", "full", 1, "aime", [metric_entry("pass@1", problems([0, 0]))],
                     truncation={"samples": 2, "truncated": 0, "unclosed_think": 0}),
    ]  # fmt: skip
    scores = agg.load_scores(write_scores(tmp_path, records))
    table = agg.results_table(scores, expected(("m", "base", 0), ("m", "full", 1)), meta(), BENCH, n_boot=50)
    assert [c for c in table.columns if "_share:" in c] == [
        "truncated_share:aime", "unclosed_think_share:aime", "truncated_share:humaneval",
        "unclosed_think_share:humaneval",
    ]  # fmt: skip
    base, full = table.iloc[0], table.iloc[1]
    assert base["truncated_share:aime"] == pytest.approx(6 / 16) and base["unclosed_think_share:aime"] == 2 / 16
    assert base["truncated_share:humaneval"] == 0.25 and base["pass@1:aime"] == pytest.approx(0.75)
    assert full["truncated_share:aime"] == 0.0 and math.isnan(full["truncated_share:humaneval"])
    lines = agg.to_markdown(table, BENCH).splitlines()
    assert lines[0].endswith("| AIME at token limit | AIME </think> unclosed | HumanEval at token limit "
                             "| HumanEval </think> unclosed |")  # fmt: skip
    assert lines[2].endswith("| 37.5% | 12.5% | 25.0% | 25.0% |") and lines[3].endswith("| 0.0% | 0.0% | – | – |")
    bad = score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1]))],
                       truncation={"samples": 1, "truncated": 2, "unclosed_think": 0})  # fmt: skip
    with pytest.raises(agg.ScoreFileError, match="truncation counts .* exceed its samples"):
        agg.load_scores(write_scores(tmp_path / "bad", [bad]))


def test_bootstrap_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(123)
    hits = 0
    trials = 200
    for t in range(trials):
        sample = rng.binomial(1, 0.3, size=80).astype(float)
        low, high = agg.bootstrap_ci(sample, n_boot=400, seed=t)
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_is_deterministic_and_degenerate_is_zero_width() -> None:
    values = {f"p{i}": v for i, v in enumerate(np.linspace(0, 1, 30))}
    assert agg.bootstrap_ci(values, seed=7) == agg.bootstrap_ci(values, seed=7)
    assert agg.bootstrap_ci(values, seed=7) != agg.bootstrap_ci(values, seed=8)
    low, high = agg.bootstrap_ci({"a": 0.7, "b": 0.7, "c": 0.7})
    assert low == high == pytest.approx(0.7)
    assert all(math.isnan(x) for x in agg.bootstrap_ci({}))
    low, high = agg.bootstrap_ci(np.array([[0.0, 1.0], [0.0, 1.0]]), n_boot=500)  # problems x seeds
    assert low == 0.0 and high == 1.0
    with pytest.raises(ValueError, match="level"):
        agg.bootstrap_ci([0.1, 0.2], level=1.5)


def test_intervals_do_not_depend_on_other_checkpoints(grid: list[Path]) -> None:
    scores = agg.load_scores(grid)
    one = agg.results_table(scores[scores["run"] == "base"], expected(("m", "base", 0)), meta(), BENCH, n_boot=100)
    both = agg.results_table(scores, expected(("m", "base", 0)), meta(), BENCH, n_boot=100)
    assert one.loc[0, "safety:strongreject_lo"] == both.loc[0, "safety:strongreject_lo"]


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([(0, 0), (1, 1), (0.5, 2), (2, 0.5)], [False, True, True, True]),
        ([(1, 1), (1, 1), (0, 0)], [True, True, False]),  # duplicates both stay
        ([(1, 2), (1, 3), (2, 1)], [False, True, True]),  # tie in x: the higher y dominates
        ([(1, 1), (float("nan"), 5), (0, 2)], [True, False, True]),
        ([], []),
    ],
)
def test_pareto_front(points: list[tuple[float, float]], front: list[bool]) -> None:
    assert agg.pareto_front(points) == front


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("epoch"), "at '\\(top level\\)': 'epoch' is a required property"),
        (lambda r: r.update(epoch="3"), "at 'epoch': '3' is not of type 'integer'"),
        (lambda r: r.update(benchmark="a:b"), "at 'benchmark': 'a:b' does not match"),  # would split column names
        (lambda r: r.update(metrics=[]), "at 'metrics': \\[\\] should be non-empty"),
        (lambda r: r["metrics"][0].update(metric="accuracy"), "at 'metrics/0/metric': 'accuracy' is not one of"),
        (lambda r: r["metrics"][0].update(variant="default"), "at 'metrics/0/variant'"),
        (lambda r: r["metrics"][0].update(n_problems=-1), "at 'metrics/0/n_problems': -1 is less than the minimum"),
        (lambda r: r["metrics"][0].update(primary=1), "at 'metrics/0/primary': 1 is not of type 'boolean'"),
        (lambda r: r["metrics"][0]["per_problem"].update(p0="x"), "at 'metrics/0/per_problem/p0'"),
        (lambda r: r.update(agreement=[{"graders": ["a"], "kappa": 1, "n": 2}]), "at 'agreement/0/graders'"),
        (lambda r: r.update(seed=0.5), "at 'seed': 0.5 is not of type 'integer'"),
    ],
)
def test_malformed_score_record_is_refused_where_written(tmp_path: Path, mutate: Any, message: str) -> None:
    record = score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 0]))])
    mutate(record)
    path = tmp_path / "aime.json"
    with pytest.raises(RecordError, match=message) as err:
        write_record(path, "score", record)
    assert str(err.value).startswith(f"score record {path}: invalid value at ") and not path.exists()


def test_invalid_json_and_duplicate_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="bad.json: not valid JSON"):
        agg.load_scores([bad])
    record = score_record("m", "base", 0, "aime", [metric_entry("pass@1", problems([1, 0]))])
    with pytest.raises(agg.ScoreFileError, match="same model/run/epoch/benchmark/seed"):
        agg.load_scores(write_scores(tmp_path, [record, record]))


def test_agreement_table(grid: list[Path]) -> None:
    table = agg.load_agreement(grid)
    assert len(table) == 2
    assert table.iloc[0][["grader_a", "grader_b", "kappa", "n"]].tolist() == ["llama_guard", "refusal_match", 0.5, 4]


def test_runs_meta_validation_and_main_run(tmp_path: Path) -> None:
    frame = meta()
    assert frame["main"].dtype == bool and frame.index[frame["main"]].tolist() == ["lora-r4-mlp"]
    # the metadata names the main run (config aggregate.main_run); nothing is guessed without it
    unmarked = {run: {k: v for k, v in entry.items() if k != "main"} for run, entry in RUNS_META.items()}
    assert not agg.runs_meta_frame(unmarked)["main"].any()
    marked = agg.runs_meta_frame({**unmarked, "lora-r1-mlp": {**unmarked["lora-r1-mlp"], "main": True}})
    assert marked.index[marked["main"]].tolist() == ["lora-r1-mlp"]
    with pytest.raises(RecordError, match="runs_meta record .*meta.json: invalid value at 'x/method': 'qlora'"):
        write_record(tmp_path / "meta.json", "runs_meta", {"x": {"method": "qlora"}})
    with pytest.raises(RecordError, match="at 'x/rank': 0 is less than the minimum of 1"):
        write_record(tmp_path / "meta.json", "runs_meta", {"x": {"method": "lora", "rank": 0}})
    with pytest.raises(ValueError, match="no entry for run"):
        agg.results_table(agg.load_scores([]), expected(("m", "mystery", 1)), frame, BENCH)


def test_markdown_has_labels_intervals_and_lambda(grid: list[Path]) -> None:
    table = agg.results_table(agg.load_scores(grid), expected(("m", "base", 0)), meta(), BENCH, n_boot=50)
    text = agg.to_markdown(table, BENCH)
    header = text.splitlines()[0]
    assert "StrongREJECT safety" in header and "HumanEval+ pass@1" in header and "avg reasoning" in header
    assert "λ" not in header  # no OrthoMerge row
    assert "0.250 [" in text


def test_cli_writes_all_outputs(grid: list[Path], tmp_path: Path) -> None:
    meta_path, exp_path = tmp_path / "meta.json", tmp_path / "expected.json"
    bench_path = tmp_path / "benchmarks.json"
    write_json = [sys.executable, str(REPO / "workflow_scripts" / "write_json.py")]
    expected_json = json.dumps([["m", "base", 0], ["m", "lora-r4-mlp", 1], ["m", "lora-r4-mlp", 2]])
    benchmarks_json = json.dumps([{"name": n, "label": label, "kind": "safety"} for n, label in BENCH.labels.items()])
    for kind, value, path in [("runs_meta", json.dumps(RUNS_META), meta_path), ("expected", expected_json, exp_path),
                              ("benchmarks", benchmarks_json, bench_path)]:  # fmt: skip
        subprocess.run([*write_json, "--kind", kind, "--json", value, "--out", str(path)], check=True)
    out = {name: tmp_path / "out" / name for name in ("r.csv", "r.md", "missing.txt", "agree.csv")}
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "aggregate.py"), "--scores", *map(str, grid),
           "--runs-meta", str(meta_path), "--expected", str(exp_path), "--benchmarks", str(bench_path), "--out-csv", str(out["r.csv"]),
           "--out-md", str(out["r.md"]), "--out-missing", str(out["missing.txt"]),
           "--out-agreement", str(out["agree.csv"]), "--bootstrap", '{"n": 100, "seed": 0, "level": 0.95}']  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    table = agg.read_results_table(out["r.csv"])
    assert len(table) == 4 and table["main"].dtype == bool
    assert "lora-r4-mlp epoch 2: missing strongreject, aime, humaneval" in out["missing.txt"].read_text()
    assert len(pd.read_csv(out["agree.csv"])) == 2
