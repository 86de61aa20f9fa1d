#!/usr/bin/env python3
"""Generate completions for a benchmark's items from one checkpoint (vLLM or transformers)."""

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.settings import GenerationSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--base", required=True, help="model folder or hub id (a full fine-tuning checkpoint, or the base)"
    )
    parser.add_argument("--adapter", help="a LoRA adapter folder to serve unmerged on --base")
    parser.add_argument("--items", required=True, help="BenchmarkItem JSONL")
    parser.add_argument(
        "--settings",
        type=GenerationSettings.from_json,
        required=True,
        help="JSON of safelora.settings.GenerationSettings: backend, batch_size, sampling, model",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="prompts per resumable chunk")
    parser.add_argument("--mem-mb", type=float, required=True, help="host memory budget; stop clearly near it (0: off)")
    parser.add_argument("--out", required=True)
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
        check_context,
        make_backend,
        run_generation,
    )
    from safelora.io import read_jsonl

    settings = args.settings
    sampling = settings.sampling
    # The job's own engine, freed when the job ends; one LoRA slot for the adapter it serves unmerged.
    ref = ModelRef(base=args.base, max_loras=1 if args.adapter else 0, **asdict(settings.model))
    backend = make_backend(settings.backend, ref, sampling.seed, settings.batch_size)
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
            "sampling": asdict(sampling),
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
