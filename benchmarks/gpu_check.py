#!/usr/bin/env python3
"""GPU check of the workflow's own CLIs on a random Qwen2 built locally: training, generation, judging.

Within ~10 minutes on one GPU and without network, it runs, each as the workflow's rule would:

1. `build_train_set.py` and `build_benchmark.py` on the shipped demo data (no hub);
2. `launch_train.sh 1 1 train.py`: LoRA (r=4, MLP) and full fine-tuning under DeepSpeed ZeRO-3, a
   few optimizer steps each (torchrun, one process per GPU), bf16 on a GPU;
3. `generate.py` from both checkpoints (LoRA served as an adapter) with the transformers backend,
   and with vLLM where it is installed;
4. `grade.py` (refusal_match) and `judge.py` (a Llama-Guard-kind judge served by the same random
   model: its verdicts are unparseable by design; the point is that the judge job runs).

Printed per step: wall time, optimizer step time (the trainer's train_runtime / global_step),
tokens/s for generation, and peak memory: GPU memory in use (nvidia-smi, polled every 0.2 s,
minus what was in use before) on a GPU, the process tree's RSS with --cpu.

The model: Qwen2.5-0.5B's shape (24 layers, hidden 896) with the test tokenizer's 600-token
vocabulary on a GPU; the 2-layer test shape with --cpu (`python benchmarks/gpu_check.py --cpu`,
a smoke test of the same path, run by tests/test_gpu_check.py).

A GPU machine without network that has torch, transformers, peft and accelerate but not trl,
deepspeed or vLLM: bring the missing wheels in a `.whl` folder. On a machine with network and the
same Python version (wheel tags must match):

    pip download --no-deps -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
        xxhash==4.1.0 pyarrow==26.0.1 pandas==3.1.1 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 \
        py-cpuinfo==9.0.0 einops==0.8.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
        referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
    pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8   # an sdist only: built here

(the versions of .venv here; check with `pip list`), then on the GPU machine

    pip install --no-index --find-links .whl trl deepspeed jsonschema
    python benchmarks/gpu_check.py

vLLM's wheel (hundreds of MB plus its CUDA torch) is not brought: without it the vLLM step prints
that it was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow_scripts"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from safelora.housekeeping import process_tree_rss_mb  # noqa: E402
from safelora.settings import GenerationSettings, Judge, JudgeSettings, ModelSettings, Sampling  # noqa: E402

ZERO3 = {"stage": 3, "offload_optimizer": False, "offload_params": False}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="smoke test on CPU: tiny model, float32, no GPU needed")
    parser.add_argument("--rows", type=int, default=32, help="training rows (steps = rows / 4 per epoch)")
    parser.add_argument("--prompts", type=int, default=8, help="StrongREJECT demo prompts to generate for")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per prompt")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build everything (default: a temp dir)")
    return parser.parse_args()


class PeakMemory:
    """Peak memory while a command runs: GPU memory in use (nvidia-smi) or the process tree's RSS."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.baseline = self._gpu_used() if gpu else 0.0

    @staticmethod
    def _gpu_used() -> float:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return float(out.split()[0])

    def run(self, cmd: list[str], log: Path) -> tuple[float, float]:
        """(wall seconds, peak MiB) of `cmd`; its output goes to `log`; a failure raises with the log's tail."""
        start = time.monotonic()
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
            peak = 0.0
            stop = threading.Event()

            def poll() -> None:
                nonlocal peak
                while not stop.wait(0.2):
                    used = self._gpu_used() - self.baseline if self.gpu else process_tree_rss_mb(proc.pid)
                    peak = max(peak, used)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            code = proc.wait()
            stop.set()
            poller.join()
        wall = time.monotonic() - start
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
            raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {code}; {log}:\n{tail}")
        return wall, peak


def build_model(root: Path, shape: str, dtype: str) -> Path:
    import torch
    from tiny_model import SHAPES, build_tokenizer, random_qwen2

    tokenizer = build_tokenizer(REPO)
    model = random_qwen2(tokenizer, **SHAPES[shape], max_positions=2048, seed=0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = root / "base"
    model.to(getattr(torch, dtype)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def check_config(base: Path, dtype: str, rows: int, prompts: int, max_new_tokens: int) -> dict:
    """The demo config on the built model: LoRA r=4 (MLP) and full fine-tuning under ZeRO-3, one epoch."""
    from safelora import config as grid

    config = yaml.safe_load((REPO / "config/demo.yaml").read_text(encoding="utf-8"))
    config["models"] = {
        "check": {
            "source": {"path": str(base)},
            "size": "check",
            "dtype": dtype,
            "max_model_len": 2048,
            "tensor_parallel": 1,
        }
    }
    source = config["training_data"]["sources"]["demo"]
    source.update(path=str(REPO / source["path"]), rows=rows)
    for method in ("full", "lora"):
        zero3 = method == "full"  # ZeRO-3 runs one process per GPU (parallelism data_parallel)
        config["training"][method].update(
            num_train_epochs=1,
            deepspeed=ZERO3 if zero3 else None,
            parallelism="data_parallel" if zero3 else "model_split",
        )
        config["training"][method]["per_model"] = {
            "check": {"gpus": 1, "per_device_train_batch_size": 4, "global_batch": 4}
        }
    config["runs"] = [
        {"name": "full", "method": "full", "models": ["check"]},
        {"name": "lora-r4-mlp", "method": "lora", "rank": 4, "targets": "mlp", "models": ["check"]},
    ]
    bench = config["benchmarks"]["strongreject"]
    bench["source"]["csv"] = str(REPO / bench["source"]["csv"])
    bench["limit"] = prompts
    bench["sampling"]["max_new_tokens"] = max_new_tokens
    grid.complete_config(config)
    return config


def train_step(memory: PeakMemory, work: Path, config: dict, run: str, data: Path, base: Path) -> dict:
    from safelora import config as grid

    folder = work / run
    folder.mkdir()
    recipe = folder / "recipe.yaml"
    resolved = grid.training_recipe(config, "check", run)
    recipe.write_text(yaml.safe_dump(resolved), encoding="utf-8")
    manifest = folder / "manifest.json"
    gpus = "0" if not memory.gpu else "1"
    wall, peak = memory.run(
        [
            "bash",
            str(SCRIPTS / "launch_train.sh"),
            gpus,
            "1",
            resolved["safelora"]["parallelism"],
            str(SCRIPTS / "train.py"),
            "--recipe",
            str(recipe),
            "--train-data",
            str(data),
            "--base",
            str(base),
            "--state-dir",
            str(folder / "state"),
            "--checkpoint-dir",
            str(folder / "checkpoints"),
            "--manifest",
            str(manifest),
            "--mem-mb",
            "0",
        ],
        folder / "train.log",
    )
    record = json.loads(manifest.read_text(encoding="utf-8"))
    log_history = json.loads(Path(record["training_log"]).read_text(encoding="utf-8"))["log_history"]
    runtime = next(e["train_runtime"] for e in reversed(log_history) if "train_runtime" in e)
    steps = record["global_step"]
    print(
        f"train {run:12s} {steps} steps  step {runtime / steps:6.2f} s  wall {wall:6.1f} s  "
        f"peak {'GPU' if memory.gpu else 'RSS'} {peak:8.0f} MiB  loss {record['epochs'][0]['train_loss']:.3f}",
        flush=True,
    )
    return record


def generate_step(
    memory: PeakMemory, work: Path, config: dict, name: str, checkpoint: list[str], items: Path, backend: str
) -> Path:
    model = config["models"]["check"]
    settings = GenerationSettings(
        backend,
        8,
        Sampling.from_config(config, "strongreject"),
        ModelSettings(model["dtype"], model["max_model_len"], tensor_parallel=1, max_lora_rank=8),
    )
    out = work / f"generations-{name}-{backend}.jsonl"
    wall, peak = memory.run(
        [
            sys.executable,
            str(SCRIPTS / "generate.py"),
            *checkpoint,
            "--items",
            str(items),
            "--settings",
            settings.to_json(),
            "--mem-mb",
            "0",
            "--out",
            str(out),
        ],
        work / f"generate-{name}-{backend}.log",
    )
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    tokens = sum(r["completion_tokens"] for r in records)
    print(
        f"generate {name:9s} {backend:12s} {len(records)} samples  {tokens} tokens  {tokens / wall:7.1f} tok/s "
        f"(wall {wall:5.1f} s, with load)  peak {'GPU' if memory.gpu else 'RSS'} {peak:8.0f} MiB",
        flush=True,
    )
    return out


def judge_step(memory: PeakMemory, work: Path, generations: Path, items: Path, base: Path) -> None:
    out = work / "verdicts-refusal_match.jsonl"
    wall, _ = memory.run(
        [
            sys.executable,
            str(SCRIPTS / "grade.py"),
            "--grader",
            "refusal_match",
            "--kind",
            "safety",
            "--generations",
            str(generations),
            "--items",
            str(items),
            "--out",
            str(out),
        ],
        work / "grade.log",
    )
    verdicts = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    print(f"grade    refusal_match  {len(verdicts)} verdicts  wall {wall:5.1f} s", flush=True)
    judge = Judge("llama_guard", str(base), 1, 4, fallback_for=None, unboxed=None, unparseable=None, version=1)
    out = work / "verdicts-llama_guard.jsonl"
    wall, peak = memory.run(
        [
            sys.executable,
            str(SCRIPTS / "judge.py"),
            "--settings",
            JudgeSettings(judge, kind="safety", backend="transformers").to_json(),
            "--generations",
            str(generations),
            "--items",
            str(items),
            "--mem-mb",
            "0",
            "--out",
            str(out),
        ],
        work / "judge.log",
    )
    verdicts = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    unparseable = sum(v["value"] is None for v in verdicts)
    print(
        f"judge    llama_guard    {len(verdicts)} verdicts ({unparseable} unparseable: random judge)  "
        f"wall {wall:5.1f} s  peak {'GPU' if memory.gpu else 'RSS'} {peak:8.0f} MiB",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the CPU smoke test", file=sys.stderr)
        return 2
    missing = [m for m in ("trl", "deepspeed", "peft", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"missing packages {missing}: bring their wheels (see this script's docstring)", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    shape, dtype = ("tiny", "float32") if args.cpu else ("qwen2.5-0.5b", "bfloat16")
    print(f"gpu_check on {device}: random Qwen2 ({shape}), {dtype}, torch {torch.__version__}", flush=True)
    memory = PeakMemory(gpu=not args.cpu)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="safelora-gpu-check-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = build_model(work, shape, dtype)
        config = check_config(base, dtype, args.rows, args.prompts, args.max_new_tokens)
        data, items = work / "train.jsonl", work / "strongreject.jsonl"
        source = config["training_data"]["sources"]["demo"]
        memory.run(
            [
                sys.executable,
                str(SCRIPTS / "build_train_set.py"),
                "--tokenizer",
                str(base),
                "--source",
                json.dumps(source),
                "--think",
                config["training_data"]["think"],
                "--format",
                config["training_data"]["format"],
                "--out",
                str(data),
            ],
            work / "build_train_set.log",
        )
        spec = {k: v for k, v in config["benchmarks"]["strongreject"].items() if k in ("kind", "source", "limit")}
        memory.run(
            [
                sys.executable,
                str(SCRIPTS / "build_benchmark.py"),
                "--name",
                "strongreject",
                "--spec",
                json.dumps(spec),
                "--problems",
                str(config["benchmarks"]["strongreject"]["problems"]),
                "--out",
                str(items),
            ],
            work / "build_benchmark.log",
        )
        lora = train_step(memory, work, config, "lora-r4-mlp", data, base)
        full = train_step(memory, work, config, "full", data, base)
        checkpoints = {
            "lora": ["--base", str(base), "--adapter", lora["epochs"][0]["path"]],
            "full": ["--base", full["epochs"][0]["path"]],
        }
        backends = ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") and not args.cpu else [])
        if "vllm" not in backends:
            print("generate vllm: skipped (vllm not installed, or --cpu)", flush=True)
        generations = {
            (name, backend): generate_step(memory, work, config, name, ckpt, items, backend)
            for name, ckpt in checkpoints.items()
            for backend in backends
        }
        judge_step(memory, work, generations["lora", "transformers"], items, base)
    print(f"gpu_check done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
