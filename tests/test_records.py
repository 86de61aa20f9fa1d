"""The JSON records one rule writes for the next: each writer's real output matches its schema, and a
corrupted record is refused where it is written, naming the kind, the file and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_grading import SETTINGS, score_of, write_verdicts

from safelora import config as cfg
from safelora.io import RECORD_SCHEMAS, RecordError, atomic_write_jsonl, read_record, record_validator, write_record
from safelora.report import aggregate as agg

REPO = Path(__file__).resolve().parents[1]
KINDS = ("benchmarks", "expected", "runs_meta", "score")


def test_every_record_kind_has_a_valid_schema_and_the_metrics_aggregation_knows() -> None:
    assert sorted(p.name.removesuffix(".schema.yaml") for p in RECORD_SCHEMAS.glob("*.schema.yaml")) == list(KINDS)
    for kind in KINDS:
        record_validator(kind)  # check_schema: a broken schema file fails here
    metric_enum = record_validator("score").schema["$defs"]["metric"]["properties"]["metric"]["enum"]
    assert tuple(metric_enum) == agg.METRICS  # ColumnKey.parse reads column names with these


def score_cli(
    tmp_path: Path, kind: str, primary: str, verdicts: list[str], ids: list[str], n: int
) -> subprocess.CompletedProcess:
    """score.py on verdict files of the benchmark items `ids` x `n` samples."""
    settings = json.dumps({**SETTINGS, "kind": kind, "primary": primary, "max_unparseable_share": 0.5, "n": n})
    items = tmp_path / f"{kind}-items.jsonl"
    atomic_write_jsonl(items, [{"id": i, "prompt": "p", "answer": None, "meta": {}} for i in ids])
    gens = tmp_path / f"{kind}-generations.jsonl"
    sampling = {"n": n, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "seed": 0}
    atomic_write_jsonl(gens, [{"prompt_id": i, "sample_index": j, "prompt": "p", "text": "t", "finish_reason": "stop",
                               "prompt_tokens": 1, "completion_tokens": 1, "sampling": sampling, "engine": "e"}
                              for i in ids for j in range(n)])  # fmt: skip
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "score.py"), "--model", "m", "--run", "lora", "--epoch", "2",
           "--benchmark", kind, "--settings", settings, "--verdicts", *verdicts, "--generations", str(gens),
           "--items", str(items), "--out", str(tmp_path / f"{kind}.json")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_score_script_output_is_a_valid_record_aggregation_reads(tmp_path: Path) -> None:
    guard = write_verdicts(
        tmp_path / "llama_guard.jsonl", [("a", 0, 1.0), ("a", 1, 1.0), ("b", 0, None), ("b", 1, 0.0)]
    )
    match = write_verdicts(
        tmp_path / "refusal_match.jsonl", [("a", 0, 1.0), ("a", 1, 1.0), ("b", 0, 1.0), ("b", 1, 0.0)]
    )
    plus = write_verdicts(tmp_path / "evalplus_plus.jsonl", [("t", 0, 0.0), ("u", 0, None)])
    base = write_verdicts(tmp_path / "evalplus_base.jsonl", [("t", 0, 1.0), ("u", 0, 1.0)])
    for kind, primary, verdicts, ids, n in [
        ("safety", "llama_guard", [guard, match], ["a", "b"], 2),
        ("code", "evalplus", [plus, base], ["t", "u"], 1),
    ]:
        result = score_cli(tmp_path, kind, primary, verdicts, ids, n)
        assert result.returncode == 0, result.stderr
        record = read_record(tmp_path / f"{kind}.json", "score")
        assert not list(record_validator("score").iter_errors(record))
    safety, code = agg.read_score_files([tmp_path / "safety.json", tmp_path / "code.json"])
    assert [(m["grader"], m["primary"]) for m in safety.metrics] == [("llama_guard", True), ("refusal_match", False)]
    assert safety.agreement == [{"grader_a": "llama_guard", "grader_b": "refusal_match", "kappa": 1.0, "n": 3}]
    assert [(m["variant"], m["n_problems"], m["per_problem"]) for m in code.metrics] == [
        ("plus", 2, {"t": 0.0}),  # a problem with no parseable sample has no per-problem value
        ("base", 2, {"t": 1.0, "u": 1.0}),
    ]


def test_a_corrupted_score_record_is_refused_with_its_field_path(tmp_path: Path) -> None:
    verdicts = write_verdicts(tmp_path / "g.jsonl", [("a", 0, 1.0), ("b", 0, 0.0)])
    record = score_of({"model": "m", "run": "r", "epoch": 1, "benchmark": "aime"}, SETTINGS, [verdicts])
    record["metrics"][0]["per_problem"]["b"] = "0"
    out = tmp_path / "aime.json"
    with pytest.raises(RecordError) as err:
        write_record(out, "score", record)
    assert str(err.value) == (
        f"score record {out}: invalid value at 'metrics/0/per_problem/b': '0' is not of type 'number', 'null'"
    )
    assert not out.exists() and not list(tmp_path.glob(".aime.json.*"))


def test_score_needs_the_primary_graders_verdicts_once_per_variant(tmp_path: Path) -> None:
    guard = write_verdicts(tmp_path / "llama_guard.jsonl", [("a", 0, 1.0)])
    match = write_verdicts(tmp_path / "refusal_match.jsonl", [("a", 0, 1.0)])
    plus = write_verdicts(tmp_path / "evalplus_plus.jsonl", [("t", 0, 0.0)])
    other = write_verdicts(tmp_path / "other" / "g.jsonl", [("a", 0, 1.0)])
    g = write_verdicts(tmp_path / "g.jsonl", [("a", 0, 1.0)])
    safety = {**SETTINGS, "kind": "safety", "primary": "llama_guard"}
    with pytest.raises(
        ValueError, match=r"no verdict file of the primary grader 'llama_guard' for variant\(s\) \[None\]"
    ):
        score_of({}, safety, [match])
    with pytest.raises(ValueError, match=r"no verdict file of the primary grader 'evalplus' for variant\(s\) \[None\]"):
        score_of({}, {**SETTINGS, "kind": "code", "primary": "evalplus"}, [plus, guard])
    with pytest.raises(ValueError, match=r"more than one verdict file for \(grader, variant\) \[\('g', None\)\]"):
        score_of({}, SETTINGS, [g, other])
    result = score_cli(tmp_path, "safety", "llama_guard", [match], ["a"], 1)
    assert result.returncode != 0 and "no verdict file of the primary grader" in result.stderr
    assert not (tmp_path / "safety.json").exists()


@pytest.mark.parametrize("config_file", ["config.yaml", "config/demo.yaml"])
def test_runs_meta_of_the_shipped_configs_is_a_valid_record(config_file: str) -> None:
    config = cfg.load_config(REPO / config_file, workdir=REPO)
    meta = cfg.runs_meta(config)
    assert not list(record_validator("runs_meta").iter_errors(meta))
    assert {m["method"] for m in meta.values()} >= {"base", "full", "lora"}


@pytest.mark.slow
def test_describe_grid_writes_valid_records_of_the_paper_grid(tmp_path: Path) -> None:
    """The describe_grid rule itself, on the paper config (every method, OrthoMerge and ablation runs)."""
    (tmp_path / "data").symlink_to(REPO / "data")
    outputs = [f"results/paper/aggregate/{name}.json" for name in ("runs_meta", "expected", "benchmarks")]
    cmd = [sys.executable, "-m", "snakemake", *outputs, "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(REPO / "config.yaml"), "--cores", "1", "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = agg.load_runs_meta(tmp_path / outputs[0])
    expected = agg.load_expected(tmp_path / outputs[1])
    assert set(meta["method"]) == {"base", "full", "lora", "reg-col", "reg-both", "om-col", "om-both"}
    assert {e.run for e in expected} <= set(meta.index) and all(e.benchmarks for e in expected)
    labels = agg.Benchmarks.load(tmp_path / outputs[2]).labels
    assert list(labels.items())[:2] == [("strongreject", "StrongREJECT"), ("xstest", "XSTest")]
