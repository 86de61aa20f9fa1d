"""Orthogonality regularization of LoRA updates against the frozen weights (paper Section 5.2).

For every LoRA-wrapped linear layer with frozen weight W_I (out x in) and update
ΔW = s·B·A (B: out x r, A: r x in, s = PEFT's `scaling`), the paper's penalty (`formula="paper"`) is

    col:  β·(‖W_Iᵀ ΔW‖_F / (‖W_I‖_F ‖ΔW‖_F))²
    both: col + β·(‖W_I ΔWᵀ‖_F / (‖W_I‖_F ‖ΔW‖_F))²

with W_I replaced by its rank-k approximation U_k S_k V_kᵀ in the numerators. The paper code's
penalty (`formula="span"`, its models.py) is β·‖P_c ΔW‖_F² (col) or β·‖P_c ΔW P_r‖_F² (both, one
two-sided term) with ΔW = B·A (no LoRA scaling), the span P_c = S_k U_kᵀ, P_r = V_k S_k
(`weighted`) or U_kᵀ, V_k; `normalize` divides the penalty by ‖ΔW‖_F² and a weighted span by its
Frobenius norm ‖S_k‖ = ‖W_k‖_F (the code leaves U_kᵀ and V_k as they are). Layers are summed (default, as the code) or averaged. k is the same for
every layer (`k_schedule="fixed"`) or evolves as in the code's loop (`"paper_code"`: the first
adapted module gets k, every later one min(k, r); see `paper_code_ranks`). Everything is computed
from k x r and r x r matrices; no out x in (or larger) product is ever formed. See
docs/ortho_reg.md for the derivation and choices.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn
from trl import SFTTrainer

from safelora.weights import SVDCache, truncated_svd

Mode = Literal["col", "both"]
Reduction = Literal["mean", "sum"]
Formula = Literal["paper", "span"]
KSchedule = Literal["fixed", "paper_code"]

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class OrthoRegConfig:
    """Settings of the regularizer.

    `rank` is k of the rank-k approximation of W_I. `svd_cache` is a safetensors file with
    `{param}.U` (out x k'), `{param}.S` (k'), `{param}.V` (in x k') for k' >= rank; without it the
    truncated SVD is computed from the frozen weights with `oversample` extra columns and
    `power_iters` power iterations, seeded by `seed`. `eps` is added to ‖ΔW‖_F² so the ratio is
    0 (with a zero gradient) at LoRA's initialization, where B = 0. `formula`, `weighted` and
    `normalize` choose between the paper's penalty and the paper code's (see the module doc);
    `weighted` and `normalize` apply to `formula="span"` only. `k_schedule` says which k each layer
    gets: `rank` for all (`"fixed"`), or the paper code's (`"paper_code"`, `paper_code_ranks`).
    """

    mode: Mode = "both"
    beta: float = 1.0
    rank: int = 64
    k_schedule: KSchedule = "fixed"
    svd_cache: str | None = None
    reduction: Reduction = "sum"
    formula: Formula = "paper"
    weighted: bool = True
    normalize: bool = False
    eps: float = 1e-12
    oversample: int = 10
    power_iters: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}, got {self.mode!r}")
        if self.reduction not in get_args(Reduction):
            raise ValueError(f"reduction must be one of {get_args(Reduction)}, got {self.reduction!r}")
        if self.formula not in get_args(Formula):
            raise ValueError(f"formula must be one of {get_args(Formula)}, got {self.formula!r}")
        if self.k_schedule not in get_args(KSchedule):
            raise ValueError(f"k_schedule must be one of {get_args(KSchedule)}, got {self.k_schedule!r}")
        if self.formula == "paper" and (not self.weighted or self.normalize):
            raise ValueError("weighted=False and normalize=True apply to formula='span' only")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.beta < 0 or self.eps <= 0 or self.oversample < 0 or self.power_iters < 0:
            raise ValueError("beta, oversample and power_iters must be >= 0, eps must be > 0")


def _sum_last2(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1))


def ortho_penalty_factored(
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float | torch.Tensor,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
    w_norm: float | torch.Tensor,
    mode: Mode,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Unweighted penalty (β = 1) of ΔW = scale·B·A against W_I ≈ U diag(S) Vᵀ, from factors.

    Shapes (leading batch dimensions `...` are allowed and broadcast, one penalty per entry):
    A (..., r, in), B (..., out, r), U (..., out, k), S (..., k), V (..., in, k);
    `scale` and `w_norm` (the Frobenius norm of W_I) are scalars or shaped (...). U and V must have
    orthonormal columns. Computed in float32 (float64 if A is float64). Returns a tensor shaped
    (...), differentiable w.r.t. A and B.

    ‖W_Iᵀ ΔW‖² = s²‖S UᵀB A‖² = s²·tr(MᵀM·AAᵀ) with M = S·UᵀB (k x r);
    ‖W_I ΔWᵀ‖² = s²‖S VᵀAᵀ Bᵀ‖² = s²·tr(NᵀN·BᵀB) with N = S·VᵀAᵀ (k x r);
    ‖ΔW‖² = s²·tr(BᵀB·AAᵀ). Traces of products of symmetric matrices are elementwise sums.
    """
    if mode not in get_args(Mode):
        raise ValueError(f"mode must be one of {get_args(Mode)}, got {mode!r}")
    dtype = torch.promote_types(A.dtype, torch.float32)  # bf16 factors are computed in float32
    A, B, U, S, V = (t.to(dtype) for t in (A, B, U, S, V))
    scale2 = torch.as_tensor(scale, dtype=dtype, device=A.device) ** 2
    w_norm2 = torch.as_tensor(w_norm, dtype=dtype, device=A.device) ** 2
    gram_a = A @ A.mT  # (..., r, r)
    gram_b = B.mT @ B  # (..., r, r)
    delta2 = scale2 * _sum_last2(gram_a * gram_b)
    denominator = w_norm2 * (delta2 + eps)

    m = S.unsqueeze(-1) * (U.mT @ B)  # (..., k, r)
    col2 = scale2 * _sum_last2((m.mT @ m) * gram_a)
    penalty = col2.clamp(min=0) / denominator
    if mode == "both":
        n = S.unsqueeze(-1) * (V.mT @ A.mT)  # (..., k, r)
        row2 = scale2 * _sum_last2((n.mT @ n) * gram_b)
        penalty = penalty + row2.clamp(min=0) / denominator
    return penalty


def span_penalty_factored(
    A: torch.Tensor,
    B: torch.Tensor,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
    mode: Mode,
    weighted: bool = True,
    normalize: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    """The paper code's penalty (β = 1) of ΔW = B·A, from factors; shapes as `ortho_penalty_factored`.

    With D = diag(S) (`weighted`) or the identity, P_c = D Uᵀ and P_r = V D:
    col: ‖P_c ΔW‖² = tr(MᵀM·AAᵀ) with M = D·UᵀB (k x r);
    both: ‖P_c ΔW P_r‖² = ‖M Nᵀ‖² = tr(MᵀM·NᵀN) with N = D·VᵀAᵀ (k x r).
    `normalize` divides the penalty by ‖ΔW‖² + eps and, when `weighted`, each span by its Frobenius
    norm ‖S‖ (models.py normalizes only the weighted spans: `uniform` spans U_kᵀ, V_k stay as they are).
    """
    if mode not in get_args(Mode):
        raise ValueError(f"mode must be one of {get_args(Mode)}, got {mode!r}")
    dtype = torch.promote_types(A.dtype, torch.float32)
    A, B, U, S, V = (t.to(dtype) for t in (A, B, U, S, V))
    d = S if weighted else torch.ones_like(S)
    gram_a = A @ A.mT
    m = d.unsqueeze(-1) * (U.mT @ B)  # (..., k, r)
    gram_m = m.mT @ m
    if mode == "col":
        penalty = _sum_last2(gram_m * gram_a)
    else:
        n = d.unsqueeze(-1) * (V.mT @ A.mT)  # (..., k, r)
        penalty = _sum_last2(gram_m * (n.mT @ n))
    penalty = penalty.clamp(min=0)
    if normalize:
        delta2 = _sum_last2(gram_a * (B.mT @ B))
        penalty = penalty / (delta2 + eps)
        if weighted:
            penalty = penalty / (S * S).sum(-1) ** (1 if mode == "col" else 2)
    return penalty


def base_weight_name(module_name: str) -> str:
    """`base_model.model.model.layers.0.mlp.gate_proj` -> `model.layers.0.mlp.gate_proj.weight`."""
    return f"{module_name.removeprefix(PEFT_PREFIX)}.weight"


def _adapter_of(layer: LoraLinear, name: str) -> str:
    active = list(layer.active_adapters)
    if len(active) != 1:
        raise ValueError(f"{name}: expected exactly one active LoRA adapter, got {active}")
    adapter = active[0]
    if layer.use_dora.get(adapter, False):
        raise ValueError(f"{name}: DoRA adapters are not supported (ΔW is not s·B·A)")
    if getattr(layer, "fan_in_fan_out", False):
        raise ValueError(f"{name}: fan_in_fan_out (Conv1D) layers are not supported")
    return adapter


def find_lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """All LoRA-wrapped linear layers of a PEFT model, as (base weight name, layer)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if not isinstance(module, LoraLinear):
                raise TypeError(f"{name}: only LoRA on nn.Linear is supported, got {type(module).__name__}")
            found.append((base_weight_name(name), module))
    if not found:
        raise ValueError("the model has no LoRA layers")
    return found


def paper_code_ranks(shapes: list[tuple[int, int, int]], k: int) -> list[int]:
    """k of each adapted layer, given its (out, in, r) in module order, as the paper code leaves it.

    models.py:21-28 loops over `named_modules()` and sets `k = min(k, min(weight.shape))` at every
    module with a `weight`, so the loop's k carries over from module to module. Each PEFT LoRA layer
    is met first (its `weight` is the base weight, out x in: its span is built with this k), then its
    `base_layer`, `lora_A.default` (r x in) and `lora_B.default` (out x r): from the first adapted
    layer's `lora_A` on, k is at most r. So the first layer gets min(k, out, in), every later one
    min(k, r, ...).
    """
    ranks = []
    for out_f, in_f, r in shapes:
        k = min(k, out_f, in_f)
        ranks.append(k)
        k = min(k, r)  # its lora_A (r x in) and lora_B (out x r)
    return ranks


def _check_materialized(t: torch.Tensor, name: str) -> None:
    # DeepSpeed ZeRO-3 leaves a 0-element placeholder outside the layer's own forward.
    if t.numel() == 0 or hasattr(t, "ds_id"):
        raise RuntimeError(
            f"{name}: weight is partitioned (DeepSpeed ZeRO-3); the regularizer needs whole LoRA "
            "factors and base weights (use DDP or ZeRO stage <= 2 for LoRA runs)"
        )


@dataclass
class _Group:
    """Layers with equal (out, in, r, k): their factors are stacked so one batched call covers them."""

    names: list[str]
    layers: list[LoraLinear]
    adapters: list[str]
    U: torch.Tensor  # (G, out, k)
    S: torch.Tensor  # (G, k)
    V: torch.Tensor  # (G, in, k)
    w_norm: torch.Tensor  # (G,)
    scale: torch.Tensor  # (G,)

    def to(self, device: torch.device) -> None:
        self.U, self.S, self.V = self.U.to(device), self.S.to(device), self.V.to(device)
        self.w_norm, self.scale = self.w_norm.to(device), self.scale.to(device)


class OrthoRegularizer:
    """The Section 5.2 penalty over all LoRA layers of a PEFT model.

    The rank-k SVD and ‖W_I‖_F of each frozen weight are computed (or read from
    `config.svd_cache`) once here and kept as float32 tensors beside the layer's weights; they
    are not registered in the model, so they never enter its state dict or checkpoints.
    """

    def __init__(self, model: nn.Module, config: OrthoRegConfig) -> None:
        self.config = config
        layers = find_lora_layers(model)
        for name, layer in layers:
            _check_materialized(layer.base_layer.weight, name)
        cache = SVDCache(config.svd_cache) if config.svd_cache is not None else None
        if cache is not None:
            cache.require([n for n, _ in layers])
        adapters = [_adapter_of(layer, name) for name, layer in layers]
        shapes = [(*layer.base_layer.weight.shape, layer.r[a]) for (_, layer), a in zip(layers, adapters, strict=True)]
        if config.k_schedule == "paper_code":
            ranks = paper_code_ranks(shapes, config.rank)
        else:
            ranks = [min(config.rank, out_f, in_f) for out_f, in_f, _ in shapes]
        self.ranks = {name: k for (name, _), k in zip(layers, ranks, strict=True)}
        by_shape: dict[tuple[Any, ...], list[tuple[str, LoraLinear, str]]] = {}
        for (name, layer), adapter, shape, k in zip(layers, adapters, shapes, ranks, strict=True):
            # per device too: a model split over GPUs (device_map="auto") cannot stack across them
            key = (*shape, k, str(layer.base_layer.weight.device))
            by_shape.setdefault(key, []).append((name, layer, adapter))
        self.groups = [self._build_group(members, cache) for members in by_shape.values()]
        self.names = [n for g in self.groups for n in g.names]

    def _build_group(
        self,
        members: list[tuple[str, LoraLinear, str]],
        cache: SVDCache | None,
    ) -> _Group:
        cfg = self.config
        factors, norms = [], []
        for name, layer, _ in members:
            weight = layer.base_layer.weight
            k = self.ranks[name]
            if cache is not None:
                f = cache.get(name, k)
                u, s, v = f.U.float(), f.S.float(), f.V.float()
                if u.shape[0] != weight.shape[0] or v.shape[0] != weight.shape[1]:
                    raise ValueError(
                        f"{name}: cached SVD shapes {tuple(u.shape)}, {tuple(v.shape)} "
                        f"do not match weight {tuple(weight.shape)}"
                    )
            else:
                f, _ = truncated_svd(weight, k, oversample=cfg.oversample, power_iters=cfg.power_iters, seed=cfg.seed)
                u, s, v = f.U, f.S, f.V
            device = weight.device
            factors.append((u.to(device), s.to(device), v.to(device)))
            norms.append(torch.linalg.matrix_norm(weight.detach().float()))
        device = members[0][1].base_layer.weight.device
        return _Group(
            names=[n for n, _, _ in members],
            layers=[layer for _, layer, _ in members],
            adapters=[a for _, _, a in members],
            U=torch.stack([f[0] for f in factors]),
            S=torch.stack([f[1] for f in factors]),
            V=torch.stack([f[2] for f in factors]),
            w_norm=torch.stack(norms).to(device),
            scale=torch.tensor([float(layer.scaling[a]) for _, layer, a in members], device=device),
        )

    def per_layer(self) -> dict[str, torch.Tensor]:
        """The β-weighted penalty of each layer, keyed by base weight name."""
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            out.update(zip(group.names, self._group_penalty(group).unbind(0), strict=True))
        return out

    def penalty(self) -> torch.Tensor:
        """β·penalty reduced over layers (config.reduction); differentiable w.r.t. the LoRA factors."""
        sums = [self._group_penalty(g).sum() for g in self.groups]
        total = torch.stack([t.to(sums[0].device) for t in sums]).sum()
        return total / len(self.names) if self.config.reduction == "mean" else total

    def _group_penalty(self, group: _Group) -> torch.Tensor:
        a_list = [layer.lora_A[ad].weight for layer, ad in zip(group.layers, group.adapters, strict=True)]
        b_list = [layer.lora_B[ad].weight for layer, ad in zip(group.layers, group.adapters, strict=True)]
        _check_materialized(a_list[0], group.names[0])  # ZeRO-3 partitions all or nothing
        a, b = torch.stack(a_list), torch.stack(b_list)
        if group.U.device != a.device:
            group.to(a.device)
        cfg = self.config
        if cfg.formula == "span":
            raw = span_penalty_factored(a, b, group.U, group.S, group.V, cfg.mode, cfg.weighted, cfg.normalize, cfg.eps)
        else:
            raw = ortho_penalty_factored(a, b, group.scale, group.U, group.S, group.V, group.w_norm, cfg.mode, cfg.eps)
        return self.config.beta * raw


class OrthoSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose training loss adds the orthogonality penalty, logged as `ortho_penalty`.

    The regularizer is built from the trainer's (PEFT) model after `SFTTrainer.__init__`, so the
    model may be passed wrapped already or through `peft_config`. Evaluation losses stay the plain
    language-model loss. The penalty enters each optimizer step once, whatever the gradient
    accumulation: per micro-batch it is divided exactly as the LM loss is.
    """

    def __init__(self, *args: Any, ortho: OrthoRegConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.regularizer = OrthoRegularizer(self.model, ortho)
        ks = Counter(self.regularizer.ranks.values())
        print(f"orthogonality regularizer, k per LoRA layer: {dict(sorted(ks.items()))} (k: layers)", flush=True)

    def _loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        # The rule `Trainer.training_step` (transformers 5.19) uses to decide whether it divides
        # the loss by the accumulation steps; the penalty must be divided iff it does not.
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not self.model.training:
            return result
        loss, outputs = result if return_outputs else (result, None)
        penalty = self.regularizer.penalty()
        self._metrics["train"]["ortho_penalty"].append(penalty.detach().item())
        if self._loss_is_scaled_for_ga(num_items_in_batch):
            penalty = penalty / self.current_gradient_accumulation_steps
        loss = loss + penalty.to(device=loss.device, dtype=loss.dtype)
        return (loss, outputs) if return_outputs else loss
