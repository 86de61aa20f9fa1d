#!/usr/bin/env python3
"""Judge every checkpoint of one run on one benchmark with a judge model (Llama Guard, a math or
refusal judge), loaded once: one generations file in and one verdict file out per checkpoint."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.settings import JudgeSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--settings",
        type=JudgeSettings.from_json,
        required=True,
        help="JSON of safelora.settings.JudgeSettings: the judge, the benchmark's kind, the backend",
    )
    parser.add_argument("--generations", required=True, nargs="+", help="one Generation file per checkpoint")
    parser.add_argument("--items", required=True)
    parser.add_argument(
        "--fallback",
        nargs="*",
        default=[],
        help="per checkpoint, the verdicts of the grader this judge backs up (judged only where it failed);"
        " none for a judge that backs up no grader",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mem-mb", type=float, required=True, help="host memory budget; stop clearly near it (0: off)")
    parser.add_argument("--out", required=True, nargs="+", help="one verdict file per checkpoint")
    args = parser.parse_args()
    for option, files in (("--out", args.out), ("--fallback", args.fallback)):
        if files and len(files) != len(args.generations):
            parser.error(f"{option} names {len(files)} files for {len(args.generations)} --generations files")

    from safelora.housekeeping import MemoryGuard

    MemoryGuard(args.mem_mb).start()

    from safelora.evaluation.judge import JudgedCheckpoint, run_judge

    fallbacks = args.fallback or [None] * len(args.generations)
    checkpoints = [
        JudgedCheckpoint(Path(gens), Path(out), Path(fallback) if fallback else None)
        for gens, out, fallback in zip(args.generations, args.out, fallbacks, strict=True)
    ]
    from safelora.locks import writer_locks

    with writer_locks(map(Path, args.out), "judge"):  # an orphan judging the same run makes this job refuse
        run_judge(args.settings, checkpoints, Path(args.items), args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
