"""Stage settings (safelora.settings): built from the filled config, read back by the scripts."""

import copy

import pytest

from safelora import config as grid
from safelora import settings as s


@pytest.fixture(scope="module")
def paper(repo):
    return grid.load_config(repo / "config.yaml", repo)


def every_settings(config):
    """Every stage's settings object the config gives, one per key the rules pass."""
    models, benchmarks, judges = list(config["models"]), list(config["benchmarks"]), list(config["judges"])
    merges = [r for r in grid.all_run_names(config) if grid.is_orthomerge(r)]
    return [
        *(s.GenerationSettings.from_config(config, m, b) for m in models for b in benchmarks),
        *(s.ContextSettings.from_config(config, m, b) for m in models for b in benchmarks),
        *(s.Execution.from_config(config, b) for b in benchmarks if config["benchmarks"][b]["kind"] == "code"),
        *(s.JudgeSettings.from_config(config, j, b) for j in judges for b in benchmarks),
        *(s.ScoreSettings.from_config(config, b) for b in benchmarks),
        *(s.OrthoMerge.from_config(config, r) for r in merges),
        s.Bootstrap.from_config(config),
    ]


def test_what_a_rule_passes_the_script_reads_back_equal(paper):
    objects = every_settings(paper)
    assert {type(o).__name__ for o in objects} == {
        "GenerationSettings",
        "ContextSettings",
        "Execution",
        "JudgeSettings",
        "ScoreSettings",
        "OrthoMerge",
        "Bootstrap",
    }
    for o in objects:
        assert type(o).from_json(o.to_json()) == o


def test_a_schema_default_reaches_the_settings_and_a_config_value_replaces_it(repo, paper):
    assert s.Judge.from_config(paper, "llama_guard").max_new_tokens == 20  # config.yaml's
    config = copy.deepcopy(paper)
    del config["judges"]["llama_guard"]["max_new_tokens"], config["judges"]["llama_guard"]["tensor_parallel"]
    grid.complete_config(config, repo)
    guard = s.Judge.from_config(config, "llama_guard")
    assert (guard.max_new_tokens, guard.tensor_parallel) == (32, 1)  # the schema's defaults
    aime = s.GenerationSettings.from_config(paper, "r1-7b", "aime").sampling
    assert (aime.n, aime.temperature, aime.seed) == (8, 0.6, paper["seed"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"n": 1, "seed": 0}', r"Bootstrap: missing keys \['level'\], unknown keys \[\]"),
        ('{"n": 1, "seed": 0, "level": 0.9, "extra": 1}', r"Bootstrap: missing keys \[\], unknown keys \['extra'\]"),
        ('{"n": true, "seed": 0, "level": 0.9}', r"Bootstrap.n: expected int, got True"),
        ('{"n": 1, "seed": 0, "level": "0.9"}', r"Bootstrap.level: expected float, got '0.9'"),
        ("[1]", r"Bootstrap: expected an object, got \[1\]"),
        ("n=1", r"Bootstrap: not JSON"),
    ],
)
def test_settings_that_do_not_fit_name_the_key(text, message):
    with pytest.raises(s.SettingsError, match=message):
        s.Bootstrap.from_json(text)


def test_nested_and_optional_fields_are_checked(paper):
    judge = s.JudgeSettings.from_config(paper, "qwen_math", "aime")
    assert judge.judge.fallback_for == "math_verify" and judge.judge.unboxed in ("incorrect", "judge_tail")
    broken = judge.to_json().replace('"version":', '"version":"x","_":')
    with pytest.raises(s.SettingsError, match=r"JudgeSettings.judge: missing keys \[\], unknown keys \['_'\]"):
        s.JudgeSettings.from_json(broken)
    with pytest.raises(s.SettingsError, match=r"ScoreSettings.graders\[1\]: expected str, got 2"):
        s.ScoreSettings.from_json(s.ScoreSettings("math", ["a", 2], "a", 8, 0.05, 1).to_json())  # type: ignore[list-item]
