#!/usr/bin/env python3
"""Build the response viewer: HTML pages of every checkpoint's responses and verdicts (safelora.report.viewer)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--results", required=True, help="the experiment's folder, results/<experiment> (docs/design.md)"
    )
    parser.add_argument(
        "--expected",
        required=True,
        help="expected.json of the describe_grid rule: the checkpoints and their benchmarks",
    )
    parser.add_argument(
        "--verdict-stems",
        required=True,
        help='JSON: benchmark -> the names of its verdict files, e.g. {"strongreject": ["llama_guard", "refusal_match"]}',
    )
    parser.add_argument(
        "--runs-meta", required=True, help="runs_meta.json of the describe_grid rule: the runs, in column order"
    )
    parser.add_argument(
        "--benchmarks", required=True, help="benchmarks.json of the describe_grid rule: labels, page order"
    )
    parser.add_argument("--out", required=True, help="folder of pages (replaced): index.html, <model>/<benchmark>/...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safelora.io import read_record
    from safelora.report.aggregate import Benchmarks, load_expected
    from safelora.report.viewer import build_viewer, collect_sources

    runs = list(read_record(args.runs_meta, "runs_meta"))
    stems = json.loads(args.verdict_stems)
    benchmarks = Benchmarks.load(args.benchmarks)
    sources = collect_sources(Path(args.results), load_expected(args.expected), stems, benchmarks, runs)
    for page in build_viewer(sources, args.out):
        flagged = ", ".join(f"{flag} {count}" for flag, count in page.flagged.items())
        print(f"{page.folder}: {page.rows} rows x {page.checkpoints} checkpoints, {len(page.grids)} grid page(s);"
              f" rows flagged: {flagged}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
