#!/usr/bin/env python3
"""Measured against estimated, per rule: wall time x GPUs from the jobs' `benchmark:` files beside the
GPU-hour estimate of the same jobs (safelora.cost, safelora.gpu_hours)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", nargs="*", required=True, help="benchmark TSVs (--benchmark-extended)")
    parser.add_argument("--config", required=True, help="the workflow's config as JSON (what the estimate reads)")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    args = parser.parse_args()

    from safelora.cost import write_cost

    print(write_cost(args.benchmarks, json.loads(args.config), args.out_csv, args.out_md), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
