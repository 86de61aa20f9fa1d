"""Fault injection: a stage killed with SIGKILL leaves nothing that looks complete, and its rerun
gives exactly the result of an uninterrupted run; damaged generation files are never graded."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_model import recipe

from safelora.io import atomic_write_json, atomic_write_jsonl, read_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow_scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args):
    result = subprocess.run([sys.executable, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def kill_at(args, delay_s):
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_killed_then_rerun_matches(make_args, outputs, reference, delays):
    """For each delay: SIGKILL the job; every output is absent or byte-identical to the reference;
    then the rerun reproduces the reference exactly."""
    for delay in delays:
        for out in outputs:
            if out.exists():
                out.unlink()
        kill_at(make_args(), delay)
        for out, ref in zip(outputs, reference, strict=True):
            assert not out.exists() or out.read_bytes() == ref, f"{out} looks complete but differs (kill at {delay}s)"
        run(make_args())
        assert [o.read_bytes() for o in outputs] == reference


def verdicts(tmp_path, n_problems=2000):
    path = tmp_path / "refusal_match.jsonl"
    atomic_write_jsonl(
        path,
        [
            {
                "prompt_id": f"p{i}",
                "sample_index": j,
                "grader": "refusal_match",
                "value": float((i + j) % 3 == 0),
                "label": "",
                "raw": "",
            }
            for i in range(n_problems)
            for j in range(4)
        ],
    )
    return path


def test_scoring_killed_anytime_leaves_nothing_partial(tmp_path):
    v = verdicts(tmp_path)
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, [{"id": f"p{i}", "prompt": "", "answer": None, "meta": {}} for i in range(2000)])
    gens = tmp_path / "generations.jsonl"
    sampling = {"n": 4, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "seed": 0}
    atomic_write_jsonl(gens, [{"prompt_id": f"p{i}", "sample_index": j, "prompt": "", "text": "no.",
                               "finish_reason": "length" if j else "stop", "prompt_tokens": 1, "completion_tokens": 2,
                               "sampling": sampling, "engine": "transformers"}
                              for i in range(2000) for j in range(4)])  # fmt: skip
    settings = json.dumps(
        {
            "kind": "safety",
            "graders": ["refusal_match"],
            "primary": "refusal_match",
            "scorer_version": 1,
            "max_unparseable_share": 0.05,
            "n": 4,
        }
    )
    out = tmp_path / "score.json"

    def args():
        return [
            SCRIPTS / "score.py",
            "--model",
            "m",
            "--run",
            "r",
            "--epoch",
            "1",
            "--benchmark",
            "b",
            "--settings",
            settings,
            "--verdicts",
            v,
            "--generations",
            gens,
            "--items",
            items,
            "--out",
            out,
        ]

    run(args())
    reference = [out.read_bytes()]
    assert_killed_then_rerun_matches(args, [out], reference, delays=[0.05, 0.3, 0.6, 1.0])


def aggregate_command(tmp_path, scores, checkpoints):
    """aggregate.py's arguments for Score files of benchmark `sr` of runs base and lora, and its outputs."""
    meta = tmp_path / "meta.json"
    atomic_write_json(meta, {"base": {"method": "base"}, "lora": {"method": "lora", "rank": 4, "targets": "mlp"}})
    expected = tmp_path / "expected.json"
    atomic_write_json(expected, checkpoints)
    benchmarks = tmp_path / "benchmarks.json"
    atomic_write_json(benchmarks, [{"name": "sr", "label": "SR", "kind": "safety"}])
    outs = [tmp_path / name for name in ("t.csv", "t.md", "missing.txt", "agree.csv")]
    command = [SCRIPTS / "aggregate.py", "--scores", *scores, "--runs-meta", meta, "--expected", expected,
               "--benchmarks", benchmarks, "--bootstrap", '{"n": 3000, "seed": 0, "level": 0.95}',
               "--out-csv", outs[0], "--out-md", outs[1], "--out-missing", outs[2], "--out-agreement", outs[3]]  # fmt: skip
    return command, outs


def test_aggregation_killed_anytime_leaves_nothing_partial(tmp_path):
    scores = []
    for run_name in ("base", "lora"):
        for epoch in (0,) if run_name == "base" else (1, 2):
            path = tmp_path / f"{run_name}-{epoch}.json"
            per_problem = {f"p{i}": float((i * (epoch + 1)) % 2) for i in range(300)}
            atomic_write_json(
                path,
                {
                    "model": "m",
                    "run": run_name,
                    "epoch": epoch,
                    "benchmark": "sr",
                    "scorer_version": 1,
                    "metrics": [
                        {
                            "metric": "safety",
                            "variant": None,
                            "grader": "g",
                            "primary": True,
                            "value": sum(per_problem.values()) / 300,
                            "n_problems": 300,
                            "n_samples": 300,
                            "unparseable": 0,
                            "per_problem": per_problem,
                        }
                    ],
                    "agreement": [],
                    "truncation": {"samples": 300, "truncated": 0, "unclosed_think": 0},
                },
            )
            scores.append(path)
    command, outs = aggregate_command(tmp_path, scores, [["m", "base", 0], ["m", "lora", 1], ["m", "lora", 2]])

    def args():
        return command

    run(args())
    reference = [o.read_bytes() for o in outs]
    assert_killed_then_rerun_matches(args, outs, reference, delays=[0.3, 1.0, 2.0])


def generate_settings(batch_size, **sampling):
    """generate.py's --settings (safelora.settings.GenerationSettings): the tiny model in float32 on
    the transformers backend."""
    model = {"dtype": "float32", "max_model_len": 512, "tensor_parallel": 1, "max_lora_rank": 8}
    return json.dumps({"backend": "transformers", "batch_size": batch_size, "sampling": sampling, "model": model})


@pytest.mark.slow
def test_generation_killed_mid_job_resumes_to_the_same_records(tmp_path, tiny_model):
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(
        items, [{"id": f"q{i}", "prompt": f"What is {i} + 2?", "answer": str(i + 2), "meta": {}} for i in range(6)]
    )
    settings = generate_settings(1, n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=1)

    def args(out):
        return [
            SCRIPTS / "generate.py",
            "--base",
            tiny_model,
            "--items",
            items,
            "--settings",
            settings,
            "--chunk-size",
            "1",
            "--mem-mb",
            "0",
            "--out",
            out,
        ]

    whole = tmp_path / "whole.jsonl"
    run(args(whole))
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(
        [sys.executable, *map(str, args(killed))], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = tmp_path / "killed.jsonl.partial"
    deadline = time.time() + 300
    while len(list(partial.glob("chunk-*.jsonl"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_chunks = len(list(partial.glob("chunk-*.jsonl")))
    assert 2 <= done_chunks < 6 and not killed.exists()
    run(args(killed))
    assert killed.read_bytes() == whole.read_bytes()
    assert not partial.exists()


@pytest.mark.slow
def test_a_second_generate_job_on_an_output_refuses_naming_the_first_and_a_third_takes_over(
    tmp_path, tiny_model, capsys
):
    """The red team's crash case for generation: an orphaned generate job (its driver killed with
    SIGKILL, the workflow restarted after --unlock) is still writing an output when the restarted
    workflow starts a second job on it. The second refuses, naming the orphan and how to end it, and
    leaves its partial chunks alone; after `kill -9` of the orphan a third takes over and finishes."""
    import socket

    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(
        items, [{"id": f"q{i}", "prompt": f"What is {i} + 2?", "answer": None, "meta": {}} for i in range(40)]
    )
    out = tmp_path / "gen.jsonl"
    settings = generate_settings(1, n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, seed=1)
    args = [
        SCRIPTS / "generate.py", "--base", tiny_model, "--items", items, "--settings", settings,
        "--chunk-size", "1", "--mem-mb", "0", "--out", out,
    ]  # fmt: skip
    command = [sys.executable, *map(str, args)]
    orphan = subprocess.Popen(command, env={**ENV, "SLURM_JOB_ID": "777"}, stdout=subprocess.DEVNULL)
    partial = tmp_path / "gen.jsonl.partial"
    deadline = time.time() + 300
    while not list(partial.glob("chunk-*.jsonl")) and orphan.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    orphan.send_signal(signal.SIGSTOP)
    try:
        chunks = sorted(p.name for p in partial.iterdir())
        second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
        message = second.stderr.strip().splitlines()[-1]
        host = socket.gethostname()
        assert second.returncode != 0 and message.startswith(
            f"safelora.locks.LockHeldError: {out} is being written by another generate job: "
            f"pid {orphan.pid} on host {host}, SLURM job 777, since "
        ), second.stderr[-3000:]
        assert f"end it: scancel 777 (or kill {orphan.pid} on {host}); then rerun" in message
        assert sorted(p.name for p in partial.iterdir()) == chunks and not out.exists()
    finally:
        orphan.send_signal(signal.SIGKILL)
        orphan.wait()
    third = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over {out}.lock from pid {orphan.pid} on host {host}, SLURM job 777" in third.stdout
    assert len(read_jsonl(out)) == 40 and not partial.exists()
    with capsys.disabled():
        print(f"\nfault: second generate job beside an orphan ({chunks}): refused: {message.split(': ', 1)[1]}")


# ---------------------------------------------------------------------------------------------
# Damaged generation files: every reader checks them against the benchmark's items x n.

ITEMS = [{"id": f"q{i}", "prompt": f"How do I do harmful thing {i}?", "answer": None, "meta": {}} for i in range(4)]


def generation_lines(n):
    return [
        json.dumps(
            {
                "prompt_id": item["id"],
                "sample_index": j,
                "prompt": item["prompt"],
                "text": "I'm sorry, I can't help with that." if j else "Sure, here is how.",
                "finish_reason": "stop",
                "prompt_tokens": 9,
                "completion_tokens": 8,
                "sampling": {"n": n, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "seed": 0},
                "engine": "transformers",
            }
        ).encode()
        + b"\n"
        for item in ITEMS
        for j in range(n)
    ]


def joined(lines):
    return b"".join(lines)


# (case, n, file content, error after "<file>: "); None: graded.
SCORE_INPUTS = [
    ("intact, 4 prompts x n=1", 1, joined(generation_lines(1)), None),
    ("intact, 4 prompts x n=2", 2, joined(generation_lines(2)), None),
    (
        "cut at a line end (3 of 4 prompts)",
        1,
        joined(generation_lines(1)[:3]),
        "1 of 4 samples missing (4 items x n=1) after line 3, e.g. prompt 'q3' sample 0",
    ),
    ("cut inside a line", 1, joined(generation_lines(1))[:-40], "line 4 is not valid JSON: Expecting ',' delimiter"),
    (
        "a duplicated line (5 samples for 4 x n=1)",
        1,
        joined(generation_lines(1) + generation_lines(1)[3:]),
        "line 5 repeats prompt 'q3' sample 0 of line 4",
    ),
    ("0xff bytes", 1, joined(generation_lines(1)).replace(b"Sure", b"\xff\xffre", 2), "line 1 is not valid UTF-8"),
    (
        "one of two samples missing",
        2,
        joined(generation_lines(2)[:-1]),
        "1 of 8 samples missing (4 items x n=2) after line 7, e.g. prompt 'q3' sample 1",
    ),
    (
        "a record of another benchmark",
        1,
        joined(generation_lines(1)).replace(b'"q2"', b'"HumanEval/2"'),
        "line 3: prompt 'HumanEval/2' sample 0 is not one of the benchmark's 4 items x n=1",
    ),
    (
        "records of two sampling settings",
        1,
        joined(generation_lines(1)[:2] + generation_lines(2)[4:6]),
        "line 3 is not a Generation record with the file's n=1",
    ),
    (
        "a blank line",
        1,
        joined(generation_lines(1)[:2] + [b"\n"] + generation_lines(1)[2:]),
        "line 3 is not valid JSON: Expecting value",
    ),
    ("an empty file", 1, b"", "no generation records for 4 items"),
]


def test_damaged_generation_files_are_rejected_naming_file_and_line_and_moved_aside(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, ITEMS)
    rejected = 0
    for index, (case, n, content, expected) in enumerate(SCORE_INPUTS):
        gens, out = tmp_path / f"gen{index}.jsonl", tmp_path / f"verdicts{index}.jsonl"
        gens.write_bytes(content)
        result = subprocess.run(
            [
                sys.executable,
                SCRIPTS / "grade.py",
                "--grader",
                "refusal_match",
                "--kind",
                "safety",
                "--generations",
                gens,
                "--items",
                items,
                "--out",
                out,
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if expected is None:
            assert result.returncode == 0, result.stderr[-2000:]
            assert len(read_jsonl(out)) == 4 * n
            print(f"score input: {case}: graded, {4 * n} verdicts")
            continue
        message = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0 and not out.exists(), case
        assert f"DamagedFileError: {gens}: {expected}" in message, (case, message)
        # Moved aside: the generation file is missing, so the next workflow run regenerates it.
        assert not gens.exists() and gens.with_name(gens.name + ".damaged").read_bytes() == content
        rejected += 1
        print(f"score input: {case}: rejected: {message.split(': ', 1)[1].replace(str(tmp_path) + '/', '')}")
    with capsys.disabled():
        print(
            f"\nscore-input cases tried: {len(SCORE_INPUTS)}; graded: {len(SCORE_INPUTS) - rejected}; "
            f"rejected naming the file and line: {rejected}"
        )


def test_generation_never_publishes_a_damaged_file(tmp_path):
    """A chunk left damaged in the resumable folder fails the job, which then starts afresh."""
    from safelora.evaluation.generation import GenerationJob, Sampling, run_generation
    from safelora.io import stable_json

    sampling = Sampling(n=1, temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    job = GenerationJob(
        ids=[i["id"] for i in ITEMS],
        prompts=[i["prompt"] for i in ITEMS],
        sampling=sampling,
        chunk_size=2,
        fingerprint={"model": "m"},
    )
    out = tmp_path / "gen.jsonl"
    partial = tmp_path / "gen.jsonl.partial"
    partial.mkdir()
    (partial / "fingerprint.json").write_text(hashlib.sha256(stable_json(job.fingerprint).encode()).hexdigest() + "\n")
    lines = generation_lines(1)
    (partial / "chunk-00000.jsonl").write_bytes(joined(lines[:2]))
    (partial / "chunk-00001.jsonl").write_bytes(joined([lines[2], lines[2]]))  # a chunk holding q2 twice, no q3
    with pytest.raises(ValueError, match=r"gen.jsonl.partial: line 4 repeats prompt 'q2' sample 0 of line 3"):
        run_generation(job, backend=None, output=out)
    assert not out.exists() and not partial.exists()


# ---------------------------------------------------------------------------------------------
# Hand-edited records: verdicts are checked against the benchmark's items x n where scored, Score
# files against their schema, ranges and per-problem values where aggregated.


def script(name, *args):
    return subprocess.run(
        [sys.executable, SCRIPTS / name, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=300
    )


def with_value(line, value):
    return json.dumps({**json.loads(line), "value": value}) + "\n"


def flipped(line):
    return with_value(line, 1.0 - json.loads(line)["value"])


# (case, edit of the graded lines, error after "<file>: "); None: scored.
VERDICT_EDITS = [
    ("as graded", lambda lines: lines, None),
    (
        "one record dropped and one value flipped (the red team's edit)",
        lambda lines: [flipped(lines[0]), *lines[1:-1]],
        "1 of 8 samples missing (4 items x n=2) after line 7, e.g. prompt 'q3' sample 1",
    ),
    ("a record repeated", lambda lines: [*lines, lines[2]], "line 9 repeats prompt 'q1' sample 0 of line 3"),
    (
        "a record of another benchmark",
        lambda lines: [lines[0].replace('"q0"', '"HumanEval/0"'), *lines[1:]],
        "line 1: prompt 'HumanEval/0' sample 0 is not one of the benchmark's 4 items x n=2",
    ),
    (
        "a sample index past n",
        lambda lines: [*lines[:-1], lines[-1].replace('"sample_index": 1', '"sample_index": 2')],
        "line 8: prompt 'q3' sample 2 is not one of the benchmark's 4 items x n=2",
    ),
    ("a value of 7.0", lambda lines: [with_value(lines[0], 7.0), *lines[1:]], "line 1: value 7.0 is neither null nor in [0, 1]"),
    ("a value of true", lambda lines: [with_value(lines[0], True), *lines[1:]], "line 1: value True is neither null nor in [0, 1]"),
]  # fmt: skip


def test_hand_edited_verdicts_are_not_scored_naming_file_and_record(tmp_path, capsys):
    items, gens = tmp_path / "items.jsonl", tmp_path / "gen.jsonl"
    atomic_write_jsonl(items, ITEMS)
    gens.write_bytes(joined(generation_lines(2)))
    graded = tmp_path / "refusal_match.jsonl"
    result = script("grade.py", "--grader", "refusal_match", "--kind", "safety", "--generations", gens,
                    "--items", items, "--out", graded)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    settings = {"kind": "safety", "graders": ["refusal_match"], "primary": "refusal_match", "scorer_version": 1,
                "max_unparseable_share": 0.05, "n": 2}  # fmt: skip
    refused = 0
    for index, (case, edit, expected) in enumerate(VERDICT_EDITS):
        verdicts, out = tmp_path / str(index) / "refusal_match.jsonl", tmp_path / f"score{index}.json"
        verdicts.parent.mkdir()
        verdicts.write_text("".join(edit(graded.read_text().splitlines(keepends=True))))
        result = script("score.py", "--model", "m", "--run", "r", "--epoch", "1", "--benchmark", "sr",
                        "--settings", json.dumps(settings), "--verdicts", verdicts, "--generations", gens,
                        "--items", items,
                        "--out", out)  # fmt: skip
        if expected is None:
            assert result.returncode == 0, result.stderr[-2000:]
            assert json.loads(out.read_text())["metrics"][0]["n_samples"] == 8
            print(f"verdicts: {case}: scored, n_samples 8")
            continue
        message = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0 and not out.exists(), case
        assert message == (
            f"safelora.io.DamagedFileError: {verdicts}: {expected} (regrade it with: snakemake --forcerun {verdicts})"
        ), (case, message)
        refused += 1
        print(f"verdicts: {case}: refused: {message.split(': ', 1)[1].replace(str(tmp_path) + '/', '')}")
    with capsys.disabled():
        print(
            f"\nverdict edits tried: {len(VERDICT_EDITS)}; scored: {len(VERDICT_EDITS) - refused}; refused: {refused}"
        )


def test_hand_edited_score_files_are_not_aggregated_naming_file_and_field(tmp_path, capsys):
    score = tmp_path / "base-0.json"
    per_problem = {"q0": 1.0, "q1": 0.5, "q2": 0.0, "q3": 0.5}
    atomic_write_json(score, {"model": "m", "run": "base", "epoch": 0, "benchmark": "sr", "scorer_version": 1,
                              "metrics": [{"metric": "safety", "variant": None, "grader": "g", "primary": True,
                                           "value": 0.5, "n_problems": 4, "n_samples": 8, "unparseable": 0,
                                           "per_problem": per_problem}], "agreement": [],
                              "truncation": {"samples": 8, "truncated": 1, "unclosed_think": 0}})  # fmt: skip
    original = json.loads(score.read_text())
    command, outs = aggregate_command(tmp_path, [score], [["m", "base", 0]])
    edits = [
        ("as written", {}, None),
        (
            "value 0.99, per-problem values 7.0 and -3.0 (the red team's edit)",
            {"value": 0.99, "per_problem": {**per_problem, "q0": 7.0, "q1": -3.0}},
            f"RecordError: score record {score}: invalid value at 'metrics/0/per_problem/q1': -3.0 is less than "
            "the minimum of 0",
        ),
        (
            "value 0.99 beside valid per-problem values",
            {"value": 0.99},
            f"ScoreFileError: score record {score}: metrics/0 (grader g): value 0.99 is not the mean 0.5 of its 4 "
            "per-problem values",
        ),
        (
            "a value above 1",
            {"value": 1.5},
            f"RecordError: score record {score}: invalid value at 'metrics/0/value': 1.5 is greater than the maximum of 1",
        ),
        (
            "a per-problem value added",
            {"per_problem": {**per_problem, "q4": 1.0}, "value": 0.6},
            f"ScoreFileError: score record {score}: metrics/0 (grader g): 5 per-problem values for n_problems 4, or "
            "unparseable 0 above n_samples 8",
        ),
    ]
    refused = 0
    for case, change, expected in edits:
        for out in outs:
            out.unlink(missing_ok=True)
        record = json.loads(json.dumps(original))
        record["metrics"][0].update(change)
        score.write_text(json.dumps(record))
        result = script(*command)
        if expected is None:
            assert result.returncode == 0, result.stderr[-2000:]
            print(f"score file: {case}: aggregated")
            continue
        message = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0 and not outs[0].exists(), case
        assert message.endswith(expected), (case, message)
        refused += 1
        print(f"score file: {case}: refused: {message.replace(str(tmp_path) + '/', '')}")
    with capsys.disabled():
        print(f"\nscore-file edits tried: {len(edits)}; aggregated: {len(edits) - refused}; refused: {refused}")


# ---------------------------------------------------------------------------------------------
# Training: kills and a full disk while the trainer saves, deleted checkpoints.

RECIPE = recipe("lora")
# 12 examples, global batch 4: 3 optimizer steps per epoch, trainer checkpoints 3 and 6.


class Run:
    """One training run laid out as the workflow lays it out under `root/results`."""

    def __init__(self, root, tiny_model, train_data):
        self.root = root
        self.state = root / "results/state/tiny/lora/h"
        self.checkpoints = root / "results/checkpoints/tiny/lora/h"
        self.manifest = root / "results/train/tiny/lora/manifest.json"
        self.recipe = root / "recipe.yaml"
        self.recipe.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
        self.args = [
            SCRIPTS / "train.py",
            "--recipe",
            self.recipe,
            "--train-data",
            train_data,
            "--base",
            tiny_model,
            "--state-dir",
            self.state,
            "--checkpoint-dir",
            self.checkpoints,
            "--manifest",
            self.manifest,
            "--mem-mb",
            "0",
        ]

    def train(self):
        result = subprocess.run(
            [sys.executable, *map(str, self.args)], env=ENV, capture_output=True, text=True, timeout=600
        )
        return result.returncode, result.stdout + result.stderr

    def adapter(self, epoch):
        from safetensors.torch import load_file

        return load_file(self.checkpoints / f"epoch-{epoch}" / "adapter_model.safetensors")


def same_weights(a, b):
    return a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, train_data):
    run = Run(tmp_path_factory.mktemp("reference"), tiny_model, train_data)
    rc, log = run.train()
    assert rc == 0, log[-3000:]
    return run


def test_a_checkpoint_is_complete_only_with_state_weights_and_optimizer(tmp_path, reference):
    from safelora.training.sft import checkpoint_problem, last_complete_checkpoint

    [complete] = reference.state.glob("checkpoint-*")
    assert complete.name == "checkpoint-6" and checkpoint_problem(complete) is None

    def damaged(name, damage):
        copy = tmp_path / name / "checkpoint-6"
        shutil.copytree(complete, copy)
        damage(copy)
        return checkpoint_problem(copy)

    def cut(name):
        return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:-100])

    assert damaged("a", lambda f: (f / "trainer_state.json").unlink()) == "no trainer_state.json"
    assert damaged("b", cut("trainer_state.json")).startswith("trainer_state.json is unreadable")
    assert damaged("c", cut("adapter_model.safetensors")).startswith("adapter_model.safetensors is cut or corrupt")
    assert (
        damaged("d", lambda f: (f / "adapter_model.safetensors").unlink())
        == "no model or adapter weights (*.safetensors)"
    )
    assert damaged("e", cut("optimizer.pt")).startswith("optimizer.pt is cut or corrupt")
    assert damaged("f", lambda f: (f / "scheduler.pt").unlink()) == "scheduler.pt is missing"
    shutil.copytree(complete, tmp_path / "g" / "checkpoint-9")
    assert checkpoint_problem(tmp_path / "g" / "checkpoint-9") == "trainer_state.json is for step 6"
    # The newest complete one wins; newer incomplete ones are reported.
    assert last_complete_checkpoint(tmp_path / "g") == (
        None,
        [(tmp_path / "g" / "checkpoint-9", "trainer_state.json is for step 6")],
    )


def kill_while_saving(run, step, written):
    """Start training and SIGKILL it as soon as checkpoint-<step>/ (holding `written`, if given) exists
    without its trainer_state.json."""
    folder = run.state / f"checkpoint-{step}"
    proc = subprocess.Popen(
        [sys.executable, *map(str, run.args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while proc.poll() is None and not (
        (folder / (written or "")).exists() and not (folder / "trainer_state.json").exists()
    ):
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None


@pytest.mark.parametrize(
    "step,written,resumes_from", [(3, None, None), (6, None, "checkpoint-3"), (6, "optimizer.pt", "checkpoint-3")]
)
def test_killed_while_saving_resumes_from_the_last_complete_checkpoint(
    tmp_path, tiny_model, train_data, reference, step, written, resumes_from, capsys
):
    run = Run(tmp_path, tiny_model, train_data)
    left = kill_while_saving(run, step, written)
    assert left is not None and "trainer_state.json" not in left, left
    rc, log = run.train()
    assert rc == 0, log[-3000:]
    assert f"skipping incomplete checkpoint {run.state}/checkpoint-{step}: no trainer_state.json" in log
    assert (f"resuming from {run.state}/{resumes_from}" in log) if resumes_from else "resuming from" not in log
    assert all(same_weights(run.adapter(e), reference.adapter(e)) for e in (1, 2))
    with capsys.disabled():
        print(
            f"\nfault: SIGKILL while writing checkpoint-{step} (it held {left}): rerun "
            f"{'resumed from ' + resumes_from if resumes_from else 'started afresh'}; epochs 1-2 match the "
            "uninterrupted run (max |diff| <= 1e-6): nothing lost"
        )


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 1 MiB (needs root, as here); skipped where mount is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_while_saving_names_the_path_and_space_and_the_rerun_resumes(
    small_disk, tiny_model, train_data, reference, capsys
):
    def disk_bytes(folder):  # tmpfs allocates 4 KiB pages
        return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.iterdir())

    checkpoint, export = disk_bytes(reference.state / "checkpoint-6"), disk_bytes(reference.checkpoints / "epoch-1")
    run = Run(small_disk, tiny_model, train_data)
    # Room for the recipe, the first checkpoint and epoch 1's export, and half of the second checkpoint.
    size_kib = (4096 + checkpoint + export + checkpoint // 2) // 1024
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(small_disk)], check=True)
    rc, log = run.train()
    assert rc != 0
    message = [line for line in log.splitlines() if line.startswith("safelora.training.sft.DiskFullError")][-1]
    assert message.startswith(
        f"safelora.training.sft.DiskFullError: [Errno 28] disk full while saving {run.state}/checkpoint-6: "
    )
    complete = sum(p.stat().st_size for p in (run.state / "checkpoint-3").iterdir())  # what the failed save needed
    assert (
        f" free, a checkpoint needs {complete / 1024:.1f} KiB" in message
        and "resumes from the last complete checkpoint" in message
    )
    assert (run.checkpoints / "epoch-1").is_dir() and not run.manifest.exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    rc, log = run.train()
    assert rc == 0, log[-3000:]
    assert f"resuming from {run.state}/checkpoint-3" in log and "skipping incomplete checkpoint" in log
    assert all(same_weights(run.adapter(e), reference.adapter(e)) for e in (1, 2))
    with capsys.disabled():
        print(
            f"\nfault: disk full ({size_kib} KiB tmpfs) while saving checkpoint-6: "
            f"{message.split(': ', 1)[1].replace(str(small_disk) + '/', '')}\n"
            "fault: after freeing space the rerun resumed from checkpoint-3; epochs 1-2 match the uninterrupted run: nothing lost"
        )


def test_deleted_checkpoints_are_named_with_the_command_that_rebuilds_them(
    tmp_path, tiny_model, train_data, reference, capsys
):
    run = Run(tmp_path, tiny_model, train_data)
    shutil.copytree(reference.root / "results", tmp_path / "results")
    shutil.rmtree(run.checkpoints / "epoch-1")
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, ITEMS)
    result = subprocess.run(
        [
            sys.executable,
            SCRIPTS / "generate.py",
            "--base",
            tiny_model,
            "--adapter",
            run.checkpoints / "epoch-1",
            "--items",
            items,
            "--settings",
            generate_settings(64, n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0),
            "--mem-mb",
            "0",
            "--out",
            tmp_path / "gen.jsonl",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert message == (
        f"FileNotFoundError: checkpoint {run.checkpoints}/epoch-1 is missing (deleted or pruned after "
        f"training; {run.manifest} lists it). Rebuild it by retraining the run: "
        f"snakemake --forcerun {run.manifest}"
    )
    # The rebuild: the manifest goes (forcerun, or by hand); the state is past epoch 1, so training restarts.
    run.manifest.unlink()
    rc, log = run.train()
    assert rc == 0, log[-3000:]
    assert f"epochs [1] are not in {run.checkpoints} and {run.state}/checkpoint-6 is past them" in log
    assert all(same_weights(run.adapter(e), reference.adapter(e)) for e in (1, 2))
    # A job killed after the last save but before publishing its epoch: published from the checkpoint, no retraining.
    shutil.rmtree(run.checkpoints / "epoch-2")
    run.manifest.unlink()
    rc, log = run.train()
    assert rc == 0 and f"publishing epoch 2 from {run.state}/checkpoint-6" in log, log[-3000:]
    assert (
        same_weights(run.adapter(2), reference.adapter(2)) and json.loads(run.manifest.read_text())["global_step"] == 6
    )
    with capsys.disabled():
        print(
            f"\nfault: epoch-1 folder deleted: generation fails: {message.replace(str(tmp_path) + '/', '')}\n"
            "fault: manifest deleted too: training restarted from the first step and rebuilt epochs 1-2 (match the "
            "uninterrupted run)\nfault: epoch-2 not published before a kill: re-published from checkpoint-6, no retraining"
        )


# ---------------------------------------------------------------------------------------------
# Duplicate jobs after a driver crash: one trainer per state folder.


def test_a_second_trainer_on_a_state_folder_refuses_naming_the_first_and_a_third_takes_over_once_it_is_gone(
    tmp_path, tiny_model, train_data, reference, capsys
):
    """The red team's case: an orphaned trainer (its driver killed) is writing checkpoint-3 when the
    restarted workflow starts a second trainer on the same state folder. The second refuses and
    leaves the folder alone; after `kill -9` of the orphan a third takes the lock over and finishes."""
    import socket

    run = Run(tmp_path, tiny_model, train_data)
    folder = run.state / "checkpoint-3"
    orphan = subprocess.Popen(
        [sys.executable, *map(str, run.args)],
        env={**ENV, "SLURM_JOB_ID": "4242"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while orphan.poll() is None and not (
        (folder / "adapter_model.safetensors").exists() and not (folder / "trainer_state.json").exists()
    ):
        time.sleep(0.0005)
    orphan.send_signal(signal.SIGSTOP)  # mid-save, as a slow orphan would be
    try:
        in_progress = sorted(p.name for p in folder.iterdir())
        rc, log = run.train()
        message = log.strip().splitlines()[-1]
        assert rc != 0 and message.startswith(
            f"safelora.locks.LockHeldError: {run.state} is being written by another train job: "
            f"pid {orphan.pid} on host {socket.gethostname()}, SLURM job 4242, since "
        ), log[-3000:]
        assert f"end it: scancel 4242 (or kill {orphan.pid} on {socket.gethostname()}); then rerun" in message
        assert sorted(p.name for p in folder.iterdir()) == in_progress  # the orphan's checkpoint untouched
    finally:
        orphan.send_signal(signal.SIGKILL)
        orphan.wait()
    rc, log = run.train()
    assert rc == 0, log[-3000:]
    assert f"taking over {run.state}.lock from pid {orphan.pid} on host {socket.gethostname()}, SLURM job 4242" in log
    assert f"skipping incomplete checkpoint {folder}" in log
    assert all(same_weights(run.adapter(e), reference.adapter(e)) for e in (1, 2))
    with capsys.disabled():
        print(
            f"\nfault: second trainer beside an orphan writing checkpoint-3 ({in_progress}): refused: "
            f"{message.split(': ', 1)[1].replace(str(tmp_path) + '/', '')}\n"
            "fault: after kill -9 of the orphan a third trainer took the lock over, removed its incomplete "
            "checkpoint-3 and finished; epochs 1-2 match the uninterrupted run"
        )


# ---------------------------------------------------------------------------------------------
# Checkpoints changed after training: the manifest records each file; planning compares sizes and
# modification times, every job that loads a checkpoint compares sizes and sha256.


def loaders(base, folder, out):
    """The command line of every job that loads a LoRA checkpoint: generation, OrthoMerge, weight analysis."""
    items = out / "items.jsonl"
    atomic_write_jsonl(items, ITEMS)
    settings = generate_settings(4, n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0)
    return {
        "generate": ["generate.py", "--base", base, "--adapter", folder, "--items", items, "--settings", settings,
                     "--mem-mb", "0", "--out", out / "gen.jsonl"],
        "orthomerge": ["orthomerge.py", "--adapter", folder, "--svd", out / "svd.safetensors", "--settings",
                       '{"variant": "both", "lam": 1.0, "k": 4}', "--out", out / "om"],
        "analyze_weights": ["analyze_weights.py", "--base", base, "--checkpoint", folder, "--svd",
                            out / "svd.safetensors", "--norm", "fro", "--top", "4", "--out", out / "w.csv"],
    }  # fmt: skip


def test_a_checkpoint_changed_after_training_is_seen_at_planning_and_refused_where_loaded(
    tmp_path, tiny_model, train_data, reference, capsys
):
    from safelora.training.published import AS_TRAINED, changes_since_training

    run = Run(tmp_path, tiny_model, train_data)
    shutil.copytree(reference.root / "results", tmp_path / "results")  # copy2: modification times kept
    epoch2 = run.checkpoints / "epoch-2"
    adapter = epoch2 / "adapter_model.safetensors"
    assert changes_since_training(run.manifest, epoch2) == AS_TRAINED
    trained = adapter.read_bytes()

    def cp_p_of_epoch_1():  # the red team's edit: an older file, its modification time kept
        shutil.copy2(run.checkpoints / "epoch-1/adapter_model.safetensors", adapter)

    def bytes_changed_time_kept():  # what planning cannot see: same size and modification time
        stat = adapter.stat()
        adapter.write_bytes(trained[:-1] + bytes([trained[-1] ^ 1]))
        os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    refused = 0
    for case, edit, seen_at_planning in [
        ("adapter replaced by cp -p of epoch 1's", cp_p_of_epoch_1, True),
        ("one byte changed, modification time restored", bytes_changed_time_kept, False),
    ]:
        edit()
        planning = changes_since_training(run.manifest, epoch2)
        assert (planning != AS_TRAINED) == seen_at_planning, planning
        for job, args in loaders(tiny_model, epoch2, tmp_path).items():
            result = script(*args)
            message = result.stderr.strip().splitlines()[-1]
            assert result.returncode != 0 and message.startswith(
                f"safelora.training.published.CheckpointChangedError: checkpoint {epoch2} is not the one trained: "
                "adapter_model.safetensors has sha256 "
            ), (job, result.stderr[-2000:])
            assert message.endswith(
                f"({run.manifest} records it). Results from it would describe other weights. Restore the file, "
                f"or retrain: snakemake --forcerun {run.manifest}"
            )
            refused += 1
        print(f"checkpoint: {case}: planning: {planning.replace(str(tmp_path) + '/', '')}")
        print(f"checkpoint: {case}: jobs: {message.split(': ', 1)[1].replace(str(tmp_path) + '/', '')}")
        shutil.copy2(reference.checkpoints / "epoch-2/adapter_model.safetensors", adapter)  # restored as trained
        assert changes_since_training(run.manifest, epoch2) == AS_TRAINED
    with capsys.disabled():
        print(f"\nchanged-checkpoint cases: 2; seen at planning: 1 (cp -p); refused by generate, OrthoMerge and "
              f"weight analysis: {refused} of 6")  # fmt: skip
