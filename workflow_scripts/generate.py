#!/usr/bin/env python3
"""Generate completions for a benchmark's items from one checkpoint (vLLM or transformers)."""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.evaluation.generation import add_backend_arguments

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--base", required=True, help="model folder or hub id (a full fine-tuning checkpoint, or the base)"
    )
    parser.add_argument("--adapter", help="a LoRA adapter folder to serve unmerged on --base")
    parser.add_argument("--items", required=True, help="BenchmarkItem JSONL")
    parser.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="prompts per backend call (transformers; config generation.batch_size)",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="prompts per resumable chunk")
    parser.add_argument("--sampling", required=True, help="JSON: n, temperature, top_p, max_new_tokens, seed")
    parser.add_argument(
        "--model-settings", required=True, help="JSON: dtype, max_model_len, tensor_parallel, max_lora_rank"
    )
    parser.add_argument("--out", required=True)
    add_backend_arguments(parser)
    args = parser.parse_args()

    from safelora.locks import writer_lock

    # One writer per output: an orphan of a killed driver still generating it makes this job refuse.
    with writer_lock(Path(args.out), "generate"):
        return generate(args)


def generate(args: argparse.Namespace) -> int:
    from safelora.housekeeping import MemoryGuard
    from safelora.training.sft import require_checkpoint

    MemoryGuard(args.mem_mb).start()
    for checkpoint in (args.base, args.adapter):
        require_checkpoint(checkpoint)

    from safelora.data import render_prompt
    from safelora.evaluation.generation import (
        GenerationJob,
        ModelRef,
        Sampling,
        check_context,
        make_backend,
        run_generation,
    )
    from safelora.io import read_jsonl

    settings = json.loads(args.model_settings)
    sampling = Sampling(**json.loads(args.sampling))
    # The job's own engine, freed when the job ends; one LoRA slot for the adapter it serves unmerged.
    ref = ModelRef(base=args.base, max_loras=1 if args.adapter else 0, **settings)
    backend = make_backend(args.backend, ref, sampling.seed, args.batch_size)
    items = read_jsonl(args.items)
    prompts = [render_prompt(backend.tokenizer, item["prompt"]) for item in items]
    ids = [str(item["id"]) for item in items]
    check_context(backend, prompts, ids, sampling.max_new_tokens, ref.max_model_len)
    job = GenerationJob(
        ids=ids,
        prompts=prompts,
        sampling=sampling,
        chunk_size=args.chunk_size,
        adapter=args.adapter,
        fingerprint={
            "model": args.base,
            "adapter": args.adapter,
            "prompts": prompts,
            "sampling": json.loads(args.sampling),
            "engine": backend.engine,
            "mtime": _mtime(args.base, args.adapter),
        },
    )
    run_generation(job, backend, Path(args.out))
    print(f"{len(ids)} prompts x {sampling.n} samples -> {args.out} ({backend.engine})")
    return 0


def _mtime(model_path: str, adapter: str | None) -> float:
    """Checkpoint folders' modification times: a retrained checkpoint invalidates partial work."""
    return max((os.path.getmtime(p) for p in (model_path, adapter) if p and os.path.exists(p)), default=0.0)


if __name__ == "__main__":
    sys.exit(main())
