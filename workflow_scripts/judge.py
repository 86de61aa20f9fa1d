#!/usr/bin/env python3
"""Judge generations with a judge model (Llama Guard, a math or refusal judge) served by a backend."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.evaluation.engines import add_engine_arguments

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge", required=True, help="JSON: the judge's config entry (kind, hub/path, ...)")
    parser.add_argument("--kind", required=True, help="the benchmark's kind")
    parser.add_argument("--generations", required=True)
    parser.add_argument("--items", required=True)
    parser.add_argument("--fallback", help="verdicts of the grader this judge backs up (judged only where it failed)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True)
    add_engine_arguments(parser, "this judge")
    args = parser.parse_args()

    from safelora.housekeeping import MemoryGuard

    MemoryGuard(args.mem_mb).start()

    from safelora.evaluation.judge import run_judge

    spec = json.loads(args.judge)
    run_judge(
        spec,
        args.kind,
        Path(args.generations),
        Path(args.items),
        Path(args.fallback) if args.fallback else None,
        args.backend,
        args.batch_size,
        Path(args.out),
        args.engine_idle_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
