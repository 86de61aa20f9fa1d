#!/usr/bin/env python3
"""Summarize verdict files into one Score JSON for a (checkpoint, benchmark), with the truncation
counts of the generations they graded."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.settings import ScoreSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--benchmark", required=True)
    parser.add_argument(
        "--settings",
        type=ScoreSettings.from_json,
        required=True,
        help="JSON of safelora.settings.ScoreSettings: kind, graders, primary, n, max_unparseable_share, scorer_version",
    )
    parser.add_argument("--verdicts", nargs="+", required=True)
    parser.add_argument("--generations", required=True, help="the checkpoint's Generation JSONL (truncation counts)")
    parser.add_argument("--items", required=True, help="the benchmark's BenchmarkItem JSONL the verdicts must cover")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from safelora.evaluation.score import compute_score
    from safelora.io import read_generations, read_jsonl, write_record

    ids = {"model": args.model, "run": args.run, "epoch": args.epoch, "benchmark": args.benchmark}
    items = read_jsonl(args.items)
    generations = read_generations(args.generations, items)
    score = compute_score(ids, args.settings, args.verdicts, items, generations)
    write_record(args.out, "score", score)
    for m in score["metrics"]:
        print(
            f"{m['grader']}{'/' + m['variant'] if m['variant'] else ''}: {m['metric']} = {m['value']:.3f} "
            f"({m['n_problems']} problems, {m['unparseable']} unparseable)"
        )
    t = score["truncation"]
    print(f"{t['samples']} samples: {t['truncated']} at the token limit, {t['unclosed_think']} with </think> unclosed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
