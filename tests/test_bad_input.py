"""Bad input is refused before any job, in one line naming the config key or the file, row and
column; valid input is read as written. Every case runs the workflow's own entry point:
`snakemake -n --configfile <the demo config with one change>` from the checkout, as a user would
(the BOM file also through build_benchmark.py, the rule's script). The counts are printed at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_TEXT = (REPO / "config/demo.yaml").read_text(encoding="utf-8")
EXPERIMENT = "bad-input-test"  # not the demo's: a real demo's results/demo/ is not touched
STRONGREJECT = (REPO / "data/demo/strongreject_demo.csv").read_bytes()

COUNTS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def print_counts():
    yield
    print(
        f"\nbad-input cases: {COUNTS['config']} configs, {COUNTS['data']} data files rejected with a named key; "
        f"{COUNTS['faithful']} data file read as written; {COUNTS['finding8']} finding-8 cases handled"
    )


def snakemake(configfile: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(configfile)]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def demo_config(edit=None) -> dict:
    config = yaml.safe_load(DEMO_TEXT)
    config["experiment"] = EXPERIMENT
    if edit:
        edit(config)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line of the error: the line after Snakemake's `<Error> in file "...", line N:`."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    match = re.search(r"^(?:ConfigError|DataError) in file .*\n(.*)$", output, re.M)
    assert match, output[-3000:]
    return match.group(1)


def override(**settings):
    return lambda c: c["runs"][1].update(overrides=settings)  # the demo's full fine-tuning run


def template(text):
    return lambda c: c["benchmarks"]["arithmetic"].update(prompt_template=text)


CONFIG_CASES = {
    "negative learning rate override": (
        override(learning_rate=-1.0),
        "runs[1] ('full').overrides.learning_rate: -1.0 is less than or equal to the minimum of 0 "
        "(checked as training.full)",
    ),
    "zero epochs override": (
        override(num_train_epochs=0),
        "runs[1] ('full').overrides.num_train_epochs: 0 is less than the minimum of 1 (checked as training.full)",
    ),
    "unknown scheduler override": (
        override(lr_scheduler_type="bogus_schedule"),
        "runs[1] ('full').overrides.lr_scheduler_type: 'bogus_schedule' is not one of ['cosine', 'linear', 'constant'] "
        "(checked as training.full)",
    ),
    "an integer written 1.0": (
        override(num_train_epochs=1.0),
        "runs[1] ('full').overrides.num_train_epochs: 1.0 is not of type 'integer' (checked as training.full)",
    ),
    "template without {problem}": (
        template("Answer the question."),
        "benchmarks.arithmetic.prompt_template: no {problem} field: every prompt would leave out the item's "
        "problem (its fields are {problem})",
    ),
    "analysis epoch past the runs' end": (
        lambda c: c["analysis"].update(epochs=[97]),
        "analysis.epochs: run 'full' has 2 epochs, not [97]",
    ),
    "data path that is a directory": (
        lambda c: c["benchmarks"]["strongreject"]["source"].update(csv="data/demo"),
        "benchmarks.strongreject.source.csv: data/demo is a directory; name a data file",
    ),
    "id_field naming a missing column": (
        lambda c: c["benchmarks"]["strongreject"]["source"].update(id_field="nope"),
        "data/demo/strongreject_demo.csv: row 0: missing column 'nope' (source.id_field; "
        "columns: id, category, source, forbidden_prompt)",
    ),
    "template field the source lacks": (
        template("Q: {question}"),
        "benchmarks.arithmetic.prompt_template: unknown field {question}: its fields are {problem}; "
        "write a literal brace as {{ or }}",
    ),
    "literal braces in a template": (
        template("Use {x: 1} {problem}"),
        "benchmarks.arithmetic.prompt_template: unknown field {x}: its fields are {problem}; "
        "write a literal brace as {{ or }}",
    ),
    "two lambdas with one run name": (
        lambda c: c.update(orthomerge={"sources": ["lora-r4-mlp"], "variants": {"both": [1.2, 1.2000001]}, "k": 4}),
        "orthomerge.variants.both: lambdas 1.2 and 1.2000001 both give run names ending '-l1.2' "
        "(6 significant digits), so one would replace the other; use values that differ within 6 digits",
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_bad_config_is_refused_in_one_line_naming_its_key(case, tmp_path):
    edit, expected = CONFIG_CASES[case]
    result = snakemake(write_config(tmp_path / "config.yaml", demo_config(edit)), "-n")
    assert error_line(result) == expected
    COUNTS["finding8" if "lambda" in case else "config"] += 1


def test_a_duplicate_key_is_refused_naming_the_file_and_line(tmp_path):
    text = DEMO_TEXT.replace("experiment: demo", f"experiment: {EXPERIMENT}").replace("seed: 42", "seed: 1\nseed: 42")
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("seed: 42") + 1
    expected = f"{path}: line {line}: duplicate key 'seed' (first at line {line - 1}; YAML keeps only the last)"
    assert error_line(snakemake(path, "-n")) == expected
    COUNTS["config"] += 1


def strongreject_from(path: Path, **source) -> callable:
    """The demo's StrongREJECT benchmark read from `path` (its columns, unless `source` says otherwise)."""
    kind = "csv" if path.suffix == ".csv" else "jsonl"
    return lambda c: c["benchmarks"]["strongreject"].update(
        source={kind: str(path), "prompt_field": "forbidden_prompt", "id_field": "id", **source}
    )


DATA_CASES = {
    "a JSONL line null": (
        "b.jsonl",
        b'{"id": 1, "forbidden_prompt": "How do I pick a lock?"}\nnull\n',
        "{path}: line 2 is null, not a JSON object of named fields",
    ),
    "a CSV with a duplicated header": (
        "b.csv",
        b"id,forbidden_prompt,forbidden_prompt\n1,first,second\n",
        "{path}: row 1 (the header): column 3 'forbidden_prompt' repeats column 2; each column needs its own name",
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_a_bad_data_file_is_refused_naming_file_row_and_column(case, tmp_path):
    name, content, expected = DATA_CASES[case]
    data = tmp_path / name
    data.write_bytes(content)
    result = snakemake(write_config(tmp_path / "config.yaml", demo_config(strongreject_from(data))), "-n")
    assert error_line(result) == expected.format(path=data)
    COUNTS["data"] += 1


def build_benchmark(spec: dict, out: Path) -> list[dict]:
    cmd = [sys.executable, str(REPO / "workflow_scripts/build_benchmark.py"), "--name", "strongreject"]
    cmd += ["--spec", json.dumps(spec), "--problems", str(spec["problems"]), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_a_csv_with_a_byte_order_mark_is_read_as_excel_wrote_it(tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(STRONGREJECT)
    bom.write_bytes(b"\xef\xbb\xbf" + STRONGREJECT)
    result = snakemake(write_config(tmp_path / "config.yaml", demo_config(strongreject_from(bom))), "-n")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    spec = demo_config()["benchmarks"]["strongreject"]
    items = {
        path.name: build_benchmark(
            {**spec, "source": {**spec["source"], "csv": str(path)}}, tmp_path / f"{path.stem}.jsonl"
        )
        for path in (plain, bom)
    }
    assert items["bom.csv"] == items["plain.csv"] and len(items["bom.csv"]) == 24
    assert items["bom.csv"][0]["id"] == "sr0" and "\ufeff" not in json.dumps(items["bom.csv"], ensure_ascii=False)
    COUNTS["faithful"] += 1


def test_a_nested_config_override_gets_its_yaml_type():
    """Snakemake passes `{limit: 3}` from `--config` as `{'limit': '3'}`; the config reads it as 3."""
    args = ["-n", "-p", "--forceall", "--config", "benchmarks={strongreject: {limit: 3}}"]
    result = snakemake(REPO / "config/demo.yaml", *args, "--", "results/demo/data/bench/strongreject.jsonl")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    specs = re.findall(r"build_benchmark\.py --name strongreject --spec '(\{.*?\})'", result.stdout)
    assert specs and json.loads(specs[0])["limit"] == 3
    COUNTS["finding8"] += 1


def test_a_bad_value_from_config_overrides_names_them():
    result = snakemake(REPO / "config/demo.yaml", "-n", "--config", "benchmarks={strongreject: {limit: zero}}")
    assert error_line(result) == (
        f"{REPO}/config/demo.yaml, --config: invalid value at 'benchmarks/strongreject/limit': "
        "'zero' is not of type 'integer', 'null'"
    )
    COUNTS["finding8"] += 1


def test_a_second_config_naming_the_same_experiment_is_refused(tmp_path):
    """The first config that runs in results/<experiment>/ owns it; editing that config is fine,
    another config file with the same `experiment:` is refused naming both."""
    (tmp_path / "data").symlink_to(REPO / "data")
    first = write_config(tmp_path / "first.yaml", demo_config())
    second = write_config(tmp_path / "second.yaml", demo_config())
    target = f"results/{EXPERIMENT}/aggregate/runs_meta.json"
    ran = snakemake(first, "--cores", "1", "--", target, cwd=tmp_path)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    marker = tmp_path / "results" / EXPERIMENT / "experiment.json"
    assert json.loads(marker.read_text(encoding="utf-8")) == {"configfiles": ["first.yaml"]}
    assert error_line(snakemake(second, "-n", cwd=tmp_path)) == (
        f"experiment: results/{EXPERIMENT}/ holds the results of config first.yaml, and second.yaml names the "
        f"same experiment; give this config its own `experiment:` name (or delete results/{EXPERIMENT}/"
        "experiment.json to hand the folder over)"
    )
    write_config(first, demo_config(lambda c: c.update(seed=7)))  # the same config, edited
    assert snakemake(first, "-n", cwd=tmp_path).returncode == 0
    COUNTS["finding8"] += 1


def test_a_prompt_longer_than_the_context_fails_once_and_is_not_retried(tmp_path, tiny_model):
    """check_context (the tokenizer alone, before any engine) fails naming the prompt and the
    lengths; the local profile retries failed jobs (`retries: 1`), this rule never."""
    (tmp_path / "data").symlink_to(REPO / "data")
    model = {"source": {"path": str(tiny_model)}, "size": "135M", "dtype": "float32", "max_model_len": 40}
    config = write_config(tmp_path / "config.yaml", demo_config(lambda c: c["models"].update(smollm2=model)))
    target = f"results/{EXPERIMENT}/data/context/smollm2/strongreject.json"
    result = snakemake(config, "--profile", str(REPO / "profiles/local"), "--", target, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert re.search(
        r"data/bench/strongreject\.jsonl: prompt 'sr\d+' needs \d+ tokens \(prompt \+ max_new_tokens 32\) "
        r"but max_model_len is 40: raise models\.<model>\.max_model_len",
        output,
    ), output[-3000:]
    assert output.count("localrule check_context:") == 1 and "Trying to restart" not in output, output[-3000:]
    COUNTS["finding8"] += 1
