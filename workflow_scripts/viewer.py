#!/usr/bin/env python3
"""Build the response viewer: HTML pages of every checkpoint's responses and verdicts (safelora.report.viewer)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--generations",
        nargs="+",
        type=Path,
        required=True,
        help="generations/{model}/{run}/epoch-{e}/{benchmark}.jsonl files",
    )
    parser.add_argument(
        "--verdicts",
        nargs="*",
        type=Path,
        required=True,
        help="verdicts/{model}/{run}/epoch-{e}/{benchmark}/{grader}.jsonl files",
    )
    parser.add_argument("--items", nargs="+", type=Path, required=True, help="data/bench/{benchmark}.jsonl files")
    parser.add_argument(
        "--runs-meta", required=True, help="runs_meta.json of the describe_grid rule: the runs, in column order"
    )
    parser.add_argument(
        "--benchmarks", required=True, help="benchmarks.json of the describe_grid rule: labels, page order"
    )
    parser.add_argument(
        "--out", required=True, help="folder of pages (replaced): index.html, <model>/<benchmark>.html, ..."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safelora.io import read_record
    from safelora.report.aggregate import Benchmarks
    from safelora.report.viewer import build_viewer, collect_sources

    runs = list(read_record(args.runs_meta, "runs_meta"))
    sources = collect_sources(args.generations, args.verdicts, args.items, Benchmarks.load(args.benchmarks), runs)
    for page in build_viewer(sources, args.out):
        flagged = ", ".join(f"{flag} {count}" for flag, count in page.flagged.items())
        print(f"{page.path}: {page.rows} rows x {page.checkpoints} checkpoints; flagged rows: {flagged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
