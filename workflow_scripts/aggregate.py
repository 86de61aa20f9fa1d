#!/usr/bin/env python3
"""Aggregate Score files into the results table (CSV, Markdown), the missing list and judge agreement."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from safelora.settings import Bootstrap

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scores", nargs="*", required=True, help="Score JSON files (results/scores/...)")
    parser.add_argument(
        "--runs-meta", required=True, help="JSON: run -> {method, rank, targets, lambda[, source, main]}"
    )
    parser.add_argument(
        "--expected",
        required=True,
        help="expected.json of the describe_grid rule: one {model, run, epoch, benchmarks} object per checkpoint"
        " the config evaluates (schemas/records/expected.schema.yaml)",
    )
    parser.add_argument(
        "--benchmarks", required=True, help="JSON list of benchmarks {name, label, kind}, display order"
    )
    parser.add_argument("--out-csv", required=True, help="results table (CSV)")
    parser.add_argument("--out-md", required=True, help="results table (Markdown)")
    parser.add_argument("--out-missing", required=True, help="text list of expected checkpoints without scores")
    parser.add_argument("--out-agreement", required=True, help="judge agreement table (CSV)")
    parser.add_argument(
        "--bootstrap",
        type=Bootstrap.from_json,
        required=True,
        help="JSON of safelora.settings.Bootstrap: n (resamples), seed, level (of the intervals)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safelora.io import atomic_write_text
    from safelora.report import aggregate

    files = aggregate.read_score_files(args.scores)
    scores = aggregate.scores_frame(files)
    expected = aggregate.load_expected(args.expected)
    meta = aggregate.load_runs_meta(args.runs_meta)
    benchmarks = aggregate.Benchmarks.load(args.benchmarks)
    table = aggregate.results_table(
        scores,
        expected,
        meta,
        benchmarks,
        n_boot=args.bootstrap.n,
        seed=args.bootstrap.seed,
        level=args.bootstrap.level,
    )
    missing = aggregate.missing_report(scores, expected, benchmarks)
    aggregate.write_csv(table, args.out_csv)
    atomic_write_text(args.out_md, aggregate.to_markdown(table, benchmarks))
    atomic_write_text(args.out_missing, aggregate.missing_text(missing))
    aggregate.write_csv(aggregate.agreement_frame(files), args.out_agreement)
    print(f"{len(table)} checkpoints, {len(missing)} incomplete; wrote {args.out_csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
