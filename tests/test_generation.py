"""Generation: the transformers backend, one record format, resumable chunks, context checks."""

import json

import pytest

from safelora.evaluation.generation import (
    GenerationJob,
    ModelRef,
    Sampling,
    TransformersBackend,
    check_context,
    run_generation,
)
from safelora.io import read_jsonl


@pytest.fixture(scope="module")
def backend(tiny_model):
    return TransformersBackend(ModelRef(base=str(tiny_model), dtype="float32"), batch_size=2)


def job(prompts, sampling, chunk_size=2):
    ids = [f"p{i}" for i in range(len(prompts))]
    return GenerationJob(ids=ids, prompts=prompts, sampling=sampling, chunk_size=chunk_size, fingerprint={"x": 1})


SAMPLING = Sampling(n=2, temperature=0.7, top_p=0.95, max_new_tokens=6, seed=3)


def test_records_carry_ids_samples_and_settings(backend, tmp_path):
    prompts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"] * 3
    out = tmp_path / "g.jsonl"
    run_generation(job(prompts, SAMPLING), backend, out)
    records = read_jsonl(out)
    assert [(r["prompt_id"], r["sample_index"]) for r in records] == [(f"p{i}", j) for i in range(3) for j in range(2)]
    first = records[0]
    assert first["sampling"] == {"n": 2, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 6, "seed": 3}
    assert first["engine"].startswith("transformers==") and first["finish_reason"] in ("stop", "length")
    assert 0 < first["completion_tokens"] <= 6 and first["prompt_tokens"] > 0
    assert not (tmp_path / "g.jsonl.partial").exists()


def test_killed_generation_resumes_to_identical_records(backend, tmp_path):
    prompts = [f"<|im_start|>user\nWhat is {i} + 1?<|im_end|>\n<|im_start|>assistant\n" for i in range(4)]
    full = tmp_path / "full.jsonl"
    run_generation(job(prompts, SAMPLING), backend, full)
    # Simulate a job killed after its first chunk: only chunk 0 exists in the partial folder.
    resumed = tmp_path / "resumed.jsonl"

    class KillAfterOneChunk:
        engine, tokenizer = backend.engine, backend.tokenizer
        calls = 0

        def generate(self, *args):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt("killed")
            return backend.generate(*args)

    with pytest.raises(KeyboardInterrupt):
        run_generation(job(prompts, SAMPLING), KillAfterOneChunk(), resumed)
    assert not resumed.exists() and len(list((tmp_path / "resumed.jsonl.partial").glob("chunk-*"))) == 1
    run_generation(job(prompts, SAMPLING), backend, resumed)
    assert read_jsonl(resumed) == read_jsonl(full)


def test_changed_settings_discard_partial_work(backend, tmp_path):
    out = tmp_path / "g.jsonl"
    partial = tmp_path / "g.jsonl.partial"
    partial.mkdir()
    (partial / "fingerprint.json").write_text("stale\n")
    (partial / "chunk-00000.jsonl").write_text(json.dumps({"stale": True}) + "\n")
    run_generation(job(["<|im_start|>user\nhi<|im_end|>\n"], SAMPLING), backend, out)
    assert all("stale" not in r for r in read_jsonl(out))


def test_greedy_is_deterministic(backend):
    greedy = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=5, seed=0)
    prompt = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"]
    assert backend.generate(prompt, greedy, [0])[0][0].text == backend.generate(prompt, greedy, [9])[0][0].text


def test_context_check_fails_clearly(backend):
    with pytest.raises(ValueError, match="prompt 'long' needs .* max_model_len is 10"):
        check_context(backend, ["word " * 20], ["long"], 5, 10)
