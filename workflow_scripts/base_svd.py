#!/usr/bin/env python3
"""Cache the top-k SVD of every decoder-layer weight of a base model in one safetensors file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True, help="base model: a local checkpoint folder or a hub id")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--k", type=int, required=True, help="singular triplets kept per weight (config analysis.svd_rank)")
    p.add_argument(
        "--modules",
        nargs="+",
        required=True,
        help="module name suffixes, e.g. q_proj k_proj v_proj o_proj gate_proj up_proj down_proj (config analysis.modules)",
    )
    p.add_argument("--oversample", type=int, default=64, help="extra subspace columns (default 64)")
    p.add_argument(
        "--res-tol", type=float, default=1e-2, help="accuracy check: max_i ||W v_i - s_i u_i|| / s_1 (default 1e-2)"
    )
    p.add_argument("--device", required=True, help="torch device for the SVDs: cpu or cuda")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from safelora.training.models import local_model_dir
    from safelora.weights import compute_base_svd

    residuals = compute_base_svd(
        local_model_dir(args.base),
        args.out,
        k=args.k,
        modules=args.modules,
        oversample=args.oversample,
        res_tol=args.res_tol,
        device=args.device,
    )
    print(f"{len(residuals)} weights, max residual {max(residuals.values()):.2e} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
