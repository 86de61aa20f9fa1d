#!/usr/bin/env python3
"""Judge every checkpoint of one run on one benchmark with a judge model (Llama Guard, a math or
refusal judge), loaded once: one generations file in and one verdict file out per checkpoint."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.evaluation.generation import add_backend_arguments

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge", required=True, help="JSON: the judge's config entry (kind, hub/path, ...)")
    parser.add_argument("--kind", required=True, help="the benchmark's kind")
    parser.add_argument("--generations", required=True, nargs="+", help="one Generation file per checkpoint")
    parser.add_argument("--items", required=True)
    parser.add_argument(
        "--fallback",
        nargs="+",
        help="per checkpoint, the verdicts of the grader this judge backs up (judged only where it failed)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True, nargs="+", help="one verdict file per checkpoint")
    add_backend_arguments(parser)
    args = parser.parse_args()
    for option, files in (("--out", args.out), ("--fallback", args.fallback)):
        if files is not None and len(files) != len(args.generations):
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
        run_judge(json.loads(args.judge), args.kind, checkpoints, Path(args.items), args.backend, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
