#!/usr/bin/env python3
"""Run the CPU demo end to end and print its results table, wall time and peak memory.

This is what `make demo` runs: Snakemake with profiles/local on config/demo.yaml, then the report
(results/demo/report.zip: unzip it and open report/report.html). Peak RSS is the largest single process (getrusage of the children) and, per rule, the
largest `max_rss` Snakemake's benchmark files recorded.
"""

import argparse
import csv
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str) -> None:
    cmd = ["snakemake", "--profile", "profiles/local", *args, "--configfile", "config/demo.yaml"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def rule_peaks(folder: Path) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for path in folder.rglob("*.tsv"):
        rule = path.relative_to(folder).parts[0]
        with open(path, encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row.get("max_rss") not in (None, "", "NA", "-"):
                    peaks[rule] = max(peaks.get(rule, 0.0), float(row["max_rss"]))
    return peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cores", default="2")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    snakemake("--cores", args.cores)
    wall = time.perf_counter() - start
    snakemake("--report", "results/demo/report.zip")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("\n== Results (results/demo/aggregate/results.md) ==")
    print((ROOT / "results/demo/aggregate/results.md").read_text())
    missing = (ROOT / "results/demo/aggregate/missing.txt").read_text().strip()
    print(f"missing: {missing or 'nothing'}")
    print("figures: results/demo/figures/*.png; report: results/demo/report.zip (unzip, open report/report.html)")
    print("\n== Cost, measured against estimated (results/demo/aggregate/cost.md) ==")
    print((ROOT / "results/demo/aggregate/cost.md").read_text())
    print(f"\ndemo wall time: {wall:.0f} s on {args.cores} cores")
    print(f"peak RSS of a single process: {peak_mb:.0f} MB")
    for rule, mb in sorted(rule_peaks(ROOT / "results/demo/benchmarks").items()):
        print(f"  peak RSS {rule:<10} {mb:8.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
