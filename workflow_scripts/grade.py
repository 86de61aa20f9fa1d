#!/usr/bin/env python3
"""Grade generations with a text grader (safelora.registry.GRADERS, rule grade_text)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora import registry

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grader", required=True, choices=registry.text_graders())
    parser.add_argument("--kind", required=True, help="the benchmark's kind (safety, over_refusal, math, ...)")
    parser.add_argument("--generations", required=True)
    parser.add_argument("--items", required=True, help="BenchmarkItem JSONL (gold answers)")
    parser.add_argument("--out", required=True, help="Verdict JSONL")
    args = parser.parse_args()

    from safelora.evaluation.graders import grade_text
    from safelora.io import atomic_write_jsonl, read_generations, read_jsonl

    items = read_jsonl(args.items)
    verdicts = grade_text(args.grader, args.kind, read_generations(args.generations, items), items)
    atomic_write_jsonl(args.out, verdicts)
    print(f"{len(verdicts)} verdicts by {args.grader}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
