"""OrthoMerge algebra, and the written adapter loaded by PEFT on a tiny real Qwen2 model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_model import PROJECTIONS

from safelora.config import lora_fields
from safelora.training.orthomerge import orthomerge_adapter, project_factors
from safelora.weights import (
    SafetensorsDir,
    SVDCache,
    SVDFactors,
    analyze_checkpoint,
    compute_base_svd,
)


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed))).Q


@pytest.mark.parametrize("variant", ["col", "both"])
def test_project_factors_equals_dense_projection(variant):
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 4, generator=g), torch.randn(4, 60, generator=g)
    u, v = orthonormal(40, 8, 1), orthonormal(60, 8, 2)
    svd = SVDFactors(u, torch.ones(8), v)
    b2, a2 = project_factors(b, a, svd, variant, 1.15)
    right = torch.eye(60) - v @ v.T if variant == "both" else torch.eye(60)
    expected = 1.15 * (torch.eye(40) - u @ u.T) @ (b @ a) @ right
    assert b2.shape == b.shape and a2.shape == a.shape
    assert torch.allclose(b2 @ a2, expected, atol=1e-5)
    assert float((u.T @ b2 @ a2).abs().max()) < 1e-5  # column space orthogonal to U_k
    row_overlap = float((b2 @ a2 @ v).abs().max())
    assert (row_overlap < 1e-5) == (variant == "both")


def test_project_factors_keeps_dtype_and_rejects_unknown_variant():
    b, a = torch.randn(10, 2).to(torch.bfloat16), torch.randn(2, 12).to(torch.bfloat16)
    svd = SVDFactors(orthonormal(10, 3, 3), torch.ones(3), orthonormal(12, 3, 4))
    b2, a2 = project_factors(b, a, svd, "both", 1.0)
    assert b2.dtype == a2.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="variant"):
        project_factors(b, a, svd, "row", 1.0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    """A tiny Qwen2 saved as a sharded checkpoint, a random-B LoRA adapter on all 7 modules, its SVD cache."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("tiny")
    config = transformers.Qwen2Config(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    base = transformers.Qwen2ForCausalLM(config)
    base.save_pretrained(root / "base", max_shard_size="100KB")
    lora_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(PROJECTIONS), init_lora_weights=False)
    peft.get_peft_model(base, lora_config).save_pretrained(root / "adapter")
    # the paper code's `lora_up_proj_only_from1_to1_r4`, with PEFT options as training sets them
    layer_range = lora_fields(4, ["up_proj"], alpha=8, dropout=0.0, layers=[1, 1])
    base = transformers.Qwen2ForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    peft.get_peft_model(base, peft.LoraConfig(**layer_range, init_lora_weights=False)).save_pretrained(root / "up-l1")
    compute_base_svd(root / "base", root / "svd.safetensors", k=64, modules=PROJECTIONS)
    return root


def base_model(root):
    import transformers

    return transformers.Qwen2ForCausalLM.from_pretrained(root / "base", dtype=torch.float32)


def peft_deltas(root, adapter: str) -> dict[str, torch.Tensor]:
    """{base weight name: merged weight − base weight} with PEFT doing the loading and merging."""
    import peft

    merged = peft.PeftModel.from_pretrained(base_model(root), root / adapter).merge_and_unload()
    base = SafetensorsDir(root / "base")
    return {name: p.detach() - base.get(name) for name, p in merged.named_parameters() if name.endswith("_proj.weight")}


@pytest.mark.parametrize("variant,lam", [("col", 1.0), ("both", 1.15)])
def test_orthomerged_adapter_loads_in_peft_and_reproduces_projected_delta(tiny_lora, variant, lam):
    root = tiny_lora
    assert len(json.loads((root / "base" / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    out = root / f"om-{variant}"
    orthomerge_adapter(root / "adapter", root / "svd.safetensors", out, variant=variant, lam=lam, k=16)
    assert (out / "adapter_config.json").read_text() == (root / "adapter" / "adapter_config.json").read_text()
    assert json.loads((out / "orthomerge.json").read_text())["variant"] == variant

    original, projected = peft_deltas(root, "adapter"), peft_deltas(root, out.name)
    assert len(original) == 2 * len(PROJECTIONS)
    base = SafetensorsDir(root / "base")
    for name, delta in original.items():
        assert float(delta.abs().max()) > 1e-3  # random B: a real update
        u, _, vh = torch.linalg.svd(base.get(name).double(), full_matrices=False)
        left = torch.eye(u.shape[0], dtype=torch.float64) - u[:, :16] @ u[:, :16].T
        right = torch.eye(vh.shape[1], dtype=torch.float64) - vh[:16].T @ vh[:16]
        expected = (
            lam * left @ delta.double() @ (right if variant == "both" else torch.eye(vh.shape[1], dtype=torch.float64))
        )
        assert torch.allclose(projected[name].double(), expected, atol=2e-5), name


def test_orthomerge_of_a_layer_range_adapter_changes_its_modules_only(tiny_lora):
    """LoRA on up_proj of layer 1 of 2: OrthoMerge projects that module's factors and writes no others;
    PEFT's merged update is zero everywhere else, before and after."""
    from safetensors.torch import load_file

    root = tiny_lora
    config = json.loads((root / "up-l1" / "adapter_config.json").read_text())
    assert (config["target_modules"], config["layers_to_transform"], config["layers_pattern"]) == (
        ["up_proj"], [1], "layers",
    )  # fmt: skip
    orthomerge_adapter(root / "up-l1", root / "svd.safetensors", root / "om-up-l1", variant="both", lam=1.2, k=16)
    keys = sorted(load_file(root / "up-l1" / "adapter_model.safetensors"))
    assert keys == [f"base_model.model.model.layers.1.mlp.up_proj.lora_{f}.weight" for f in "AB"]
    assert sorted(load_file(root / "om-up-l1" / "adapter_model.safetensors")) == keys
    original, projected = peft_deltas(root, "up-l1"), peft_deltas(root, "om-up-l1")
    changed = "model.layers.1.mlp.up_proj.weight"
    for deltas in (original, projected):
        assert {n for n, d in deltas.items() if float(d.abs().max()) > 0} == {changed}
    u, _, vh = torch.linalg.svd(SafetensorsDir(root / "base").get(changed).double(), full_matrices=False)
    left = torch.eye(u.shape[0], dtype=torch.float64) - u[:, :16] @ u[:, :16].T
    right = torch.eye(vh.shape[1], dtype=torch.float64) - vh[:16].T @ vh[:16]
    assert torch.allclose(projected[changed].double(), 1.2 * left @ original[changed].double() @ right, atol=2e-5)


def test_weight_analysis_of_a_layer_range_adapter_names_what_is_not_adapted(tiny_lora):
    rows = analyze_checkpoint(tiny_lora / "base", tiny_lora / "up-l1", tiny_lora / "svd.safetensors")
    assert len(rows) == 2 * len(PROJECTIONS)
    assert [(r["layer"], r["module"]) for r in rows if r["adapted"]] == [(1, "up_proj")]
    assert all(r["stable_rank"] != r["stable_rank"] for r in rows if not r["adapted"])  # NaN, not zero


def test_orthomerge_rejects_k_above_cache(tiny_lora, tmp_path):
    with pytest.raises(ValueError, match="holds only"):
        orthomerge_adapter(
            tiny_lora / "adapter", tiny_lora / "svd.safetensors", tmp_path / "x", variant="col", lam=1.0, k=65
        )
    assert not (tmp_path / "x").exists()
    assert SVDCache(tiny_lora / "svd.safetensors").k == 64


def test_factored_and_dense_analysis_agree_on_real_model(tiny_lora):
    """The adapter (factored path) and the same model merged and saved in full (dense path)."""
    import peft

    root = tiny_lora
    merged = peft.PeftModel.from_pretrained(base_model(root), root / "adapter").merge_and_unload()
    merged.save_pretrained(root / "merged", max_shard_size="150KB")
    for norm in ("fro", "spectral"):
        lora = analyze_checkpoint(root / "base", root / "adapter", root / "svd.safetensors", norm=norm, rtol=1e-6)
        full = analyze_checkpoint(root / "base", root / "merged", root / "svd.safetensors", norm=norm, rtol=1e-6)
        assert len(lora) == len(full) == 2 * len(PROJECTIONS)
        for a, b in zip(lora, full, strict=True):
            assert (a["layer"], a["module"]) == (b["layer"], b["module"])
            assert a["stable_rank"] <= 4.0 + 1e-4
            for col in ("stable_rank", "col_cos", "col_top16", "row_cos", "row_top16", "delta_fro"):
                assert a[col] == pytest.approx(b[col], rel=1e-3), (norm, a["module"], col)
