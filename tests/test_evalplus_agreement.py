"""The project's execute_code path agrees, sample by sample, with EvalPlus's own evaluate.

For every HumanEval+ task and every 8th MBPP+ task, four samples: the canonical solution, a broken
one (a syntax error), one wrong on the base inputs only and one wrong on the plus inputs only
(the canonical function wrapped so that it returns a foreign object on exactly those inputs).
`evalplus.evaluate` runs them in a subprocess on the project's data files (its cache in a temp
folder, so the ground truth is computed afresh); `evaluate_solutions` runs them in the sandbox.
Both must give every sample the same base pass and the same plus pass (EvalPlus's "base + extra
tests": plus needs base).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from safelora.evaluation.code_exec import evaluate_solutions, load_evalplus_problems

REPO = Path(__file__).resolve().parents[1]
DATA = {
    "humaneval": REPO / "data" / "evalplus" / "HumanEvalPlus.jsonl.gz",
    "mbpp": REPO / "data" / "evalplus" / "MbppPlus.jsonl.gz",
}
OVERRIDE_ENV = {"humaneval": "HUMANEVAL_OVERRIDE_PATH", "mbpp": "MBPP_OVERRIDE_PATH"}
VARIANTS = ("canonical", "broken", "wrong_on_base", "wrong_on_plus")
MBPP_STRIDE = 8  # every 8th MBPP+ task (48 of 378) keeps the test under CI's time budget

# Appended to the canonical solution: the entry point answers with a foreign object exactly when
# its arguments are (or are not) one of the task's base inputs, so only one test set sees it wrong.
# Only the outermost call is judged, so recursive canonical solutions still compute right.
_WRAPPER = """

import base64 as _agreement_b64, pickle as _agreement_pickle
_agreement_base_inputs = _agreement_pickle.loads(_agreement_b64.b64decode("{blob}"))
_agreement_right = {entry}
_agreement_depth = [0]


class _AgreementWrong:
    pass


def {entry}(*args):
    if _agreement_depth[0]:
        return _agreement_right(*args)
    wrong = (list(args) in _agreement_base_inputs) == {wrong_on_base}
    _agreement_depth[0] += 1
    try:
        out = _agreement_right(*args)
    finally:
        _agreement_depth[0] -= 1
    return _AgreementWrong() if wrong else out
"""
# EvalPlus's per-test time limits (4x the canonical time, at least 1 s) depend on the machine's
# load while the ground truth is timed; both evaluators get these looser ones, so a busy CI
# machine cannot turn a canonical pass into a timeout on one side only. Agreement is about
# which tests pass, not about timing.
MIN_TIME_LIMIT_S = 10.0
GT_TIME_LIMIT_FACTOR = 20.0


def variant_solution(dataset: str, task: dict[str, Any], variant: str) -> str:
    right = task["prompt"] + task["canonical_solution"]
    if variant == "canonical":
        return right
    if variant == "broken":
        return right + "\n)\n"
    base_inputs = task["base_input"]
    if dataset == "mbpp":  # the inputs the function really receives (tuples, sets)
        from evalplus.data.mbpp import mbpp_deserialize_inputs

        base_inputs = mbpp_deserialize_inputs(task["task_id"], base_inputs)
    blob = base64.b64encode(pickle.dumps([list(i) for i in base_inputs])).decode()
    return right + _WRAPPER.format(blob=blob, entry=task["entry_point"], wrong_on_base=variant == "wrong_on_base")


def start_evalplus(
    dataset: str, problems: dict[str, dict[str, Any]], samples: list[dict[str, Any]], folder: Path
) -> subprocess.Popen[str]:
    """`evalplus.evaluate` on `samples`, started in the background on a file of just `problems`."""
    data = folder / f"{dataset}.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as fh:
        for task in problems.values():
            fh.write(json.dumps(task) + "\n")
    samples_path = folder / f"{dataset}_samples.jsonl"
    samples_path.write_text(
        "".join(json.dumps({"task_id": s["task_id"], "solution": s["solution"]}) + "\n" for s in samples),
        encoding="utf-8",
    )
    env = {**os.environ, OVERRIDE_ENV[dataset]: str(data), "XDG_CACHE_HOME": str(folder / "cache")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evalplus.evaluate",
            "--dataset",
            dataset,
            "--samples",
            str(samples_path),
            "--parallel",
            "2",
            "--i_just_wanna_run",
            "--min_time_limit",
            str(MIN_TIME_LIMIT_S),
            "--gt_time_limit_factor",
            str(GT_TIME_LIMIT_FACTOR),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def evalplus_outcomes(
    process: subprocess.Popen[str], dataset: str, folder: Path
) -> dict[tuple[str, int], tuple[bool, bool]]:
    """(base pass, plus pass) per (task, sample index) from `evalplus.evaluate`'s results file."""
    output, _ = process.communicate()
    assert process.returncode == 0, output[-2000:]
    results = json.loads((folder / f"{dataset}_samples_eval_results.json").read_text(encoding="utf-8"))
    outcomes = {}
    for task_id, rows in results["eval"].items():
        for index, row in enumerate(rows):  # EvalPlus keeps each task's samples in file order
            base = row["base_status"] == "pass"
            outcomes[task_id, index] = (base, base and row["plus_status"] == "pass")
    return outcomes


def agreement(dataset: str, task_ids: list[str], folder: Path) -> tuple[dict, dict, dict]:
    """Both evaluators' (base pass, plus pass) per sample, and each sample's variant.

    They run at the same time: each spends most of its wall time waiting on test processes.
    """
    all_problems = load_evalplus_problems(dataset, DATA[dataset])
    problems = {t: all_problems[t] for t in task_ids}
    samples = [
        {"task_id": t, "sample_index": i, "variant": v, "solution": variant_solution(dataset, problems[t], v)}
        for t in task_ids
        for i, v in enumerate(VARIANTS)
    ]
    process = start_evalplus(dataset, problems, samples, folder)
    ours = {
        (r["task_id"], r["sample_index"]): (r["base_pass"], r["plus_pass"])
        for r in evaluate_solutions(
            dataset,
            problems,
            samples,
            workers=2,
            min_time_limit=MIN_TIME_LIMIT_S,
            gt_time_limit_factor=GT_TIME_LIMIT_FACTOR,
        )
    }
    theirs = evalplus_outcomes(process, dataset, folder)
    variant = {(s["task_id"], s["sample_index"]): s["variant"] for s in samples}
    return ours, theirs, variant


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["humaneval", "mbpp"])
def test_execute_code_agrees_with_evalplus_evaluate(dataset: str, tmp_path: Path) -> None:
    task_ids = list(load_evalplus_problems(dataset, DATA[dataset]))
    if dataset == "mbpp":
        task_ids = task_ids[::MBPP_STRIDE]
    start = time.monotonic()
    ours, theirs, variant = agreement(dataset, task_ids, tmp_path)
    assert ours.keys() == theirs.keys()
    disagree = sorted(k for k in ours if ours[k] != theirs[k])
    print(
        f"{dataset}: {len(task_ids)} tasks, {len(ours)} samples, {len(ours) - len(disagree)} agree, "
        f"{len(disagree)} disagree, {time.monotonic() - start:.0f} s"
    )
    for name in VARIANTS:
        keys = [k for k in ours if variant[k] == name]
        print(
            f"  {name}: base pass {sum(ours[k][0] for k in keys)}/{len(keys)}, "
            f"plus pass {sum(ours[k][1] for k in keys)}/{len(keys)}"
        )
    for k in disagree:
        print(f"  disagree: {k} {variant[k]}: project {ours[k]}, evalplus {theirs[k]}")
    assert [(k, variant[k], ours[k], theirs[k]) for k in disagree] == []
    # The variants do what they are built for: broken never passes, wrong-on-base fails base
    # (and so plus), wrong-on-plus passes base wherever the canonical solution does.
    assert not any(ours[k][0] for k in ours if variant[k] in ("broken", "wrong_on_base"))
    # EvalPlus 0.3.1's special oracle for find_zero (HumanEval/32) `continue`s past its progress
    # counter, so untrusted_check reports every solution of that task as failed, even the
    # canonical one (docs/sandbox.md). Every other canonical solution passes base and plus.
    canonical_fails = sorted(t for (t, i), v in ours.items() if variant[t, i] == "canonical" and v != (True, True))
    assert canonical_fails == (["HumanEval/32"] if dataset == "humaneval" else [])
    canonical_base = {t for (t, i), v in ours.items() if variant[t, i] == "canonical" and v[0]}
    assert {t for (t, i), v in ours.items() if variant[t, i] == "wrong_on_plus" and v[0]} == canonical_base
