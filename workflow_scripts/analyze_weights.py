#!/usr/bin/env python3
"""Stable rank and Section 5.1 alignment metrics of a checkpoint's ΔW, one CSV row per (layer, module)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True, help="base model: a local checkpoint folder or a hub id")
    p.add_argument(
        "--checkpoint", required=True, help="fine-tuned checkpoint folder or PEFT LoRA adapter folder (auto-detected)"
    )
    p.add_argument("--svd", required=True, help="the base model's SVD cache (base_svd.py)")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--norm", choices=["fro", "spectral"], required=True, help="matrix norm (config analysis.norm)")
    p.add_argument(
        "--top", type=int, required=True, help="singular vectors in metrics (2) and (4) (config analysis.top_k)"
    )
    p.add_argument(
        "--rtol", type=float, default=1e-3, help="relative tolerance of power-iteration spectral norms (default 1e-3)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from safelora.training.models import local_model_dir
    from safelora.training.sft import require_checkpoint
    from safelora.weights import analyze_checkpoint, write_analysis_csv

    require_checkpoint(args.checkpoint)

    rows = analyze_checkpoint(
        local_model_dir(args.base), args.checkpoint, args.svd, norm=args.norm, top=args.top, rtol=args.rtol
    )
    write_analysis_csv(rows, args.out)
    print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
