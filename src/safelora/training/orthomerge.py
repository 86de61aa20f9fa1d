"""OrthoMerge (Section 5.2): project a LoRA update off the base weights' top singular subspaces.

ΔW ← λ (I − U_kU_kᵀ) ΔW (I − V_kV_kᵀ) ('both') or λ (I − U_kU_kᵀ) ΔW ('col'), with U_k, V_k the
top-k left/right singular vectors of the base weight. For ΔW = s·B·A the projections act on the
factors, B' = λ(I − U_kU_kᵀ)B and A' = A(I − V_kV_kᵀ), so the result is an ordinary PEFT adapter
of the same rank and config that PEFT or vLLM load like any other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from safelora.io import atomic_dir, atomic_write_json
from safelora.weights import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SVDCache, SVDFactors, lora_modules

Variant = Literal["col", "both"]
VARIANTS: tuple[str, ...] = ("col", "both")


def project_factors(
    b: torch.Tensor, a: torch.Tensor, svd: SVDFactors, variant: Variant, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B', A') with B'A' = λ (I − UUᵀ) B A [(I − VVᵀ) for 'both'], computed in float32.

    B is (out, r), A is (r, in), U (out, k), V (in, k). The results keep the inputs' dtypes.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    u, v = svd.U.float(), svd.V.float()
    b32, a32 = b.float(), a.float()
    b_new = lam * (b32 - u @ (u.T @ b32))
    a_new = a32 - (a32 @ v) @ v.T if variant == "both" else a32
    return b_new.to(b.dtype), a_new.to(a.dtype)


def orthomerge_adapter(
    adapter_dir: str | os.PathLike[str],
    svd_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    variant: Variant,
    lam: float,
    k: int = 64,
) -> None:
    """Write the OrthoMerged copy of a PEFT LoRA adapter folder to `out_dir`, atomically.

    Every file of the adapter folder is copied unchanged (adapter_config.json included) except
    adapter_model.safetensors, whose lora_A/lora_B pairs are projected; other tensors (e.g.
    modules_to_save) are kept. `orthomerge.json` records the variant, λ, k and sources.
    """
    adapter_dir = Path(adapter_dir)
    cache = SVDCache(svd_path)
    if k > cache.k:
        raise ValueError(f"k={k} but {svd_path} holds only the top {cache.k} singular vectors")
    tensors = load_file(adapter_dir / ADAPTER_WEIGHTS)
    modules = lora_modules(list(tensors))
    if not modules:
        raise ValueError(f"{adapter_dir}: no lora_A/lora_B weights")
    for m in modules:
        svd = cache.get(m.param_name).top(k)
        tensors[m.b_key], tensors[m.a_key] = project_factors(tensors[m.b_key], tensors[m.a_key], svd, variant, lam)
    with atomic_dir(out_dir) as tmp:
        for item in adapter_dir.iterdir():
            if item.is_file() and item.name != ADAPTER_WEIGHTS:
                shutil.copy2(item, tmp / item.name)
        if not (tmp / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG}")
        save_file({key: t.contiguous() for key, t in tensors.items()}, tmp / ADAPTER_WEIGHTS, {"format": "pt"})
        atomic_write_json(
            tmp / "orthomerge.json",
            {"variant": variant, "lam": lam, "k": k, "source": str(adapter_dir), "svd": str(svd_path)},
        )
