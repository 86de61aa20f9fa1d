#!/usr/bin/env python3
"""Peak memory of the weight analysis on a synthetic sharded model of 7B layer shapes.

Builds (in a temporary folder) a 2-layer model with Qwen2-7B shapes (hidden 3584, intermediate
18944, 28 query / 4 key-value heads) in bfloat16 over several shards, a fully fine-tuned copy
sharded differently, and a rank-16 LoRA adapter. Then runs, each in a fresh process, the base
SVD cache, the analysis of the full checkpoint and the analysis of the adapter, and prints each
one's peak RSS above its RSS after imports, next to the size of one layer and of the model.
Run with OMP_NUM_THREADS=2 (or fewer).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

HIDDEN, INTERMEDIATE, KV = 3584, 18944, 512
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
MiB = 2**20


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_sharded(folder: Path, tensors: dict, per_shard: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    names = list(tensors)
    groups = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, folder / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in group})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def build(root: Path, layers: int) -> dict:
    """Write base/, tuned/ (full fine-tuning) and lora/; return sizes in bytes."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    base, tuned, lora = {}, {}, {}
    base["model.embed_tokens.weight"] = torch.randn(1024, HIDDEN, generator=g).to(torch.bfloat16)
    tuned["model.embed_tokens.weight"] = base["model.embed_tokens.weight"]
    for layer in range(layers):
        for module, (out, inp) in SHAPES.items():
            name = f"model.layers.{layer}.{module}.weight"
            w = 0.02 * torch.randn(out, inp, generator=g)
            b, a = torch.randn(out, 16, generator=g) / 16, torch.randn(16, inp, generator=g) / inp**0.5
            base[name] = w.to(torch.bfloat16)
            tuned[name] = (w + 1e-3 * (b @ a) + 1e-5 * torch.randn(out, inp, generator=g)).to(torch.bfloat16)
            stem = f"base_model.model.model.layers.{layer}.{module}"
            lora |= {f"{stem}.lora_A.weight": a, f"{stem}.lora_B.weight": b}
            del w
    write_sharded(root / "base", base, per_shard=3)
    write_sharded(root / "tuned", tuned, per_shard=4)
    (root / "lora").mkdir()
    (root / "lora" / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    save_file(lora, root / "lora" / "adapter_model.safetensors")
    per_layer = sum(out * inp for out, inp in SHAPES.values()) * 2
    return {"layer_bf16": per_layer, "model_bf16": sum(t.numel() * 2 for t in base.values())}


def measured(task: str, root: str, queue) -> None:
    """Child process: run one step, report (RSS after imports, peak RSS, seconds)."""
    from safelora.weights import analyze_checkpoint, compute_base_svd

    root_path = Path(root)
    baseline = rss_bytes()
    start = time.perf_counter()
    if task == "base_svd":
        compute_base_svd(
            root_path / "base", root_path / "svd.safetensors", k=64, modules=[name.split(".")[-1] for name in SHAPES]
        )
    else:
        ckpt = root_path / ("tuned" if task == "analyze full" else "lora")
        analyze_checkpoint(root_path / "base", ckpt, root_path / "svd.safetensors")
    queue.put((baseline, peak_rss_bytes(), time.perf_counter() - start))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to build the synthetic model (default: a temp dir)")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        with ctx.Pool(1) as pool:
            sizes = pool.apply(build, (Path(tmp), args.layers))
        shards = len(list((Path(tmp) / "base").glob("*.safetensors")))
        print(
            f"synthetic model: {args.layers} layers of hidden {HIDDEN} / intermediate {INTERMEDIATE}, "
            f"base in {shards} shards"
        )
        print(
            f"one layer: {sizes['layer_bf16'] / MiB:.0f} MiB bf16, {2 * sizes['layer_bf16'] / MiB:.0f} MiB fp32; "
            f"whole model: {sizes['model_bf16'] / MiB:.0f} MiB bf16; largest matrix "
            f"{HIDDEN * INTERMEDIATE * 4 / MiB:.0f} MiB fp32"
        )
        for task in ("base_svd", "analyze full", "analyze lora"):
            queue = ctx.Queue()
            proc = ctx.Process(target=measured, args=(task, tmp, queue))
            proc.start()
            baseline, peak, seconds = queue.get()
            proc.join()
            print(
                f"{task:13s}: peak RSS {peak / MiB:6.0f} MiB, {(peak - baseline) / MiB:6.0f} MiB above "
                f"after-import RSS ({(peak - baseline) / sizes['layer_bf16']:.2f} x one bf16 layer, "
                f"{(peak - baseline) / sizes['model_bf16']:.2f} x the model), {seconds:.0f} s"
            )


if __name__ == "__main__":
    main()
