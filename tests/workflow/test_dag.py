"""The whole DAG on a tiny real model: trains, evaluates, analyzes, aggregates; reruns are exact."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter

import pandas as pd
import pytest
import yaml
from dag import FAKE_TOKEN, planned, planned_jobs, snakemake, tiny_config, write_config

from safelora.io import read_jsonl
from safelora.registry import rule_family


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    workdir = tmp_path_factory.mktemp("dag")
    write_config(workdir, tiny_config(tiny_model))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = snakemake(workdir, "--report", str(workdir / "results/tiny/report.zip"))  # a zip: the viewer is a folder
    assert report.returncode == 0, report.stderr[-3000:]
    # the user's terminal stays readable: no warnings of Snakemake's unawaited input-size coroutines
    assert "never awaited" not in result.stderr + report.stderr
    return workdir


@pytest.mark.slow
def test_dag_produces_table_figures_and_weight_analysis(finished_run):
    table = (finished_run / "results/tiny/aggregate/results.csv").read_text()
    for run in ("base", "full", "lora-r4-mlp", "lora-r4-mlp.om-both-l1.2"):
        assert f",{run}," in table
    assert (finished_run / "results/tiny/figures/fig2.png").stat().st_size > 10_000
    with zipfile.ZipFile(finished_run / "results/tiny/report.zip") as report:
        names = report.namelist()
    assert "report/report.html" in names and sum(name.endswith("/fig2.png") for name in names) == 1
    weights = (finished_run / "results/tiny/analysis/weights/tiny/full/epoch-1.csv").read_text().splitlines()
    assert weights[0].startswith("layer,module,adapted,stable_rank") and len(weights) == 1 + 2 * 7
    score = json.loads((finished_run / "results/tiny/scores/tiny/lora-r4-mlp/epoch-2/strongreject.json").read_text())
    assert {m["grader"] for m in score["metrics"]} == {"refusal_match", "tiny_guard"}
    manifest = json.loads((finished_run / "results/tiny/train/tiny/lora-r4-mlp/manifest.json").read_text())
    assert manifest["global_batch"] == 8 and manifest["gradient_accumulation"] == 2
    log = json.loads((finished_run / manifest["training_log"]).read_text())["log_history"]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]  # 2 epochs of 2 steps, logged every step
    assert (finished_run / "results/tiny/figures/training_curves.png").stat().st_size > 20_000  # drawn, not "Not drawn"


@pytest.mark.slow
def test_the_reports_viewer_shows_a_prompts_three_runs_and_their_verdicts_in_a_browser(finished_run, tmp_path):
    """The viewer's grid page as the report's zip holds it, opened in headless Chromium: DataTables
    draws the table (not itables' static preview), and the first arithmetic prompt's row (sample 0)
    holds its base, full and LoRA responses, each with its grader's verdict, in that checkpoint's
    column. (Arithmetic: the tiny model answers StrongREJECT with newlines only.)"""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    with zipfile.ZipFile(finished_run / "results/tiny/report.zip") as report:
        report.extractall(tmp_path)
    (grid,) = tmp_path.glob("report/data/raw/*/tiny/arithmetic/grid-1.html")
    browser = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", grid.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert browser.returncode == 0, browser.stderr[-3000:]
    dom = browser.stdout
    start = dom.index('<table id="grid"')
    assert "dataTable" in dom[start : dom.index(">", start)]  # drawn by DataTables
    head = dom[dom.rindex('class="dt-scroll-head', 0, start) : start]  # the header DataTables drew
    titles = re.findall(r'class="dt-column-title"[^>]*>([^<]*)<', head)
    body = dom[start : dom.index("</table>", start)]
    results = finished_run / "results/tiny"
    item = json.loads((results / "data/bench/arithmetic.jsonl").read_text().splitlines()[0])
    (row,) = [tr for tr in body.split("<tr")[1:] if f"<b>{html.escape(item['id'])}</b></a><details>" in tr]
    cells = dict(zip(titles, row.split("<td")[1:], strict=True))
    assert html.escape(item["prompt"], quote=False) in cells["prompt"]
    for checkpoint in ("base/epoch-0", "full/epoch-1", "lora-r4-mlp/epoch-2"):
        cell = cells[checkpoint.replace("/epoch-", " e")]
        key = (item["id"], 0)
        generations = results / f"generations/tiny/{checkpoint}/arithmetic.jsonl"
        (gen,) = [g for g in map(json.loads, generations.open()) if (g["prompt_id"], g["sample_index"]) == key]
        assert gen["text"].strip() and html.escape(gen["text"].strip(), quote=False) in cell
        verdicts = results / f"verdicts/tiny/{checkpoint}/arithmetic/last_number.jsonl"
        (v,) = [v for v in map(json.loads, verdicts.open()) if (v["prompt_id"], v["sample_index"]) == key]
        assert f"last_number: {html.escape(v['label'])} ({v['value']:g})" in cell
        print(f"\n{checkpoint}: {re.sub(r'<[^>]+>', ' ', cell.split('>', 1)[1])}")


@pytest.mark.slow
def test_truncation_counts_come_from_the_generations_and_reach_the_table(finished_run, capsys):
    """Each Score record counts its generation file's samples stopped at the token limit (finish
    reason `length`, known from the records); the results table shows the shares per benchmark."""
    results = finished_run / "results/tiny"
    counted = 0
    for path in sorted((results / "scores").rglob("*.json")):
        generations = read_jsonl(results / "generations" / path.relative_to(results / "scores").with_suffix(".jsonl"))
        truncation = json.loads(path.read_text())["truncation"]
        assert truncation["samples"] == len(generations)
        assert truncation["truncated"] == sum(g["finish_reason"] == "length" for g in generations)
        assert truncation["unclosed_think"] == 0  # the tiny model's template opens no thinking
        counted += truncation["truncated"]
    assert counted > 0  # 4 to 8 new tokens: the tiny model is cut
    table = pd.read_csv(results / "aggregate/results.csv").set_index(["run", "epoch"])
    lora = json.loads((results / "scores/tiny/lora-r4-mlp/epoch-2/arithmetic.json").read_text())["truncation"]
    assert table.loc[("lora-r4-mlp", 2), "truncated_share:arithmetic"] == lora["truncated"] / lora["samples"]
    assert {f"{p}:{b}" for p in ("truncated_share", "unclosed_think_share")
            for b in ("strongreject", "arithmetic", "humaneval")} <= set(table.columns)  # fmt: skip
    markdown = (results / "aggregate/results.md").read_text()
    assert "| arithmetic at token limit | arithmetic </think> unclosed |" in markdown.splitlines()[0]
    with capsys.disabled():
        print(f"\nresults/tiny/aggregate/results.md:\n{markdown}")


@pytest.mark.slow
def test_cost_table_sets_each_rules_measured_jobs_beside_their_estimate(finished_run, capsys):
    """aggregate/cost.csv: every job with a `benchmark:` file, by rule, on the GPUs its resources
    gave it: none, as the local profile runs every job on CPU (its `set-resources: judge` reaches
    the judge rules, named after the grid's epoch sets): wall hours, no GPU-hours, and the
    estimate prices each job without a GPU at 0 GPU-hours, as gpu_hours does."""
    results = finished_run / "results/tiny"
    cost = pd.read_csv(results / "aggregate/cost.csv").set_index("rule")
    # 5 checkpoints x 3 benchmarks; the tiny judge on StrongREJECT per run (4); 2 trainings; 1 base SVD
    assert cost["jobs"].to_dict() == {"judge": 4, "generate": 15, "train": 2, "base_svd": 1}
    assert (cost["wall_hours"] > 0).all() and set(cost["gpus_per_job"].astype(str)) == {"0"}
    assert (cost["gpu_hours"] == 0).all() and (cost["estimated_gpu_hours"] == 0).all()
    assert (cost["priced_jobs"] == cost["jobs"]).all()
    with capsys.disabled():
        print(f"\nresults/tiny/aggregate/cost.md:\n{(results / 'aggregate/cost.md').read_text()}")


@pytest.mark.slow
def test_gpu_hours_prices_the_rerun_after_one_setting_changed(finished_run, tmp_path, repo, capsys):
    """benchmarks/gpu_hours.py on the finished workflow after one setting changed (arithmetic's
    sampling temperature): it plans with `snakemake -n`, so it prices exactly the stale jobs, the
    arithmetic generations of the 5 checkpoints, on the GPUs the cluster profile gives them."""
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["benchmarks"]["arithmetic"]["sampling"]["temperature"] = 0.7
    write_config(finished_run, config)
    assumptions = tmp_path / "assumptions.yaml"
    assumptions.write_text("decode_tok_s: {tiny: 100.0}\n")  # a pilot's figure for the tiny model
    try:
        stale = [out for job in planned(finished_run) if job.rule == "generate" for out in job.outputs]
        result = subprocess.run(
            [sys.executable, repo / "benchmarks/gpu_hours.py", "--configfile", finished_run / "config.yaml",
             "--profile", repo / "profiles/slurm", "--directory", finished_run, "--assumptions", assumptions],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        config["benchmarks"]["arithmetic"]["sampling"]["temperature"] = 0.6
        write_config(finished_run, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(stale) == [f"results/tiny/generations/tiny/{c}/arithmetic.jsonl"
                             for c in ("base/epoch-0", "full/epoch-1", "lora-r4-mlp.om-both-l1.2/epoch-2",
                                       "lora-r4-mlp/epoch-1", "lora-r4-mlp/epoch-2")]  # fmt: skip
    # per generate job: 180 s engine start + 3 items x n=2 x 4 tokens at 100 tok/s, on 1 GPU
    gpu_h = 5 * (180 + 3 * 2 * 4 / 100) / 3600
    headline = result.stdout.splitlines()[0]
    assert re.fullmatch(rf"still to run: \d+ jobs, {gpu_h:.1f} GPU-h; done: \d+ jobs \(config.yaml, profile slurm\)",
                        headline), headline  # fmt: skip
    assert f"| generate | 5 | 1 | {gpu_h:,.1f} |" in result.stdout and gpu_h > 0
    assert "| train |" not in result.stdout and "| judge |" not in result.stdout
    with capsys.disabled():
        print(f"\nbenchmarks/gpu_hours.py after arithmetic's temperature 0.6 -> 0.7:\n{result.stdout}")


@pytest.mark.slow
def test_rerun_with_nothing_changed_plans_nothing(finished_run):
    assert planned_jobs(finished_run) == {}


@pytest.mark.slow
def test_scorer_version_reruns_only_scoring_and_aggregation(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["benchmarks"]["arithmetic"]["scorer_version"] = 2
    write_config(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        config["benchmarks"]["arithmetic"]["scorer_version"] = 1
        write_config(finished_run, config)
    # 5 checkpoints (base, full e1, LoRA e1-2, one OrthoMerge) x arithmetic; figures that read the table.
    assert jobs == {"grade_text": 5, "score": 5, "aggregate": 1, "figure": 10, "viewer": 1, "all": 1}


@pytest.mark.slow
def test_one_runs_learning_rate_reruns_only_that_run(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["runs"][1]["overrides"] = {"learning_rate": 1e-4}  # the full run
    write_config(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        del config["runs"][1]["overrides"]
        write_config(finished_run, config)
    # full: recipe, training, 1 checkpoint x 3 benchmarks, its weight analysis, then aggregation.
    assert jobs["write_recipe"] == 1 and jobs["train"] == 1 and jobs["generate"] == 3
    assert jobs["analyze_weights"] == 1 and "build_train_set" not in jobs and "base_svd" not in jobs


@pytest.mark.slow
def test_no_output_log_or_metadata_contains_the_hub_token(finished_run):
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    assert len(files) > 100  # results, logs, benchmarks and Snakemake's metadata
    leaked = [str(p) for p in files if FAKE_TOKEN.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.slow
def test_a_changed_score_file_reruns_only_aggregation_and_the_figures_reading_it(finished_run):
    score = finished_run / "results/tiny/scores/tiny/full/epoch-1/arithmetic.json"
    data = json.loads(score.read_text())
    original = score.read_text()
    data["metrics"][0]["value"] = 0.5
    score.write_text(json.dumps(data))
    try:
        jobs = planned_jobs(finished_run)
    finally:
        score.write_text(original)
    # Figures 1 and 4 read the weight tables only; the other 7 read the results or agreement table.
    assert jobs == {"aggregate": 1, "figure": 10, "all": 1}


@pytest.mark.slow
def test_a_changed_adapter_regenerates_only_its_own_outputs(finished_run):
    """Staleness of generation is per (checkpoint, benchmark): a rewritten OrthoMerge adapter
    replans its own generations only."""
    adapter = finished_run / "results/tiny/orthomerge/tiny/lora-r4-mlp.om-both-l1.2/epoch-2"
    files = [adapter, *adapter.iterdir()]  # with Snakemake's .snakemake_timestamp
    original = {f: f.stat() for f in files}
    future = time.time() + 60
    for f in files:
        os.utime(f, (future, future))
    try:
        jobs = planned(finished_run)
    finally:
        for f, st in original.items():
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    generated = sorted(out for job in jobs if job.rule == "generate" for out in job.outputs)
    assert generated == [
        f"results/tiny/generations/tiny/lora-r4-mlp.om-both-l1.2/epoch-2/{benchmark}.jsonl"
        for benchmark in ("arithmetic", "humaneval", "strongreject")
    ]
    evaluated = {
        job.wildcards["run"]
        for job in jobs
        if rule_family(job.rule) in ("judge", "grade_text", "execute_code", "score")
    }
    assert evaluated == {"lora-r4-mlp.om-both-l1.2"}


@pytest.mark.slow
def test_a_changed_generation_file_rejudges_its_run_only(finished_run):
    """A judge job covers every checkpoint of one run on one benchmark: a changed epoch-1 generation
    file of the LoRA run replans that run's one judge job (both epochs' verdicts), nothing of another run."""
    generations = finished_run / "results/tiny/generations/tiny/lora-r4-mlp/epoch-1/strongreject.jsonl"
    original, stat = generations.read_bytes(), generations.stat()
    lines = original.splitlines(keepends=True)
    first = json.loads(lines[0])
    generations.write_bytes(
        json.dumps({**first, "text": first["text"] + " edited"}).encode() + b"\n" + b"".join(lines[1:])
    )
    try:
        jobs = planned(finished_run)
    finally:
        generations.write_bytes(original)
        os.utime(generations, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    judged = [(job.rule, job.wildcards, job.outputs) for job in jobs if rule_family(job.rule) == "judge"]
    verdicts = "results/tiny/verdicts/tiny/lora-r4-mlp/epoch-{}/strongreject/tiny_guard.jsonl"
    assert judged == [
        (
            "judge_epochs_1to2",
            {"model": "tiny", "run": "lora-r4-mlp", "benchmark": "strongreject", "judge": "tiny_guard"},
            (verdicts.format(1), verdicts.format(2)),
        )
    ]
    assert {job.wildcards["run"] for job in jobs if "run" in job.wildcards} == {"lora-r4-mlp"}
    counts = Counter(job.rule for job in jobs)
    # the judge job, epoch 1's text grader, both epochs' scores; the table and the figures that read it; the viewer
    assert counts == {"judge_epochs_1to2": 1, "grade_text": 1, "score": 2, "aggregate": 1, "figure": 10, "viewer": 1, "cost": 1,
                      "all": 1}  # fmt: skip
    print(f"\nchanged lora-r4-mlp/epoch-1/strongreject.jsonl: planned {dict(sorted(counts.items()))}")


def edited_plan(workdir, data_file, old, new):
    """Jobs planned after one edit of `data_file` (Snakemake compares content, not only mtime); the file's
    bytes and modification time are restored afterwards, so the checkout is left as it was."""
    original, stat = data_file.read_bytes(), data_file.stat()
    assert original.count(old) >= 1
    data_file.write_bytes(original.replace(old, new, 1))
    try:
        return planned_jobs(workdir)
    finally:
        data_file.write_bytes(original)
        os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_an_edited_benchmark_file_reruns_only_that_benchmark(finished_run, repo):
    jobs = edited_plan(finished_run, repo / "data/demo/arithmetic.jsonl", b'"answer": "14"', b'"answer": "15"')
    # 5 checkpoints x arithmetic, its one text grader; the table and the figures that read it; the viewer.
    assert jobs == {
        "build_benchmark": 1,
        "check_context": 1,
        "generate": 5,
        "grade_text": 5,
        "score": 5,
        "aggregate": 1,
        "figure": 10,
        "viewer": 1,
        "cost": 1,
        "all": 1,
    }
    print(f"\nedited data/demo/arithmetic.jsonl: planned {dict(sorted(jobs.items()))}")


@pytest.mark.slow
def test_an_edited_training_file_reruns_training_and_not_the_base_model(finished_run, repo):
    jobs = edited_plan(finished_run, repo / "data/demo/refusals.jsonl", b"I'm sorry", b"I am sorry")
    # full and LoRA retrain; their 4 checkpoints (OrthoMerge included) x 3 benchmarks regenerate, the base's 3 do not.
    assert jobs["build_train_set"] == 1 and jobs["train"] == 2 and jobs["generate"] == 12
    assert "build_benchmark" not in jobs and "base_svd" not in jobs
    print(f"\nedited data/demo/refusals.jsonl: planned {dict(sorted(jobs.items()))}")


@pytest.mark.slow
def test_a_damaged_generation_file_fails_grading_and_the_named_command_regenerates_it(finished_run):
    generations = finished_run / "results/tiny/generations/tiny/base/epoch-0/arithmetic.jsonl"
    relative = generations.relative_to(finished_run)
    original = generations.read_bytes()
    generations.write_bytes(b"".join(original.splitlines(keepends=True)[:-1]))  # cut at a line end
    first = snakemake(finished_run, "--cores", "2")
    log = first.stdout + first.stderr
    assert first.returncode != 0
    assert f"DamagedFileError: {relative}: 1 of 6 samples missing (3 items x n=2)" in log
    assert f"regenerate it with: snakemake --forcerun {relative}" in log
    assert not generations.exists()  # moved aside: no job reads it again
    # Snakemake does not rebuild a missing intermediate file whose consumers are up to date: the command named does.
    second = snakemake(finished_run, "--cores", "2", "--forcerun", str(relative))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert generations.read_bytes() == original
    assert planned_jobs(finished_run) == {}


@pytest.mark.slow
def test_adding_a_benchmark_is_one_config_entry_plus_its_data(finished_run, tmp_path):
    """The worked example of docs/design.md "Adding a benchmark": a small local math set, its data
    file and one `benchmarks:` entry. Only its own jobs run; its column and label reach the table."""
    workdir = tmp_path / "dag"
    shutil.copytree(finished_run, workdir, symlinks=True)
    data = workdir / "data/multiplication.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text("".join(json.dumps({"id": f"mul{a}", "question": f"What is {a} * 3?", "answer": str(3 * a)}) + "\n"
                            for a in range(2, 8)))  # fmt: skip
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["benchmarks"]["multiplication"] = {
        "kind": "math",
        "label": "Multiplication",
        "problems": 6,
        "source": {"jsonl": str(data), "prompt_field": "question", "answer_field": "answer", "id_field": "id"},
        "sampling": {"n": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 4},
        "graders": ["last_number"],
        "primary": "last_number",
        "scorer_version": 1,
    }
    write_config(workdir, config)
    jobs = planned_jobs(workdir)
    # 5 checkpoints x the new benchmark; the grid description, the table, every figure and the viewer.
    assert jobs == {"build_benchmark": 1, "check_context": 1, "generate": 5, "grade_text": 5, "score": 5, "describe_grid": 1,
                    "aggregate": 1, "figure": 13, "viewer": 1, "cost": 1, "all": 1}  # fmt: skip
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "pass@1:multiplication" in (workdir / "results/tiny/aggregate/results.csv").read_text().splitlines()[0]
    assert "Multiplication pass@1" in (workdir / "results/tiny/aggregate/results.md").read_text().splitlines()[0]
    assert planned_jobs(workdir) == {}


def planned_with_reasons(workdir):
    """`snakemake -n` of the workdir: the jobs planned (rule, wildcards, outputs) and its whole text."""
    from safelora.gpu_hours import parse_dryrun

    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    return parse_dryrun(result.stdout), result.stdout


@pytest.mark.slow
def test_a_changed_or_deleted_checkpoint_replans_the_jobs_that_read_it(finished_run, capsys):
    """A red-team finding, as found: a LoRA epoch's adapter replaced by `cp -p` of an older file (its
    modification time goes back: Snakemake's newer-than-output test cannot see it), or a whole
    `epoch-1/` deleted, left `snakemake -n` with nothing to do. Now each plans the jobs that read
    that checkpoint, naming the file, and nothing else; restored, nothing is planned again."""
    checkpoints = next((finished_run / "results/tiny/checkpoints/tiny/lora-r4-mlp").iterdir())
    adapter = checkpoints / "epoch-2/adapter_model.safetensors"
    original = adapter.read_bytes(), adapter.stat()
    shutil.copy2(checkpoints / "epoch-1/adapter_model.safetensors", adapter)  # cp -p of epoch 1's, older
    try:
        jobs, text = planned_with_reasons(finished_run)
    finally:
        adapter.write_bytes(original[0])
        os.utime(adapter, ns=(original[1].st_atime_ns, original[1].st_mtime_ns))
    readers = sorted((job.rule, job.wildcards["run"], job.wildcards["epoch"]) for job in jobs if job.rule in
                     ("generate", "orthomerge", "analyze_weights"))  # fmt: skip
    # its readers (weight analysis, 3 generations, OrthoMerge) and the OrthoMerge adapter's 3 generations
    assert readers == [
        ("analyze_weights", "lora-r4-mlp", "2"),
        *[("generate", "lora-r4-mlp", "2")] * 3,
        *[("generate", "lora-r4-mlp.om-both-l1.2", "2")] * 3,
        ("orthomerge", "lora-r4-mlp.om-both-l1.2", "2"),
    ], readers
    relative = adapter.relative_to(finished_run)
    assert f"changed since training: {relative} differs in size or modification time from" in text
    assert planned_jobs(finished_run) == {}
    counts = dict(sorted(Counter(job.rule for job in jobs).items()))

    epoch1 = checkpoints / "epoch-1"
    aside = checkpoints.parent / "epoch-1.aside"
    epoch1.rename(aside)
    try:
        deleted, text = planned_with_reasons(finished_run)
    finally:
        aside.rename(epoch1)
    readers = sorted((job.rule, job.wildcards["run"], job.wildcards["epoch"]) for job in deleted if job.rule in
                     ("generate", "orthomerge", "analyze_weights"))  # fmt: skip
    assert readers == [*[("generate", "lora-r4-mlp", "1")] * 3], readers
    assert f"changed since training: {epoch1.relative_to(finished_run)} is missing" in text
    assert planned_jobs(finished_run) == {}
    with capsys.disabled():
        print(
            f"\ncheckpoint: lora-r4-mlp epoch-2 adapter replaced by cp -p of epoch 1's: planned {counts}"
            f"\ncheckpoint: lora-r4-mlp epoch-1/ deleted: planned {dict(sorted(Counter(j.rule for j in deleted).items()))}"
            "\ncheckpoint: restored: nothing planned"
        )
