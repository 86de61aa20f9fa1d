#!/usr/bin/env python3
"""Cost of the orthogonality regularizer next to a plain LoRA step on 7B- and 14B-shaped MLP blocks.

For each shape, one Qwen2 MLP block (gate/up/down, float32, CPU) with LoRA r=4 on all three
projections runs forward + backward on a token batch, with and without the Section 5.2 penalty
(mode 'both', k = 64). Printed: step times (min over repetitions, and median), their ratio
(goal <= 1.1), the penalty's own forward + backward time as 1 + penalty/plain step (the robust
estimate of the ratio on a busy machine), and the one-off SVD precompute. Then the randomized SVD's accuracy on a
down-scaled matrix where the exact SVD is affordable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

SHAPES = {"7B (R1-Distill-Qwen-7B)": (3584, 18944), "14B (R1-Distill-Qwen-14B)": (5120, 13824)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 x 128 tokens and 2 timed steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (at most 2 here)")
    parser.add_argument("--rank", type=int, default=64, help="k of the rank-k approximation of W_I")
    return parser.parse_args()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def lora_mlp(hidden: int, intermediate: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    mlp = Qwen2MLP(Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, hidden_act="silu"))
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.02)
    model = get_peft_model(mlp, LoraConfig(r=4, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():  # a mid-training update: B != 0 (cost is the same, the ratio is finite)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    return model


def bench_shape(label: str, hidden: int, intermediate: int, tokens: tuple[int, int], reps: int, rank: int) -> None:
    import torch

    from safelora.training.ortho_reg import OrthoRegConfig, OrthoRegularizer

    torch.manual_seed(0)
    model = lora_mlp(hidden, intermediate)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(*tokens, hidden)

    start = time.perf_counter()
    reg = OrthoRegularizer(model, OrthoRegConfig(mode="both", rank=rank))
    precompute = time.perf_counter() - start

    def step(with_penalty: bool) -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(x).pow(2).mean()
        if with_penalty:
            loss = loss + reg.penalty()
        loss.backward()
        opt.step()

    def penalty_only() -> None:
        reg.penalty().backward()

    step(False), step(True)  # warm-up
    plain, regularized = [], []
    for _ in range(reps):  # interleaved so drift affects both alike
        plain.append(timed(lambda: step(False)))
        regularized.append(timed(lambda: step(True)))
    alone = [timed(penalty_only) for _ in range(5 * reps)]
    # Minimum over repetitions: the cost without interference from other processes on the machine.
    p, r, a = min(plain), min(regularized), min(alone)
    print(
        f"{label}: hidden {hidden}, intermediate {intermediate}, {tokens[0]}x{tokens[1]} tokens, "
        f"LoRA r=4 on gate/up/down, k={rank}, mode=both"
    )
    print(f"  plain LoRA step        {p * 1e3:9.1f} ms (min of {reps}; median {statistics.median(plain) * 1e3:.1f})")
    print(
        f"  step + regularizer     {r * 1e3:9.1f} ms (min of {reps}; median "
        f"{statistics.median(regularized) * 1e3:.1f})   ratio {r / p:.3f}"
    )
    print(f"  penalty fwd+bwd alone  {a * 1e3:9.2f} ms (min of {5 * reps})   1 + penalty/plain = {1 + a / p:.4f}")
    print(f"  one-off SVD precompute {precompute:9.2f} s  (3 matrices, randomized, 4 power iterations)")


def svd_accuracy(rank: int) -> None:
    import torch

    from safelora.training.ortho_reg import ortho_penalty_factored
    from safelora.weights import truncated_svd

    # A 7B MLP matrix scaled down 4x per side: Gaussian bulk (flat, Marchenko-Pastur spectrum,
    # the hard case for randomized SVD) plus 32 stronger directions, like trained weights.
    out_f, in_f = 18944 // 4, 3584 // 4
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(out_f, in_f, generator=g) * 0.02
    spikes = torch.randn(out_f, 32, generator=g) @ torch.randn(32, in_f, generator=g) * 0.02 / 8
    w = bulk + spikes
    u_ex, s_ex, vh_ex = torch.linalg.svd(w, full_matrices=False)
    exact = (u_ex[:, :rank], s_ex[:rank], vh_ex[:rank].T)
    w_norm = torch.linalg.matrix_norm(w)
    a = torch.randn(4, in_f, generator=g) / in_f**0.5
    b = torch.randn(out_f, 4, generator=g)
    print(f"randomized SVD accuracy on a {out_f}x{in_f} matrix (Gaussian bulk + 32 spikes), k={rank}:")
    for iters in (0, 2, 4):
        f, _ = truncated_svd(w, rank, oversample=10, power_iters=iters)
        approx = (f.U, f.S, f.V)
        sv_err = ((approx[1] - exact[1]).abs() / exact[1]).max().item()
        residual = torch.linalg.matrix_norm(w - approx[0] @ torch.diag(approx[1]) @ approx[2].T)
        penalties = [ortho_penalty_factored(a, b, 4.0, *f, w_norm, "both").item() for f in (approx, exact)]
        print(
            f"  power_iters={iters}: max rel. error of top-{rank} singular values {sv_err:.2e}; "
            f"residual / optimal {residual / s_ex[rank:].norm():.5f}; "
            f"penalty {penalties[0]:.5e} vs exact {penalties[1]:.5e} "
            f"(rel. diff {abs(penalties[0] - penalties[1]) / penalties[1]:.2e})"
        )


def main() -> int:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    tokens, reps = ((2, 128), 2) if args.quick else ((2, 512), 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    for label, (hidden, intermediate) in SHAPES.items():
        bench_shape(label, hidden, intermediate, tokens, reps, args.rank)
    svd_accuracy(args.rank)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
