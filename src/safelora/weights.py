"""Weight-space analysis: stable rank of ΔW, the alignment metrics of Section 5.1, a cached base SVD.

Everything is read tensor by tensor from safetensors files, so memory stays near one weight
matrix (in float32) whatever the model size. A LoRA update ΔW = scale·B·A is kept in factored
form (`LowRank`) and never expanded to an (out, in) matrix. See docs/weights.md.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from safelora.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

Norm = Literal["fro", "spectral"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Matrices: dense tensors or a factored low-rank product


@dataclass(frozen=True)
class LowRank:
    """The matrix left @ right, never formed: left is (out, r), right is (r, in)."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def T(self) -> LowRank:  # noqa: N802 - mirrors torch.Tensor.T
        return LowRank(self.right.T, self.left.T)

    def core_svdvals(self) -> torch.Tensor:
        """Exact singular values of left @ right from the QR factors' small core."""
        r_left = torch.linalg.qr(self.left).R
        r_right = torch.linalg.qr(self.right.T).R
        return torch.linalg.svdvals(r_left @ r_right.T)


Matrix = torch.Tensor | LowRank


@dataclass(frozen=True)
class _Operator:
    """A matrix known only through products with it (X @ Q) and its transpose (Xᵀ @ Y)."""

    rows: int
    cols: int
    mm: Callable[[torch.Tensor], torch.Tensor]
    rmm: Callable[[torch.Tensor], torch.Tensor]

    @property
    def T(self) -> _Operator:  # noqa: N802
        return _Operator(self.cols, self.rows, self.rmm, self.mm)


def _dense_operator(x: torch.Tensor) -> _Operator:
    # (yᵀX)ᵀ rather than Xᵀy: BLAS is ~3x faster on a row-major X with a narrow y
    return _Operator(x.shape[0], x.shape[1], lambda q: x @ q, lambda y: (y.T @ x).T)


def spectral_norm(
    op: _Operator | torch.Tensor,
    *,
    rtol: float = 1e-3,
    max_iter: int = 1000,
    block: int = 8,
    seed: int = 0,
) -> float:
    """Largest singular value by block power (subspace) iteration with a convergence check.

    Iterates XᵀX on a random `block`-column subspace; the top Ritz value θ_k = σ_max(X Q_k)² rises
    monotonically to σ_max². It stops when the extrapolated remaining error of θ (last change
    divided by one minus the observed contraction ratio, an Aitken estimate) is at most rtol·θ,
    so `rtol` bounds the relative error of σ_max², i.e. of a stable rank. Raises if it has not
    converged within `max_iter` iterations rather than returning an unconverged value.
    """
    if isinstance(op, torch.Tensor):
        op = _dense_operator(op)
    if op.cols > op.rows:
        op = op.T  # same cost per step, smaller vectors and QR
    n = op.cols
    if n <= block:  # the subspace would be the whole space: exact
        return float(torch.linalg.svdvals(op.mm(torch.eye(n)))[0])
    generator = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, block, generator=generator)).Q
    prev_theta = prev_change = None
    for iteration in range(1, max_iter + 1):
        y = op.mm(q)
        theta = float(torch.linalg.svdvals(y)[0]) ** 2
        if theta == 0.0:
            return 0.0
        if prev_theta is not None:
            change = abs(theta - prev_theta)
            ratio = 0.0 if not prev_change else min(change / prev_change, 0.99)
            if iteration >= 3 and change / (1.0 - ratio) <= rtol * theta:
                log.debug("spectral norm converged in %d iterations", iteration)
                return math.sqrt(theta)
            prev_change = change
        prev_theta = theta
        q = torch.linalg.qr(op.rmm(y)).Q
    raise RuntimeError(
        f"power iteration did not reach rtol={rtol} in {max_iter} iterations "
        f"(last estimate {math.sqrt(prev_theta or 0.0):.6g}); raise max_iter or rtol"
    )


def matrix_norm(x: Matrix, norm: Norm, *, rtol: float = 1e-3) -> float:
    """Frobenius or spectral norm of a dense or factored matrix."""
    if isinstance(x, LowRank):
        s = x.core_svdvals()
        return float(s.norm()) if norm == "fro" else float(s[0]) if s.numel() else 0.0
    if norm == "fro":
        return float(torch.linalg.matrix_norm(x, "fro"))
    if min(x.shape) <= 64:
        return float(torch.linalg.svdvals(x)[0])
    return spectral_norm(x, rtol=rtol)


def stable_rank(delta: Matrix, *, rtol: float = 1e-3) -> float:
    """‖ΔW‖_F² / ‖ΔW‖_2² (NaN for a zero matrix). Exact for `LowRank`, within rtol for dense."""
    fro = matrix_norm(delta, "fro")
    if fro == 0.0:
        return math.nan
    return fro**2 / matrix_norm(delta, "spectral", rtol=rtol) ** 2


def transposed_product_norm(x: torch.Tensor, delta: Matrix, norm: Norm, *, rtol: float = 1e-3) -> float:
    """‖Xᵀ Δ‖ for X (m, p) and Δ (m, n), without forming Xᵀ Δ when it is the larger matrix.

    Factored Δ = L R: Xᵀ Δ = (Xᵀ L) R stays factored. Dense Δ: if p ≤ m the (p, n) product is no
    larger than Δ and is formed; otherwise the Frobenius norm uses ‖XᵀΔ‖_F² = tr((XXᵀ)(ΔΔᵀ))
    with (m, m) Gram matrices, and the spectral norm uses power iteration on the product.
    """
    if isinstance(delta, LowRank):
        return matrix_norm(LowRank(x.T @ delta.left, delta.right), norm, rtol=rtol)
    if x.shape[1] <= x.shape[0]:
        return matrix_norm(x.T @ delta, norm, rtol=rtol)
    if norm == "fro":
        return math.sqrt(max(float(((x @ x.T) * (delta @ delta.T)).sum()), 0.0))
    op = _Operator(
        x.shape[1],
        delta.shape[1],
        lambda q: ((delta @ q).T @ x).T,
        lambda y: ((x @ y).T @ delta).T,
    )
    return spectral_norm(op, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Truncated SVD of base weights


@dataclass(frozen=True)
class SVDFactors:
    """Top-k singular triplets of W (out, in): W ≈ U diag(S) Vᵀ, U (out, k), S (k,), V (in, k)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    def top(self, k: int) -> SVDFactors:
        if k > self.S.numel():
            raise ValueError(f"asked for {k} singular vectors, the cache holds {self.S.numel()}")
        return SVDFactors(self.U[:, :k], self.S[:k], self.V[:, :k])


def svd_residual(w: torch.Tensor, f: SVDFactors) -> float:
    """max_i ‖W v_i − σ_i u_i‖ / σ_1: the accuracy check of a truncated SVD.

    The triplets come from a Rayleigh–Ritz step, so Wᵀu_i = σ_i v_i holds exactly and this residual
    is the whole backward error: (U, S, V) are exact singular triplets of a matrix within about
    this fraction of ‖W‖_2 from W.
    """
    if f.S.numel() == 0 or float(f.S[0]) == 0.0:
        return 0.0
    return float((w @ f.V - f.U * f.S).norm(dim=0).max() / f.S[0])


def truncated_svd(
    w: torch.Tensor,
    k: int,
    *,
    oversample: int = 64,
    res_tol: float = 1e-2,
    max_iter: int = 100,
    power_iters: int | None = None,
    seed: int = 0,
) -> tuple[SVDFactors, float]:
    """Top-k SVD of W (k capped at min(W.shape)) by randomized subspace iteration, in float32.

    Works on a (k + oversample)-column subspace, re-orthonormalised every half step (Halko,
    Martinsson & Tropp 2011, Alg. 4.4), and stops once `svd_residual` is at most `res_tol` (raises if
    `max_iter` power steps do not get there); `power_iters` instead runs exactly that many steps,
    unchecked (the regularizer's fixed-cost fallback). When the subspace would cover the smaller
    dimension it computes the exact SVD instead. The Gaussian test matrix comes from a private CPU
    generator, so the caller's RNG state is left untouched. Returns the factors and the final residual.
    """
    w = w.detach().float()
    k = min(k, *w.shape)
    q_cols = k + oversample
    if q_cols >= min(w.shape):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        f = SVDFactors(u[:, :k].contiguous(), s[:k].contiguous(), vh[:k].T.contiguous())
        return f, svd_residual(w, f)
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(w.shape[1], q_cols, generator=generator).to(w.device)
    q = torch.linalg.qr(w @ omega).Q
    residual = math.inf
    for step in range(max_iter + 1 if power_iters is None else power_iters + 1):
        b = q.T @ w  # Rayleigh–Ritz, and the first half of the next power step
        if power_iters is None or step == power_iters:
            small_u, s, vh = torch.linalg.svd(b, full_matrices=False)
            f = SVDFactors((q @ small_u[:, :k]).contiguous(), s[:k].contiguous(), vh[:k].T.contiguous())
            residual = svd_residual(w, f)
            if step == power_iters or residual <= res_tol:
                log.debug("truncated SVD k=%d: %d power steps, residual %.2e", k, step, residual)
                return f, residual
        q = torch.linalg.qr(w @ torch.linalg.qr(b.T).Q).Q
    raise RuntimeError(f"truncated SVD residual {residual:.3g} > {res_tol} after {max_iter} steps")


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


class SafetensorsDir:
    """Tensor-by-tensor access to a folder of safetensors files (sharded through the index or not).

    Each read opens the shard, copies one tensor out and closes it, so nothing else stays mapped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        index = self.path / SAFETENSORS_INDEX
        if index.exists():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self._where = {name: self.path / shard for name, shard in weight_map.items()}
        else:
            self._where = {}
            for shard in sorted(self.path.glob("*.safetensors")):
                with safe_open(shard, framework="pt") as fh:
                    self._where.update({name: shard for name in fh.keys()})  # noqa: SIM118 - safe_open is not iterable
        if not self._where:
            raise FileNotFoundError(f"{self.path}: no safetensors weights")

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        """The tensor in float32."""
        try:
            shard = self._where[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None
        with safe_open(shard, framework="pt") as fh:
            return fh.get_tensor(name).float()


def layer_and_module(param_name: str, modules: Sequence[str]) -> tuple[int, str] | None:
    """(layer index, module) of a decoder-layer weight whose module name ends with one of `modules`."""
    if not param_name.endswith(".weight"):
        return None
    layer = _LAYER_RE.search(param_name)
    stem = param_name[: -len(".weight")]
    for module in modules:
        if layer and (stem == module or stem.endswith("." + module)):
            return int(layer.group(1)), module
    return None


def is_lora_adapter(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear: the base weight it updates and its factor keys in the adapter file."""

    param_name: str
    a_key: str
    b_key: str


def lora_modules(keys: Sequence[str]) -> list[LoraModule]:
    """Pair `…lora_A.weight` / `…lora_B.weight` keys and name the base weight they update.

    `base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight` updates
    `model.layers.0.mlp.gate_proj.weight`.
    """
    found = []
    key_set = set(keys)
    for a_key in sorted(k for k in keys if k.endswith(".lora_A.weight")):
        b_key = a_key[: -len("lora_A.weight")] + "lora_B.weight"
        if b_key not in key_set:
            raise ValueError(f"adapter has {a_key} but no {b_key}")
        stem = a_key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        found.append(LoraModule(stem + ".weight", a_key, b_key))
    return found


def _pattern_value(patterns: dict[str, float], module_name: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches a module name suffix as a regex."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def lora_scale(config: dict, param_name: str, rank: int) -> float:
    """The factor PEFT multiplies B·A by: alpha / r, or alpha / √r with rsLoRA."""
    if config.get("use_dora"):
        raise ValueError("DoRA adapters are not a plain B·A update; not supported")
    if config.get("fan_in_fan_out"):
        raise ValueError("fan_in_fan_out adapters (Conv1D layers) are not supported")
    module_name = param_name.removesuffix(".weight")
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module_name, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> dict:
    return json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def iter_lora_deltas(adapter_dir: str | os.PathLike[str]) -> Iterator[tuple[str, LowRank]]:
    """(base weight name, ΔW = (scale·B) @ A) for each adapted Linear, in float32."""
    config = read_adapter_config(adapter_dir)
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    with safe_open(weights, framework="pt") as fh:
        for m in lora_modules(list(fh.keys())):
            a = fh.get_tensor(m.a_key).float()
            b = fh.get_tensor(m.b_key).float()
            yield m.param_name, LowRank(b * lora_scale(config, m.param_name, a.shape[0]), a)


# ---------------------------------------------------------------------------------------------
# The SVD cache file


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def compute_base_svd(
    base_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    k: int,
    modules: Sequence[str],
    oversample: int = 64,
    res_tol: float = 1e-2,
    device: str = "cpu",
) -> dict[str, float]:
    """Write the top-k SVD of every decoder-layer weight of `modules` to one safetensors file.

    Keys are `{param_name}.U` (out, k), `{param_name}.S` (k,), `{param_name}.V` (in, k), float32,
    with `param_name` the base checkpoint's tensor name (e.g. `model.layers.0.mlp.gate_proj.weight`).
    The file's metadata holds `k`, `modules` (JSON list) and `residuals` (JSON {param_name: residual}).
    Returns the residuals.
    """
    ckpt = SafetensorsDir(base_dir)
    names = [n for n in ckpt.names() if layer_and_module(n, modules)]
    if not names:
        raise ValueError(f"{base_dir}: no decoder-layer weights of modules {list(modules)}")
    tensors: dict[str, torch.Tensor] = {}
    residuals: dict[str, float] = {}
    for name in names:
        w = ckpt.get(name).to(device)
        f, residuals[name] = truncated_svd(w, min(k, *w.shape), oversample=oversample, res_tol=res_tol)
        tensors.update({f"{name}.U": f.U.cpu(), f"{name}.S": f.S.cpu(), f"{name}.V": f.V.cpu()})
        log.info("SVD %s: residual %.2e", name, residuals[name])
        del w
    metadata = {"k": str(k), "modules": json.dumps(list(modules)), "residuals": json.dumps(residuals)}
    _atomic_save_file(tensors, Path(out), metadata)
    return residuals


class SVDCache:
    """Reads factors from a `compute_base_svd` file one weight at a time (weight analysis,
    OrthoMerge and the orthogonality regularizer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with safe_open(self.path, framework="pt") as fh:
            meta = fh.metadata() or {}
            self.param_names = sorted({key.rsplit(".", 1)[0] for key in fh.keys()})  # noqa: SIM118 - not iterable
        self.k = int(meta["k"])
        self.modules: list[str] = json.loads(meta["modules"])

    def __contains__(self, param_name: str) -> bool:
        return param_name in self.param_names

    def require(self, param_names: Sequence[str]) -> None:
        """Raise KeyError naming the weights the cache lacks, before any is read."""
        missing = [name for name in param_names if name not in self]
        if missing:
            raise KeyError(
                f"{self.path}: no SVD of {len(missing)} weights, e.g. {missing[:3]} (modules {self.modules})"
            )

    def get(self, param_name: str, k: int | None = None) -> SVDFactors:
        """The factors of one weight; with `k`, its top k (ValueError when the cache holds fewer)."""
        if param_name not in self:
            raise KeyError(f"{self.path}: no SVD of {param_name!r} (modules {self.modules})")
        with safe_open(self.path, framework="pt") as fh:
            factors = SVDFactors(*(fh.get_tensor(f"{param_name}.{part}") for part in ("U", "S", "V")))
        return factors if k is None else factors.top(k)


# ---------------------------------------------------------------------------------------------
# Alignment metrics and the per-checkpoint table


@dataclass(frozen=True)
class Alignment:
    """Section 5.1's metrics: (1) col_cos, (2) col_top, (3) row_cos, (4) row_top."""

    col_cos: float
    col_top: float
    row_cos: float
    row_top: float


def alignment_metrics(
    base: torch.Tensor,
    delta: Matrix,
    svd: SVDFactors,
    *,
    top: int = 16,
    norm: Norm = "fro",
    rtol: float = 1e-3,
) -> Alignment:
    """(1) ‖W_IᵀΔW‖/(‖W_I‖‖ΔW‖), (2) ‖U_tU_tᵀΔW‖/‖ΔW‖, (3) ‖W_IΔWᵀ‖/(‖W_I‖‖ΔW‖), (4) ‖V_tV_tᵀΔWᵀ‖/‖ΔW‖.

    U_t, V_t are W_I's top-`top` singular vectors (from the cache); since their columns are
    orthonormal, ‖U_tU_tᵀΔW‖ = ‖U_tᵀΔW‖ in both norms. ‖W_I‖_2 is the cached σ_1.
    A zero ΔW gives NaN.
    """
    d_norm = matrix_norm(delta, norm, rtol=rtol)
    if d_norm == 0.0:
        return Alignment(math.nan, math.nan, math.nan, math.nan)
    w_norm = matrix_norm(base, "fro") if norm == "fro" else float(svd.S[0])
    t = svd.top(top)
    return Alignment(
        col_cos=transposed_product_norm(base, delta, norm, rtol=rtol) / (w_norm * d_norm),
        col_top=transposed_product_norm(t.U, delta, norm, rtol=rtol) / d_norm,
        row_cos=transposed_product_norm(base.T, delta.T, norm, rtol=rtol) / (w_norm * d_norm),
        row_top=transposed_product_norm(t.V, delta.T, norm, rtol=rtol) / d_norm,
    )


def _iter_deltas(base: SafetensorsDir, checkpoint: Path, cache: SVDCache) -> Iterator[tuple[str, torch.Tensor, Matrix]]:
    """(name, W_I, ΔW) one weight at a time, from a LoRA adapter (its adapted modules) or a full checkpoint."""
    if is_lora_adapter(checkpoint):
        for name, delta in iter_lora_deltas(checkpoint):
            if name not in cache:
                raise ValueError(f"{checkpoint}: adapts {name}, which is not a decoder-layer weight of {cache.modules}")
            yield name, base.get(name), delta
        return
    tuned = SafetensorsDir(checkpoint)
    for name in cache.param_names:
        w = base.get(name)
        delta = tuned.get(name)
        delta -= w
        yield name, w, delta


def analyze_checkpoint(
    base_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    svd_path: str | os.PathLike[str],
    *,
    norm: Norm = "fro",
    top: int = 16,
    rtol: float = 1e-3,
) -> list[dict[str, float | int | str]]:
    """One row per (layer, module) of the SVD cache (`analysis.modules`, every decoder layer): for
    ΔW = checkpoint − base, stable rank, alignment, ‖ΔW‖_F.

    `checkpoint` is a LoRA adapter folder (has adapter_config.json) or a full checkpoint. `adapted`
    says whether the checkpoint changes the weight: a module or layer the adapter leaves out
    (`lora_targets`, `layers`) gets a row with adapted False and NaN metrics, never zeros. Holds one
    weight matrix and its ΔW at a time.
    """
    base = SafetensorsDir(base_dir)
    cache = SVDCache(svd_path)
    metrics = ("stable_rank", "col_cos", f"col_top{top}", "row_cos", f"row_top{top}", "delta_fro")
    rows = {name: {"adapted": False, **dict.fromkeys(metrics, math.nan)} for name in cache.param_names}
    for name, w, delta in _iter_deltas(base, Path(checkpoint), cache):
        a = alignment_metrics(w, delta, cache.get(name), top=top, norm=norm, rtol=rtol)
        values = (stable_rank(delta, rtol=rtol), a.col_cos, a.col_top, a.row_cos, a.row_top, matrix_norm(delta, "fro"))
        rows[name] = {"adapted": True, **dict(zip(metrics, values, strict=True))}
        del w, delta
    order = {m: i for i, m in enumerate(cache.modules)}
    table = []
    for name, row in rows.items():
        where = layer_and_module(name, cache.modules)
        if where is None:
            raise ValueError(f"{cache.path}: {name} is not a decoder-layer weight of modules {cache.modules}")
        table.append({"layer": where[0], "module": where[1], **row})
    return sorted(table, key=lambda r: (r["layer"], order[str(r["module"])]))


def write_analysis_csv(rows: Sequence[dict[str, float | int | str]], out: str | os.PathLike[str]) -> None:
    """Write `analyze_checkpoint` rows as a CSV (full float precision), atomically."""
    if not rows:
        raise ValueError("no rows to write")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out, buffer.getvalue())
