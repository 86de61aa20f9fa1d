"""EvalPlus sanitize + sandboxed execution on the real HumanEval+/MBPP+ files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safelora.evaluation.code_exec import evaluate_solutions, load_evalplus_problems, sanitize_solution
from safelora.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
HUMANEVAL = REPO / "data" / "evalplus" / "HumanEvalPlus.jsonl.gz"
MBPP = REPO / "data" / "evalplus" / "MbppPlus.jsonl.gz"


@pytest.fixture(scope="module")
def humaneval() -> dict:
    return load_evalplus_problems("humaneval", HUMANEVAL)


def canonical(problems: dict, task_id: str, sample_index: int = 0) -> dict:
    p = problems[task_id]
    return {"task_id": task_id, "sample_index": sample_index, "solution": p["prompt"] + p["canonical_solution"]}


def test_loads_both_files() -> None:
    assert len(load_evalplus_problems("humaneval", HUMANEVAL)) == 164
    assert len(load_evalplus_problems("mbpp", MBPP)) == 378


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps({"task_id": "HumanEval/0", "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1 lacks"):
        load_evalplus_problems("humaneval", bad)
    with pytest.raises(ValueError, match="unknown EvalPlus dataset"):
        load_evalplus_problems("apps", bad)


def test_sanitize_strips_thinking_and_prose() -> None:
    text = (
        "<think>def wrong(): pass</think>Here is my solution:\n```python\nimport math\n\n"
        "def root(x):\n    return math.sqrt(x)\n\nprint(root(4))\n```\nDone."
    )
    assert sanitize_solution(text, "root") == "import math\ndef root(x):\n    return math.sqrt(x)"


def test_canonical_passes_and_wrong_fails(humaneval: dict) -> None:
    entry = humaneval["HumanEval/0"]["entry_point"]
    solutions = [
        canonical(humaneval, "HumanEval/0"),
        canonical(humaneval, "HumanEval/2"),
        {
            "task_id": "HumanEval/0",
            "sample_index": 1,
            "solution": f"def {entry}(numbers, threshold):\n    return False\n",
        },
        {"task_id": "HumanEval/0", "sample_index": 2, "solution": "this is not python"},
        # wrong on the base inputs only: its plus tests pass, but EvalPlus counts no plus pass
        {
            "task_id": "HumanEval/0",
            "sample_index": 3,
            "solution": (
                canonical(humaneval, "HumanEval/0")["solution"]
                + f"\n_base = {humaneval['HumanEval/0']['base_input']!r}\n_right = {entry}\n"
                f"def {entry}(numbers, threshold):\n"
                "    return (not _right(numbers, threshold)) if [numbers, threshold] in _base else _right(numbers, threshold)\n"
            ),
        },
    ]
    results = evaluate_solutions("humaneval", humaneval, solutions, plus_limit=50, workers=2)
    assert [(r["task_id"], r["sample_index"]) for r in results] == [
        (s["task_id"], s["sample_index"]) for s in solutions
    ]
    assert [(r["base_pass"], r["plus_pass"]) for r in results] == [
        (True, True),
        (True, True),
        (False, False),
        (False, False),
        (False, False),
    ]
    assert results[2]["status"] == "base_fail"
    assert results[4]["status"] == "base_fail"


def test_mbpp_canonical_passes() -> None:
    problems = load_evalplus_problems("mbpp", MBPP)
    # Mbpp/2 has set inputs that only survive through EvalPlus's deserialization.
    solutions = [canonical(problems, t) for t in ("Mbpp/2", "Mbpp/3", "Mbpp/4")]
    results = evaluate_solutions("mbpp", problems, solutions, plus_limit=30)
    assert all(r["base_pass"] and r["plus_pass"] for r in results), results


def test_a_sandbox_without_ground_truth_fails_its_samples_with_the_reason(humaneval: dict) -> None:
    """64 MiB of address space is too little to import EvalPlus: no sample is checked, each says why."""
    solutions = [canonical(humaneval, "HumanEval/3", i) for i in range(2)]
    results = evaluate_solutions("humaneval", humaneval, solutions, memory_mb=64, plus_limit=3)
    assert [(r["sample_index"], r["status"]) for r in results] == [(0, "base_sandbox_error"), (1, "base_sandbox_error")]
    assert all(r["detail"].startswith("the sandbox ended before the canonical solution's outputs") for r in results)


@pytest.mark.slow
def test_hostile_solutions_fail_and_are_contained(humaneval: dict) -> None:
    """Network, an endless loop and a fork bomb inside a solution: each fails, nothing escapes."""
    task = humaneval["HumanEval/0"]
    right = task["prompt"] + task["canonical_solution"]
    network = "import socket\n" + right + "\n_s = socket.socket(); _s.settimeout(2)\n_s.connect(('1.1.1.1', 80))\n"
    loop = right + "\nwhile True:\n    pass\n"
    fork_bomb = right + "\nimport os\nwhile True:\n    os.fork()\n"
    solutions = [
        {"task_id": "HumanEval/0", "sample_index": i, "solution": code}
        for i, code in enumerate([network, loop, fork_bomb])
    ]
    start = time.monotonic()
    results = evaluate_solutions("humaneval", humaneval, solutions, plus_limit=5, base_only=True)
    assert [r["base_pass"] for r in results] == [False, False, False], results
    assert results[1]["base_status"] == "timeout"
    assert time.monotonic() - start < 120


def write_generations(folder: Path, problems: dict, texts: dict[str, list[str]]) -> tuple[Path, Path]:
    """Generation records (n = len(texts) per task) and the items they answer."""
    generations, items = folder / "gen.jsonl", folder / "items.jsonl"
    generations.write_text(
        "".join(
            json.dumps({"prompt_id": task, "sample_index": i, "text": text, "sampling": {"n": len(answers)}}) + "\n"
            for task, answers in texts.items()
            for i, text in enumerate(answers)
        )
    )
    items.write_text(
        "".join(
            json.dumps({"id": task, "prompt": problems[task]["prompt"], "answer": None, "meta": {}}) + "\n"
            for task in texts
        )
    )
    return generations, items


def execute_code(folder: Path, generations: Path, items: Path) -> subprocess.CompletedProcess:
    """workflow_scripts/execute_code.py on the files, as the workflow runs it; verdicts in `folder`."""
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / "execute_code.py"),
            "--settings",
            json.dumps({"dataset": "humaneval", "problems": str(HUMANEVAL), "timeout_s": 20, "memory_mb": 4096}),
            "--generations",
            str(generations),
            "--items",
            str(items),
            "--out",
            str(folder / "plus.jsonl"),
            "--out-base",
            str(folder / "base.jsonl"),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
    )


def test_cli_writes_plus_and_base_verdicts(tmp_path: Path, humaneval: dict) -> None:
    task = humaneval["HumanEval/3"]
    right = f"<think>easy</think>```python\n{task['prompt']}{task['canonical_solution']}```"
    wrong = f"```python\ndef {task['entry_point']}(operations):\n    return True\n```"
    generations, items = write_generations(tmp_path, humaneval, {"HumanEval/3": [right, wrong]})
    job = execute_code(tmp_path, generations, items)
    assert job.returncode == 0, job.stderr[-3000:]
    plus, base = read_jsonl(tmp_path / "plus.jsonl"), read_jsonl(tmp_path / "base.jsonl")
    assert [(v["grader"], v["value"], v["label"]) for v in plus] == [
        ("evalplus_plus", 1.0, "pass"),
        ("evalplus_plus", 0.0, "base_fail"),
    ]
    assert [(v["grader"], v["value"]) for v in base] == [("evalplus_base", 1.0), ("evalplus_base", 0.0)]
    assert "def below_zero" in plus[0]["raw"] and "<think>" not in plus[0]["raw"]


# A red-team finding: the start of a JSON object to every file descriptor the sample has, and to
# every one of its parent's (the worker) and of the sandbox's init. Placed in the function body
# (the sanitizer drops top-level statements), before the canonical body: it runs on every call.
CHANNEL_WRITER = """
    import os
    for fd in range(256):
        try:
            os.write(fd, b'{"x": ')
        except OSError:
            pass
    for pid in (os.getppid(), 1):
        for fd in range(64):
            try:
                os.write(os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY), b'{"x": ')
            except OSError:
                pass
"""
# Kills the worker checking it (EvalPlus's guard disables os.kill, not the C library's kill).
WORKER_KILLER = """
    import ctypes, os
    ctypes.CDLL(None).kill(os.getppid(), 9)
"""


@pytest.mark.slow
def test_hostile_samples_fail_alone(tmp_path: Path, humaneval: dict) -> None:
    """A sample writing into the report channel, and one killing its worker: every other sample keeps its verdict."""
    texts = {}
    for task_id, hostile_first in (("HumanEval/3", False), ("HumanEval/2", True)):
        task = humaneval[task_id]
        right = task["prompt"] + task["canonical_solution"]
        wrong = f"def {task['entry_point']}(*args):\n    return None\n"
        hostile = task["prompt"] + (WORKER_KILLER if hostile_first else CHANNEL_WRITER) + task["canonical_solution"]
        answers = [hostile, right, wrong] if hostile_first else [right, hostile, wrong]
        texts[task_id] = [f"```python\n{a}\n```" for a in answers]
    generations, items = write_generations(tmp_path, humaneval, texts)
    job = execute_code(tmp_path, generations, items)
    plus = read_jsonl(tmp_path / "plus.jsonl") if job.returncode == 0 else []
    print(f"\nexecute_code exit {job.returncode}; stderr: {job.stderr.strip()[-600:]}")
    for v in plus:
        print(f"  {v['prompt_id']} sample {v['sample_index']}: {v['label']}")
    assert job.returncode == 0
    assert [(v["prompt_id"], v["sample_index"], v["label"]) for v in plus] == [
        ("HumanEval/3", 0, "pass"),
        ("HumanEval/3", 1, "pass"),  # its writes reached nothing that carries reports
        ("HumanEval/3", 2, "base_fail"),
        ("HumanEval/2", 0, "base_sandbox_error"),
        ("HumanEval/2", 1, "pass"),  # checked again in a fresh sandbox
        ("HumanEval/2", 2, "base_fail"),
    ]
    assert (
        "HumanEval/2 sample 0: base_sandbox_error: the sandbox ended while this sample was being checked" in job.stderr
    )


def test_cli_help_is_instant() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "workflow_scripts" / "execute_code.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--out-base" in out.stdout
