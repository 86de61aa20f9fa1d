"""EvalPlus code extraction and sandboxed execution (HumanEval+ and MBPP+).

The parent side sanitizes completions with EvalPlus's sanitizer and sends one task at a time,
with all its samples, to a worker inside ``safelora.evaluation.sandbox``. The worker is this very file run as
a script: it computes the expected outputs from the canonical solution (EvalPlus's
``trusted_exec``) and checks each sample on the base and plus inputs with EvalPlus's
``untrusted_check`` (per-input time limits from the canonical run times, ``atol``, the MBPP special
oracles). Its top level imports only the standard library, because the checkout is not in the sandbox;
the parent-side imports sit inside the functions that need them.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DATASETS = ("humaneval", "mbpp")
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")
# EvalPlus's defaults (evalplus.config): a test may take 4x the canonical time, at least 1 s.
MIN_TIME_LIMIT_S = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
# EvalPlus caps one untrusted_check at 60 s (+3 s of its own bookkeeping).
CHECK_CAP_S = 65.0
GROUND_TRUTH_BUDGET_S = 120.0


def sanitize_solution(text: str, entry_point: str) -> str:
    """The code EvalPlus would run: thinking stripped, then ``evalplus.sanitize.sanitize``."""
    from evalplus.sanitize import sanitize

    from safelora.evaluation.parsers import strip_thinking

    return sanitize(strip_thinking(text), entry_point)


def load_evalplus_problems(dataset: str, path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Problems of a local HumanEval+/MBPP+ file (``.jsonl`` or ``.jsonl.gz``), keyed by task id.

    Records are kept as stored: MBPP+ inputs are turned into tuples/sets by the worker (EvalPlus's
    ``mbpp_deserialize_inputs``), since they travel to it as JSON.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown EvalPlus dataset {dataset!r}; expected one of {DATASETS}")
    opener = gzip.open if str(path).endswith(".gz") else open
    problems: dict[str, dict[str, Any]] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [f for f in REQUIRED_FIELDS if f not in record]
            if missing:
                raise ValueError(f"{path}: line {lineno} lacks {missing}")
            if record["task_id"] in problems:
                raise ValueError(f"{path}: line {lineno} repeats task {record['task_id']}")
            problems[record["task_id"]] = record
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


STATUSES = ("pass", "fail", "timeout")  # EvalPlus's verdicts, the only ones a worker may report
_GROUND_TRUTH_DONE = {"ground_truth": "done"}


def _run_worker(payload: dict[str, Any], *, timeout_s: float, memory_mb: int) -> tuple[bool, list[dict], str, str]:
    """One sandbox on `payload`: (ground truth done, valid sample reports in order, status, why it ended).

    The worker reports line by line: the ground-truth marker, then one line per sample as it is
    checked. A line that is not one of these is left out and named in the reason.
    """
    from safelora.evaluation.sandbox import run_sandboxed

    result = run_sandboxed(
        Path(__file__).read_text(encoding="utf-8"),
        stdin=json.dumps(payload),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        env={
            # reliability_guard sets this as the rlimit; above the sandbox's it would fail.
            "EVALPLUS_MAX_MEMORY_BYTES": str(memory_mb * 2**20),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        },
    )
    variants = ["base"] if payload["base_only"] else ["base", "plus"]
    expected = [s["sample_index"] for s in payload["samples"]]
    ground_truth, reports, malformed = False, [], []
    for lineno, line in enumerate(result.stdout.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if record == _GROUND_TRUTH_DONE:
            ground_truth = True
        elif (
            ground_truth
            and isinstance(record, dict)
            and len(reports) < len(expected)
            and record.get("sample_index") == expected[len(reports)]
            and all(record.get(f"{v}_status") in STATUSES for v in variants)
        ):
            reports.append(record)
        else:
            malformed.append(f"line {lineno} {line[:80]!r}")
    status = "sandbox_timeout" if result.timed_out else "sandbox_error"
    last_error = result.stderr.strip().splitlines()[-1:]
    why = f"exit {result.returncode}" + (f", {last_error[0][:200]}" if last_error else "")
    if result.timed_out:
        why = f"wall-clock limit {timeout_s:.0f} s reached"
    if malformed:
        why += f"; not a report: {', '.join(malformed[:3])}"
    return ground_truth, reports, status, why


def _check_task(payload: dict[str, Any], *, timeout_s: float, memory_mb: int) -> list[dict[str, Any]]:
    """Reports for every sample of one task: ``sample_index``, ``base_status``, ``plus_status``, ``detail``.

    A sandbox that ends before reporting every sample (a sample killed its worker, a crash, the
    wall clock) fails the sample it was checking, with the reason in ``detail``; the samples
    after it run again in a fresh sandbox. Without the ground truth every sample fails (it would
    fail again).
    """
    rows: list[dict[str, Any]] = []
    pending = payload["samples"]
    while pending:
        budget = GROUND_TRUTH_BUDGET_S + timeout_s * len(pending)
        ground_truth, reports, status, why = _run_worker(
            {**payload, "samples": pending}, timeout_s=budget, memory_mb=memory_mb
        )
        rows += [{**r, "detail": ""} for r in reports]
        pending = pending[len(reports) :]
        if not pending:
            break
        if not ground_truth:
            detail = f"the sandbox ended before the canonical solution's outputs were known: {why}"
            blamed, pending = pending, []
        else:
            detail = f"the sandbox ended while this sample was being checked: {why}"
            blamed, pending = pending[:1], pending[1:]
        rows += [
            {"sample_index": s["sample_index"], "base_status": status, "plus_status": status, "detail": detail}
            for s in blamed
        ]
    return rows


def evaluate_solutions(
    dataset: str,
    problems: dict[str, dict[str, Any]],
    solutions: list[dict[str, Any]],
    *,
    timeout_s: float = 2 * CHECK_CAP_S,
    memory_mb: int = 4096,
    workers: int = 1,
    plus_limit: int | None = None,
    base_only: bool = False,
    min_time_limit: float = MIN_TIME_LIMIT_S,
    gt_time_limit_factor: float = GT_TIME_LIMIT_FACTOR,
) -> list[dict[str, Any]]:
    """Run each solution on its task's base and plus tests inside the sandbox.

    `solutions`: dicts with ``task_id``, ``sample_index`` and ``solution`` (already sanitized).
    One sandbox runs one task with all its samples; its wall-clock limit is a ground-truth budget
    plus `timeout_s` per sample (EvalPlus's own per-test limits apply inside). `plus_limit` keeps
    only the first plus inputs (tests only; None runs all). Returns, in input order, dicts with
    ``task_id``, ``sample_index``, ``base_pass``, ``plus_pass``, ``base_status``, ``status`` and
    ``detail`` (why the sandbox failed the sample, else empty).
    As in ``evalplus.evaluate`` (its "base + extra tests" pass@k), a plus pass needs the base tests
    to pass too; ``status`` is the plus status, ``base_<status>`` where the base tests did not
    pass, or the base status when base_only. Statuses are EvalPlus's pass/fail/timeout or
    sandbox_timeout/sandbox_error (``_check_task``).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown EvalPlus dataset {dataset!r}; expected one of {DATASETS}")
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sol in solutions:
        if sol["task_id"] not in problems:
            raise KeyError(f"solution for unknown task {sol['task_id']!r}")
        by_task[sol["task_id"]].append(sol)
    payloads = [
        {
            "dataset": dataset,
            "task": problems[task_id],
            "plus_limit": plus_limit,
            "base_only": base_only,
            "min_time_limit": min_time_limit,
            "gt_time_limit_factor": gt_time_limit_factor,
            "samples": [{"sample_index": s["sample_index"], "solution": s["solution"]} for s in sols],
        }
        for task_id, sols in by_task.items()
    ]

    def run(payload: dict[str, Any]) -> list[dict[str, Any]]:
        return _check_task(payload, timeout_s=timeout_s, memory_mb=memory_mb)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = dict(zip(by_task, pool.map(run, payloads), strict=True))
    rows = {}
    for task_id, results in outcomes.items():
        for r in results:
            base_pass = r["base_status"] == "pass"
            if base_only:
                status = r["base_status"]
            else:
                status = r["plus_status"] if base_pass else f"base_{r['base_status']}"
            rows[task_id, r["sample_index"]] = {
                "task_id": task_id,
                "sample_index": r["sample_index"],
                "base_pass": base_pass,
                "plus_pass": status == "pass",
                "base_status": r["base_status"],
                "status": status,
                "detail": r["detail"],
            }
    return [rows[s["task_id"], s["sample_index"]] for s in solutions]


# --------------------------------------------------------------------------------------------
# The worker, run inside the sandbox: JSON payload on stdin, report lines on stdout (the
# ground-truth marker, then one line per sample as it is checked).


def _worker_main() -> None:
    payload = json.load(sys.stdin)
    # Not dumpable: a sample (same uid) cannot open /proc/<worker>/fd/* to reach the report channel.
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
    # Keep the real stdout for the reports, in this process only: EvalPlus runs each sample in a
    # forked child, which closes it at once. Anything the solutions print goes to /dev/null.
    channel = {"fd": os.dup(1)}

    def close_in_child() -> None:
        if (fd := channel.pop("fd", None)) is not None:
            os.close(fd)

    os.register_at_fork(after_in_child=close_in_child)
    results_out = os.fdopen(channel["fd"], "w", encoding="utf-8", closefd=False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)

    def report(record: dict[str, Any]) -> None:
        results_out.write(json.dumps(record) + "\n")
        results_out.flush()

    from evalplus.data.mbpp import mbpp_deserialize_inputs
    from evalplus.eval import untrusted_check
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    dataset, task = payload["dataset"], payload["task"]
    entry_point = task["entry_point"]
    inputs = {"base": task["base_input"], "plus": task["plus_input"][: payload["plus_limit"]]}
    if dataset == "mbpp":
        inputs = {k: mbpp_deserialize_inputs(task["task_id"], v) for k, v in inputs.items()}
    variants = ["base"] if payload["base_only"] else ["base", "plus"]
    canonical = task["prompt"] + task["canonical_solution"]
    output_not_none = dataset == "mbpp" and entry_point in MBPP_OUTPUT_NOT_NONE_TASKS
    expected = {
        v: trusted_exec(canonical, inputs[v], entry_point, record_time=True, output_not_none=output_not_none)
        for v in variants
    }
    report(_GROUND_TRUTH_DONE)
    for sample in payload["samples"]:
        row: dict[str, Any] = {"sample_index": sample["sample_index"]}
        for v in variants:
            outputs, ref_time = expected[v]
            status, _ = untrusted_check(
                dataset,
                sample["solution"],
                inputs[v],
                entry_point,
                expected=outputs,
                atol=task["atol"],
                ref_time=ref_time,
                fast_check=True,
                min_time_limit=payload["min_time_limit"],
                gt_time_limit_factor=payload["gt_time_limit_factor"],
            )
            row[f"{v}_status"] = status
        report(row)


if __name__ == "__main__":
    _worker_main()
