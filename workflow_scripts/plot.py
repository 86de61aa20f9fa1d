#!/usr/bin/env python3
"""Draw one figure (Figures 1-7, LoRA target modules and layer ranges, over-refusal, judge agreement) from the aggregated tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from safelora import registry

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--figure", required=True, choices=list(registry.FIGURES))
    parser.add_argument(
        "--table", help="results table CSV (fig2, fig3, fig5, fig6, fig7, modules, layers, overrefusal)"
    )
    parser.add_argument("--agreement", help="judge-agreement CSV (agreement)")
    parser.add_argument("--weights", nargs="*", default=[], help="weight-analysis CSVs (fig1, fig4)")
    parser.add_argument(
        "--train-manifests", nargs="*", default=[], help="training manifests, naming their logs (training_curves)"
    )
    parser.add_argument("--runs-meta", help="runs metadata JSON (needed by fig1, fig4; the table carries it otherwise)")
    parser.add_argument(
        "--benchmarks", required=True, help="JSON list of benchmarks {name, label, kind} (describe_grid)"
    )
    parser.add_argument("--out", required=True, help="output PNG")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pandas as pd

    from safelora import registry
    from safelora.report import aggregate, figures

    reads = registry.FIGURES[args.figure].reads
    if reads == "weights":
        if not args.runs_meta:
            print(f"{args.figure} needs --runs-meta", file=sys.stderr)
            return 2
        data = aggregate.load_weight_tables(args.weights, aggregate.load_runs_meta(args.runs_meta))
    elif reads == "training_logs":
        data = figures.load_training_logs(args.train_manifests)
    elif reads == "agreement":
        if not args.agreement:
            print(f"{args.figure} needs --agreement", file=sys.stderr)
            return 2
        data = pd.read_csv(args.agreement)
    else:
        if not args.table:
            print(f"{args.figure} needs --table", file=sys.stderr)
            return 2
        data = aggregate.read_results_table(args.table)
    figures.FIGURES[args.figure](data, aggregate.Benchmarks.load(args.benchmarks), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
