"""Stable rank, alignment metrics, the SVD cache and checkpoint reading against dense full SVDs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from safelora.weights import (
    LowRank,
    SafetensorsDir,
    SVDCache,
    SVDFactors,
    alignment_metrics,
    analyze_checkpoint,
    compute_base_svd,
    layer_and_module,
    lora_modules,
    lora_scale,
    matrix_norm,
    spectral_norm,
    stable_rank,
    svd_residual,
    transposed_product_norm,
    truncated_svd,
    write_analysis_csv,
)


def decaying(m: int, n: int, *, seed: int, rank: int = 40, noise: float = 1e-3) -> torch.Tensor:
    """Low rank plus noise with a power-law spectrum, like a fine-tuning update or a weight."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, rank, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, rank, generator=g)).Q
    s = torch.arange(1, rank + 1, dtype=torch.float32) ** -0.5
    return (u * s) @ v.T + noise * torch.randn(m, n, generator=g)


def np_norm(x: np.ndarray, norm: str) -> float:
    return float(np.linalg.norm(x, "fro" if norm == "fro" else 2))


def reference_metrics(w: np.ndarray, d: np.ndarray, norm: str, top: int = 16) -> tuple[float, ...]:
    u, _, vt = np.linalg.svd(w)
    ut, vtop = u[:, :top], vt[:top].T
    wn, dn = np_norm(w, norm), np_norm(d, norm)
    return (
        np_norm(w.T @ d, norm) / (wn * dn),
        np_norm(ut @ ut.T @ d, norm) / dn,
        np_norm(w @ d.T, norm) / (wn * dn),
        np_norm(vtop @ vtop.T @ d.T, norm) / dn,
    )


def exact_factors(w: torch.Tensor, k: int) -> SVDFactors:
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return SVDFactors(u[:, :k].float(), s[:k].float(), vh[:k].T.float())


def test_stable_rank_dense_matches_full_svd():
    d = decaying(150, 400, seed=1)
    s = np.linalg.svd(d.numpy(), compute_uv=False)
    expected = float((s**2).sum() / s[0] ** 2)
    assert stable_rank(d, rtol=1e-4) == pytest.approx(expected, rel=1e-3)
    assert stable_rank(d.T, rtol=1e-4) == pytest.approx(expected, rel=1e-3)


def test_stable_rank_factored_is_exact_and_zero_is_nan():
    g = torch.Generator().manual_seed(2)
    b, a = torch.randn(300, 6, generator=g), torch.randn(6, 200, generator=g)
    s = np.linalg.svd((b @ a).double().numpy(), compute_uv=False)
    assert stable_rank(LowRank(b, a)) == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=1e-5)
    assert math.isnan(stable_rank(torch.zeros(100, 80)))
    assert math.isnan(stable_rank(LowRank(torch.zeros(100, 4), torch.randn(4, 80))))


def test_spectral_norm_refuses_to_return_unconverged_value():
    d = decaying(200, 300, seed=3, rank=150, noise=0.0)
    with pytest.raises(RuntimeError, match="did not reach"):
        spectral_norm(d, rtol=1e-9, max_iter=3)
    assert spectral_norm(d) == pytest.approx(float(np.linalg.norm(d.numpy(), 2)), rel=1e-3)


@pytest.mark.parametrize("norm", ["fro", "spectral"])
@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])
def test_transposed_product_norm_all_paths(norm, shape):
    m, n = shape
    g = torch.Generator().manual_seed(4)
    d = decaying(m, n, seed=5)
    for p in (12, 2 * m):  # product smaller than Δ (formed) and larger (Gram trick / operator)
        x = torch.randn(m, p, generator=g)
        expected = np_norm(x.numpy().T @ d.numpy(), norm)
        assert transposed_product_norm(x, d, norm, rtol=1e-5) == pytest.approx(expected, rel=1e-3)
    b, a = torch.randn(m, 5, generator=g), torch.randn(5, n, generator=g)
    x = torch.randn(m, 2 * m, generator=g)
    expected = np_norm(x.numpy().T @ (b @ a).numpy(), norm)
    assert transposed_product_norm(x, LowRank(b, a), norm) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("norm", ["fro", "spectral"])
@pytest.mark.parametrize("shape", [(80, 192), (192, 80)])
def test_alignment_metrics_dense_and_factored_match_reference(norm, shape):
    m, n = shape
    g = torch.Generator().manual_seed(6)
    w = decaying(m, n, seed=7, rank=60, noise=0.01)
    b, a = torch.randn(m, 4, generator=g), torch.randn(4, n, generator=g)
    # make ΔW partly aligned with W so the metrics are far from 0 and 1
    b[:, 0] += 5 * exact_factors(w, 1).U[:, 0]
    delta = b @ a
    expected = reference_metrics(w.double().numpy(), delta.double().numpy(), norm)
    svd = exact_factors(w, 32)
    for d in (delta, LowRank(b, a)):
        got = alignment_metrics(w, d, svd, top=16, norm=norm, rtol=1e-6)
        assert (got.col_cos, got.col_top, got.row_cos, got.row_top) == pytest.approx(expected, rel=2e-3)
    assert all(0.0 < x <= 1.0 + 1e-6 for x in expected[1::2])


def test_alignment_of_zero_delta_is_nan():
    w = decaying(40, 50, seed=8)
    got = alignment_metrics(w, torch.zeros(40, 50), exact_factors(w, 16))
    assert all(math.isnan(x) for x in (got.col_cos, got.col_top, got.row_cos, got.row_top))


def test_truncated_svd_randomized_matches_full_svd():
    w = decaying(300, 500, seed=9, rank=120, noise=1e-3)
    f, residual = truncated_svd(w, 16, oversample=32, res_tol=1e-3)
    exact = exact_factors(w, 16)
    assert residual <= 1e-3
    assert residual == pytest.approx(svd_residual(w, f))
    assert torch.allclose(f.S, exact.S, rtol=1e-4)
    projector_gap = torch.linalg.matrix_norm(f.U @ f.U.T - exact.U @ exact.U.T, 2)
    assert float(projector_gap) < 1e-2
    assert float(torch.linalg.matrix_norm(f.V @ f.V.T - exact.V @ exact.V.T, 2)) < 1e-2
    assert f.U.shape == (300, 16) and f.V.shape == (500, 16) and f.S.shape == (16,)


def test_truncated_svd_raises_when_accuracy_check_fails():
    w = torch.randn(200, 300, generator=torch.Generator().manual_seed(10))  # flat spectrum
    with pytest.raises(RuntimeError, match="residual"):
        truncated_svd(w, 16, oversample=4, res_tol=1e-6, max_iter=2)


def test_truncated_svd_small_matrix_is_exact():
    w = decaying(50, 70, seed=11)
    f, residual = truncated_svd(w, 20, oversample=64)
    assert residual < 1e-5
    assert torch.allclose(f.S, exact_factors(w, 20).S, rtol=1e-5)


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """A transformers-style folder: `shards` files plus the index when shards > 1."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def tiny_model_tensors(seed: int, layers: int = 2) -> dict[str, torch.Tensor]:
    shapes = {"self_attn.q_proj": (48, 48), "self_attn.k_proj": (16, 48), "mlp.down_proj": (48, 96)}
    out = {"model.embed_tokens.weight": torch.randn(10, 48)}
    for layer in range(layers):
        for i, (mod, shape) in enumerate(shapes.items()):
            out[f"model.layers.{layer}.{mod}.weight"] = decaying(*shape, seed=seed + 10 * layer + i, rank=12)
    return out


def test_sharded_and_single_file_reads(tmp_path):
    tensors = tiny_model_tensors(seed=20)
    write_checkpoint(tmp_path / "sharded", tensors, shards=3)
    write_checkpoint(tmp_path / "single", {k: v.to(torch.bfloat16) for k, v in tensors.items()}, shards=1)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) == 3
    sharded, single = SafetensorsDir(tmp_path / "sharded"), SafetensorsDir(tmp_path / "single")
    assert sharded.names() == single.names() == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(sharded.get(name), t)
        assert single.get(name).dtype == torch.float32
        assert torch.equal(single.get(name), t.to(torch.bfloat16).float())
    with pytest.raises(KeyError, match="nope"):
        sharded.get("nope")


def test_layer_and_module_parsing():
    modules = ("q_proj", "down_proj")
    assert layer_and_module("model.layers.12.mlp.down_proj.weight", modules) == (12, "down_proj")
    assert layer_and_module("model.layers.3.self_attn.q_proj.weight", modules) == (3, "q_proj")
    assert layer_and_module("model.layers.3.self_attn.q_proj.bias", modules) is None
    assert layer_and_module("model.layers.3.self_attn.k_proj.weight", modules) is None
    assert layer_and_module("lm_head.weight", modules) is None


def test_lora_keys_and_scale():
    keys = [
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
        "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
        "base_model.model.lm_head.weight",
    ]
    (m,) = lora_modules(keys)
    assert m.param_name == "model.layers.0.mlp.up_proj.weight"
    assert m.b_key == keys[1]
    with pytest.raises(ValueError, match="no .*lora_B"):
        lora_modules(keys[:1])
    assert lora_scale({"lora_alpha": 16, "r": 4}, m.param_name, 4) == 4.0
    assert lora_scale({"lora_alpha": 16, "use_rslora": True}, m.param_name, 4) == 8.0
    cfg = {"lora_alpha": 16, "alpha_pattern": {"up_proj": 2}}
    assert lora_scale(cfg, m.param_name, 4) == 0.5
    assert lora_scale(cfg, "model.layers.0.mlp.down_proj.weight", 4) == 4.0
    with pytest.raises(ValueError, match="DoRA"):
        lora_scale({"lora_alpha": 16, "use_dora": True}, m.param_name, 4)


def test_svd_cache_file_keys_and_reuse(tmp_path):
    tensors = tiny_model_tensors(seed=30)
    write_checkpoint(tmp_path / "base", tensors, shards=2)
    out = tmp_path / "svd" / "m.safetensors"
    residuals = compute_base_svd(tmp_path / "base", out, k=8, modules=["q_proj", "down_proj"], oversample=8)
    assert set(residuals) == {
        f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj")
    }
    with safe_open(out, framework="pt") as fh:
        name = "model.layers.1.mlp.down_proj.weight"
        assert fh.get_tensor(f"{name}.U").shape == (48, 8)
        assert fh.get_tensor(f"{name}.V").shape == (96, 8)
        assert fh.get_tensor(f"{name}.S").dtype == torch.float32
        assert json.loads(fh.metadata()["modules"]) == ["q_proj", "down_proj"]
    cache = SVDCache(out)
    assert cache.k == 8 and cache.param_names == sorted(residuals)
    got = cache.get(name)
    assert torch.allclose(got.S, exact_factors(tensors[name], 8).S, rtol=1e-3)
    assert max(residuals.values()) <= 1e-2
    with pytest.raises(ValueError, match="holds 8"):
        got.top(16)
    assert torch.equal(cache.get(name, 3).U, got.U[:, :3])
    with pytest.raises(ValueError, match="holds 8"):
        cache.get(name, 9)
    cache.require(sorted(residuals))
    with pytest.raises(KeyError, match="no SVD of 1 weights"):
        cache.require([name, "model.layers.0.mlp.up_proj.weight"])


def test_analyze_full_and_lora_checkpoints_match_dense_reference(tmp_path):
    base = tiny_model_tensors(seed=40)
    write_checkpoint(tmp_path / "base", base, shards=2)
    compute_base_svd(tmp_path / "base", tmp_path / "svd.safetensors", k=16, modules=["q_proj", "k_proj", "down_proj"])

    g = torch.Generator().manual_seed(41)
    adapter_tensors, deltas = {}, {}
    for name, w in base.items():
        if layer_and_module(name, ["q_proj", "k_proj", "down_proj"]):
            b, a = torch.randn(w.shape[0], 2, generator=g), torch.randn(2, w.shape[1], generator=g)
            stem = "base_model.model." + name.removesuffix(".weight")
            adapter_tensors |= {f"{stem}.lora_A.weight": a, f"{stem}.lora_B.weight": b}
            deltas[name] = (8 / 2) * b @ a
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    save_file(adapter_tensors, tmp_path / "lora" / "adapter_model.safetensors")
    tuned = {k: v + deltas.get(k, 0.0) for k, v in base.items()}
    write_checkpoint(tmp_path / "full", tuned, shards=3)

    for ckpt in ("full", "lora"):
        rows = analyze_checkpoint(tmp_path / "base", tmp_path / ckpt, tmp_path / "svd.safetensors", rtol=1e-5)
        assert [(r["layer"], r["module"]) for r in rows] == [
            (i, m) for i in (0, 1) for m in ("q_proj", "k_proj", "down_proj")
        ]
        for row in rows:
            name = next(n for n in deltas if layer_and_module(n, [row["module"]]) == (row["layer"], row["module"]))
            w, d = base[name].double().numpy(), deltas[name].double().numpy()
            s = np.linalg.svd(d, compute_uv=False)
            expected = reference_metrics(w, d, "fro")
            assert row["stable_rank"] == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=2e-3)
            got = (row["col_cos"], row["col_top16"], row["row_cos"], row["row_top16"])
            assert got == pytest.approx(expected, rel=2e-3, abs=1e-6)
            assert row["delta_fro"] == pytest.approx(np.linalg.norm(d), rel=1e-4)

    write_analysis_csv(rows, tmp_path / "out" / "epoch-1.csv")
    with open(tmp_path / "out" / "epoch-1.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [
        "layer",
        "module",
        "adapted",
        "stable_rank",
        "col_cos",
        "col_top16",
        "row_cos",
        "row_top16",
        "delta_fro",
    ]
    assert len(table) == 6 and float(table[0]["delta_fro"]) == pytest.approx(rows[0]["delta_fro"])
    assert {r["adapted"] for r in table} == {"True"}


def test_a_layer_range_adapter_has_rows_for_what_it_leaves_out(tmp_path):
    """LoRA on down_proj of layer 1 only: its row has the metrics, every other (layer, module) of
    the analysis says adapted False with NaN metrics (not zeros, not missing)."""
    base = tiny_model_tensors(seed=42)
    write_checkpoint(tmp_path / "base", base, shards=1)
    compute_base_svd(tmp_path / "base", tmp_path / "svd.safetensors", k=16, modules=["q_proj", "k_proj", "down_proj"])
    name = "model.layers.1.mlp.down_proj.weight"
    g = torch.Generator().manual_seed(43)
    b, a = torch.randn(base[name].shape[0], 1, generator=g), torch.randn(1, base[name].shape[1], generator=g)
    stem = "base_model.model." + name.removesuffix(".weight")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(
        json.dumps({"r": 1, "lora_alpha": 2, "target_modules": ["down_proj"], "layers_to_transform": [1]})
    )
    save_file({f"{stem}.lora_A.weight": a, f"{stem}.lora_B.weight": b}, tmp_path / "lora" / "adapter_model.safetensors")
    rows = analyze_checkpoint(tmp_path / "base", tmp_path / "lora", tmp_path / "svd.safetensors")
    assert [(r["layer"], r["module"], r["adapted"]) for r in rows] == [
        (0, "q_proj", False), (0, "k_proj", False), (0, "down_proj", False),
        (1, "q_proj", False), (1, "k_proj", False), (1, "down_proj", True),
    ]  # fmt: skip
    (adapted,) = [r for r in rows if r["adapted"]]
    assert adapted["stable_rank"] == pytest.approx(1.0) and adapted["delta_fro"] == pytest.approx(
        float(torch.linalg.matrix_norm(2 * b @ a)), rel=1e-4
    )
    assert all(math.isnan(r[m]) for r in rows if not r["adapted"] for m in ("stable_rank", "col_cos", "delta_fro"))


def test_matrix_norm_factored_matches_dense():
    g = torch.Generator().manual_seed(50)
    b, a = torch.randn(70, 3, generator=g), torch.randn(3, 90, generator=g)
    for norm in ("fro", "spectral"):
        assert matrix_norm(LowRank(b, a), norm) == pytest.approx(np_norm((b @ a).numpy(), norm), rel=1e-5)
