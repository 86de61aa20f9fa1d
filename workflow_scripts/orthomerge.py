#!/usr/bin/env python3
"""OrthoMerge a PEFT LoRA adapter against the base SVD cache and write it as a new adapter folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from safelora.settings import OrthoMerge

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--adapter", required=True, help="source PEFT LoRA adapter folder")
    p.add_argument("--svd", required=True, help="the base model's SVD cache (base_svd.py)")
    p.add_argument(
        "--settings",
        type=OrthoMerge.from_json,
        required=True,
        help="JSON of safelora.settings.OrthoMerge: variant (col: (I-UU^T) dW; both: (I-UU^T) dW (I-VV^T)),"
        " lam (scale of the projected update), k (singular vectors projected out)",
    )
    p.add_argument("--out", required=True, help="output adapter folder (replaced atomically)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safelora.training.orthomerge import orthomerge_adapter
    from safelora.training.sft import require_checkpoint

    require_checkpoint(args.adapter)

    om = args.settings
    orthomerge_adapter(args.adapter, args.svd, args.out, variant=om.variant, lam=om.lam, k=om.k)
    print(f"OrthoMerge-{om.variant} lambda={om.lam} k={om.k} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
