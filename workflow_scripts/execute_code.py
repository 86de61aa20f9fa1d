#!/usr/bin/env python3
"""Sanitize and run generated code with EvalPlus in the sandbox; write plus and base verdicts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from safelora.settings import Execution

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--settings",
        type=Execution.from_json,
        required=True,
        help="JSON of safelora.settings.Execution: dataset (humaneval, mbpp), problems (the EvalPlus file),"
        " timeout_s (wall-clock seconds per sample on top of a per-task ground-truth budget), memory_mb"
        " (address-space limit per sandbox)",
    )
    parser.add_argument("--generations", required=True, help="Generation records (JSONL)")
    parser.add_argument("--items", required=True, help="BenchmarkItem JSONL the generations answer")
    parser.add_argument("--out", required=True, help="plus verdicts (grader evalplus_plus)")
    parser.add_argument("--out-base", required=True, help="base verdicts (grader evalplus_base)")
    parser.add_argument("--workers", type=int, required=True, help="sandboxes run at once")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safelora.evaluation.code_exec import evaluate_solutions, load_evalplus_problems, sanitize_solution
    from safelora.evaluation.sandbox import SandboxUnavailableError, preflight
    from safelora.io import atomic_write_jsonl, read_generations, read_jsonl

    try:
        preflight()  # before any sample: a cluster may forbid the user namespace the sandbox needs
    except SandboxUnavailableError as err:
        print(err, file=sys.stderr)
        return 1
    settings = args.settings
    problems = load_evalplus_problems(settings.dataset, settings.problems)
    generations = read_generations(args.generations, read_jsonl(args.items))
    unknown = sorted({g["prompt_id"] for g in generations} - problems.keys())
    if unknown:
        print(f"{args.generations}: prompt ids not in {settings.problems}: {unknown[:5]}", file=sys.stderr)
        return 1
    solutions = [
        {
            "task_id": g["prompt_id"],
            "sample_index": g["sample_index"],
            "solution": sanitize_solution(g["text"], problems[g["prompt_id"]]["entry_point"]),
        }
        for g in generations
    ]
    results = evaluate_solutions(
        settings.dataset,
        problems,
        solutions,
        timeout_s=settings.timeout_s,
        memory_mb=settings.memory_mb,
        workers=args.workers,
    )
    for r in results:
        if r["detail"]:  # a sample the sandbox failed, not EvalPlus: say why in the job's log
            print(f"{r['task_id']} sample {r['sample_index']}: {r['status']}: {r['detail']}", file=sys.stderr)
    for path, grader, passed, label in (
        (args.out, "evalplus_plus", "plus_pass", "status"),
        (args.out_base, "evalplus_base", "base_pass", "base_status"),
    ):
        atomic_write_jsonl(
            path,
            (
                {
                    "prompt_id": r["task_id"],
                    "sample_index": r["sample_index"],
                    "grader": grader,
                    "value": 1.0 if r[passed] else 0.0,
                    "label": r[label],
                    "raw": s["solution"],
                }
                for r, s in zip(results, solutions, strict=True)
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
