"""Fault injection: a stage killed with SIGKILL leaves nothing that looks complete, and its rerun
gives exactly the result of an uninterrupted run; damaged generation files are never graded."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safelora.io import atomic_write_json, atomic_write_jsonl, read_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow_scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args):
    result = subprocess.run([sys.executable, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def kill_at(args, delay_s):
    proc = subprocess.Popen([sys.executable, *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        for out, ref in zip(outputs, reference):
            assert not out.exists() or out.read_bytes() == ref, f"{out} looks complete but differs (kill at {delay}s)"
        run(make_args())
        assert [o.read_bytes() for o in outputs] == reference


def verdicts(tmp_path, n_problems=2000):
    path = tmp_path / "refusal_match.jsonl"
    atomic_write_jsonl(path, [{"prompt_id": f"p{i}", "sample_index": j, "grader": "refusal_match",
                               "value": float((i + j) % 3 == 0), "label": "", "raw": ""}
                              for i in range(n_problems) for j in range(4)])
    return path


def test_scoring_killed_anytime_leaves_nothing_partial(tmp_path):
    v = verdicts(tmp_path)
    settings = json.dumps({"kind": "safety", "graders": ["refusal_match"], "primary": "refusal_match",
                           "scorer_version": 1, "max_unparseable_share": 0.05})
    out = tmp_path / "score.json"

    def args():
        return [SCRIPTS / "score.py", "--model", "m", "--run", "r", "--epoch", "1", "--benchmark", "b",
                "--settings", settings, "--verdicts", v, "--out", out]

    run(args())
    reference = [out.read_bytes()]
    assert_killed_then_rerun_matches(args, [out], reference, delays=[0.05, 0.3, 0.6, 1.0])


def test_aggregation_killed_anytime_leaves_nothing_partial(tmp_path):
    scores = []
    for run_name in ("base", "lora"):
        for epoch in ((0,) if run_name == "base" else (1, 2)):
            path = tmp_path / f"{run_name}-{epoch}.json"
            per_problem = {f"p{i}": float((i * (epoch + 1)) % 2) for i in range(300)}
            atomic_write_json(path, {"model": "m", "run": run_name, "epoch": epoch, "benchmark": "sr", "scorer_version": 1,
                                     "metrics": [{"metric": "safety", "variant": None, "grader": "g", "primary": True,
                                                  "value": sum(per_problem.values()) / 300, "n_problems": 300, "n_samples": 300,
                                                  "unparseable": 0, "per_problem": per_problem}], "agreement": []})
            scores.append(path)
    meta = tmp_path / "meta.json"
    atomic_write_json(meta, {"base": {"method": "base"}, "lora": {"method": "lora", "rank": 4, "targets": "mlp"}})
    expected = tmp_path / "expected.json"
    atomic_write_json(expected, [["m", "base", 0], ["m", "lora", 1], ["m", "lora", 2]])
    outs = [tmp_path / name for name in ("t.csv", "t.md", "missing.txt", "agree.csv")]

    def args():
        return [SCRIPTS / "aggregate.py", "--scores", *scores, "--runs-meta", meta, "--expected", expected,
                "--n-boot", "3000", "--out-csv", outs[0], "--out-md", outs[1], "--out-missing", outs[2],
                "--out-agreement", outs[3]]

    run(args())
    reference = [o.read_bytes() for o in outs]
    assert_killed_then_rerun_matches(args, outs, reference, delays=[0.3, 1.0, 2.0])


@pytest.mark.slow
def test_generation_killed_mid_job_resumes_to_the_same_records(tmp_path, tiny_model):
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, [{"id": f"q{i}", "prompt": f"What is {i} + 2?", "answer": str(i + 2), "meta": {}} for i in range(6)])
    sampling = json.dumps({"n": 2, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "seed": 1})

    def args(out):
        return [SCRIPTS / "generate.py", "--base", tiny_model, "--items", items, "--backend", "transformers",
                "--batch-size", "1", "--chunk-size", "1", "--sampling", sampling,
                "--model-settings", json.dumps({"dtype": "float32", "max_model_len": 512}), "--out", out]

    whole = tmp_path / "whole.jsonl"
    run(args(whole))
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, *map(str, args(killed))], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# ---------------------------------------------------------------------------------------------
# Damaged generation files: every reader checks them against the benchmark's items x n.

ITEMS = [{"id": f"q{i}", "prompt": f"How do I do harmful thing {i}?", "answer": None, "meta": {}} for i in range(4)]


def generation_lines(n):
    return [json.dumps({"prompt_id": item["id"], "sample_index": j, "prompt": item["prompt"],
                        "text": "I'm sorry, I can't help with that." if j else "Sure, here is how.",
                        "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 8,
                        "sampling": {"n": n, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "seed": 0},
                        "engine": "transformers"}).encode() + b"\n" for item in ITEMS for j in range(n)]


def joined(lines):
    return b"".join(lines)


# (case, n, file content, error after "<file>: "); None: graded.
SCORE_INPUTS = [
    ("intact, 4 prompts x n=1", 1, joined(generation_lines(1)), None),
    ("intact, 4 prompts x n=2", 2, joined(generation_lines(2)), None),
    ("cut at a line end (3 of 4 prompts)", 1, joined(generation_lines(1)[:3]),
     "1 of 4 samples missing (4 items x n=1) after line 3, e.g. prompt 'q3' sample 0"),
    ("cut inside a line", 1, joined(generation_lines(1))[:-40], "line 4 is not valid JSON: Expecting ',' delimiter"),
    ("a duplicated line (5 samples for 4 x n=1)", 1, joined(generation_lines(1) + generation_lines(1)[3:]),
     "line 5 repeats prompt 'q3' sample 0 of line 4"),
    ("0xff bytes", 1, joined(generation_lines(1)).replace(b"Sure", b"\xff\xffre", 2), "line 1 is not valid UTF-8"),
    ("one of two samples missing", 2, joined(generation_lines(2)[:-1]),
     "1 of 8 samples missing (4 items x n=2) after line 7, e.g. prompt 'q3' sample 1"),
    ("a record of another benchmark", 1, joined(generation_lines(1)).replace(b'"q2"', b'"HumanEval/2"'),
     "line 3: prompt 'HumanEval/2' sample 0 is not one of the benchmark's 4 items x n=1"),
    ("records of two sampling settings", 1, joined(generation_lines(1)[:2] + generation_lines(2)[4:6]),
     "line 3 is not a Generation record with the file's n=1"),
    ("a blank line", 1, joined(generation_lines(1)[:2] + [b"\n"] + generation_lines(1)[2:]),
     "line 3 is not valid JSON: Expecting value"),
    ("an empty file", 1, b"", "no generation records for 4 items"),
]


def test_damaged_generation_files_are_rejected_naming_file_and_line_and_moved_aside(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, ITEMS)
    rejected = 0
    for index, (case, n, content, expected) in enumerate(SCORE_INPUTS):
        gens, out = tmp_path / f"gen{index}.jsonl", tmp_path / f"verdicts{index}.jsonl"
        gens.write_bytes(content)
        result = subprocess.run([sys.executable, SCRIPTS / "grade.py", "--grader", "refusal_match", "--kind", "safety",
                                 "--generations", gens, "--items", items, "--out", out],
                                env=ENV, capture_output=True, text=True, timeout=300)
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
        print(f"\nscore-input cases tried: {len(SCORE_INPUTS)}; graded: {len(SCORE_INPUTS) - rejected}; "
              f"rejected naming the file and line: {rejected}")


def test_generation_never_publishes_a_damaged_file(tmp_path):
    """A chunk left damaged in the resumable folder fails the job, which then starts afresh."""
    from safelora.generation import GenerationJob, Sampling, run_generation
    from safelora.io import stable_json

    sampling = Sampling(n=1, temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    job = GenerationJob(ids=[i["id"] for i in ITEMS], prompts=[i["prompt"] for i in ITEMS], sampling=sampling,
                        chunk_size=2, fingerprint={"model": "m"})
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
