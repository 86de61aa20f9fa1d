#!/usr/bin/env python3
"""Stable rank and truncated SVD of 7B/14B-shaped MLP matrices: safelora.weights vs full SVD.

Run with OMP_NUM_THREADS=2 (or fewer). Prints, per shape: time of torch.linalg.svdvals (all
singular values), of `stable_rank` (block power iteration, rtol 1e-3) and of
torch.svd_lowrank(q=8, niter=4) for reference, the speed-ups and the relative errors of the
stable rank; then the cached-SVD routine `truncated_svd` (k=64) with its residual and the
relative error of its 64 singular values.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from safelora.weights import stable_rank, truncated_svd

FULL_SHAPES = [("7B mlp", 3584, 18944), ("14B mlp", 5120, 13824)]
QUICK_SHAPES = [("quick", 512, 2048), ("quick", 768, 2048)]


def low_rank_plus_noise(m: int, n: int, seed: int, rank: int = 512) -> torch.Tensor:
    """Decaying spectrum s_i = (1 + i/10)^-1/2 over `rank` directions plus Gaussian noise of the same
    energy: stable rank about 80 (Figure 1's range) and a clustered top (s_2/s_1 = 0.95), which
    is what makes a few power iterations inaccurate."""
    g = torch.Generator().manual_seed(seed)
    rank = min(rank, m, n)
    s = (1 + torch.arange(rank, dtype=torch.float32) / 10) ** -0.5
    left = torch.randn(m, rank, generator=g) / m**0.5
    right = torch.randn(rank, n, generator=g) / n**0.5
    noise_std = (float((s**2).sum()) / (m * n)) ** 0.5  # noise carries about as much energy
    return (left * s) @ right + noise_std * torch.randn(m, n, generator=g)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    args = p.parse_args()
    logging.basicConfig(format="  %(message)s")
    logging.getLogger("safelora.weights").setLevel(logging.DEBUG)
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for label, m, n in QUICK_SHAPES if args.quick else FULL_SHAPES:
        w = low_rank_plus_noise(m, n, seed=m)
        fro2 = float(w.norm()) ** 2
        s_full, t_full = timed(lambda w=w: torch.linalg.svdvals(w))
        exact = fro2 / float(s_full[0]) ** 2
        ours, t_ours = timed(lambda w=w: stable_rank(w, rtol=1e-3))
        (_, s_low, _), t_low = timed(lambda w=w: torch.svd_lowrank(w, q=8, niter=4))
        lowrank = fro2 / float(s_low[0]) ** 2
        print(f"{label} {m}x{n}: exact stable rank {exact:.3f}")
        print(f"  full svdvals             {t_full:8.2f} s")
        print(
            f"  stable_rank (rtol 1e-3)  {t_ours:8.2f} s  speed-up {t_full / t_ours:6.1f}x  "
            f"rel. error {abs(ours - exact) / exact:.2e}"
        )
        print(
            f"  svd_lowrank(q=8,niter=4) {t_low:8.2f} s  speed-up {t_full / t_low:6.1f}x  "
            f"rel. error {abs(lowrank - exact) / exact:.2e}"
        )
        (f, residual), t_svd = timed(lambda w=w: truncated_svd(w, 64))
        s_err = float(((f.S - s_full[:64]).abs() / s_full[:64]).max())
        print(
            f"  truncated_svd k=64       {t_svd:8.2f} s  speed-up {t_full / t_svd:6.1f}x  "
            f"residual {residual:.2e}  max rel. error of S_1..64 {s_err:.2e}"
        )


if __name__ == "__main__":
    main()
