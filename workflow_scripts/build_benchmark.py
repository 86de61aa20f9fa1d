#!/usr/bin/env python3
"""Load a benchmark into BenchmarkItem records (JSONL)."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="benchmark name (for error messages)")
    parser.add_argument("--spec", required=True, help="JSON: the benchmark's config entry (kind, source, limit, ...)")
    parser.add_argument("--problems", type=int, required=True, help="the config's problem count, checked")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from safelora.evaluation.items import load_benchmark
    from safelora.io import atomic_write_jsonl

    items = load_benchmark(args.name, {**json.loads(args.spec), "problems": args.problems})
    atomic_write_jsonl(args.out, [item.to_record() for item in items])
    print(f"{args.name}: {len(items)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
