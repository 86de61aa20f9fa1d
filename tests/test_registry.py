"""The registries (safelora/registry.py) and the places that derive from them agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from safelora import config as grid
from safelora import registry
from safelora.evaluation import graders
from safelora.report import figures

REPO = Path(__file__).resolve().parents[1]


def _schema() -> dict:
    return yaml.safe_load(grid.SCHEMA_PATH.read_text(encoding="utf-8"))


def test_schema_kinds_are_the_registry_kinds() -> None:
    props = _schema()["properties"]
    bench_kinds = props["benchmarks"]["additionalProperties"]["properties"]["kind"]["enum"]
    judge_kinds = props["judges"]["additionalProperties"]["properties"]["kind"]["enum"]
    assert set(bench_kinds) == set(registry.KIND_METRICS)
    assert set(judge_kinds) == set(registry.JUDGE_KINDS)


def test_graders_by_kind() -> None:
    assert registry.graders_by_kind() == {
        "safety": {"refusal_match", "llama_guard", "refusal_judge"},
        "over_refusal": {"refusal_match", "refusal_judge"},
        "math": {"math_verify", "last_number", "math_judge"},
        "multiple_choice": {"choice_regex", "choice_paper_code"},
        "code": {"evalplus"},
    }


def test_verdict_file_names_round_trip() -> None:
    assert registry.verdict_stems("evalplus") == ["evalplus_base", "evalplus_plus"]
    assert registry.verdict_stems("llama_guard") == ["llama_guard"]  # a judge of the config
    for grader in [*registry.GRADERS, "qwen_math"]:
        for stem in registry.verdict_stems(grader):
            grader_of, variant = registry.grader_and_variant(stem)
            assert grader_of == grader and registry.verdict_stems(grader_of)
            assert stem == (f"{grader}_{variant}" if variant else grader)
    with pytest.raises(ValueError, match="no verdict variant 'extra'"):
        registry.GRADERS["evalplus"].verdict_stem("extra")


def test_implementations_match_the_registry() -> None:
    assert set(graders.TEXT_GRADERS) == set(registry.text_graders())
    assert set(figures.FIGURES) == set(registry.FIGURES)
    with pytest.raises(RuntimeError, match=r"registered without an implementation: \['b'\].*registry entry .*\['c'\]"):
        registry.check_implemented("things", ["a", "b"], {"a": 1, "c": 2})


def test_every_figure_has_a_report_caption() -> None:
    caption = (REPO / "rules/report/figure.rst").read_text(encoding="utf-8")
    for name in registry.FIGURES:
        assert f'snakemake.wildcards.figure == "{name}"' in caption, name


def test_every_config_benchmark_is_labelled_and_graded_by_registered_graders() -> None:
    for path in (REPO / "config.yaml", REPO / "config/demo.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        for name, bench in config["benchmarks"].items():
            assert bench["label"], (path, name)
            known = set(registry.GRADERS) | set(config["judges"])
            assert set(bench["graders"]) <= known, (path, name)
