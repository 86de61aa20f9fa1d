import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, repo) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", repo)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def deepseek_model(tmp_path_factory, repo) -> Path:
    """The tiny model with a DeepSeek-R1-style tokenizer (R1-Distill's special tokens and template)."""
    from tiny_model import build_deepseek_tokenizer, build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-r1") / "model", repo, tokenizer=build_deepseek_tokenizer(repo)
    )


@pytest.fixture(scope="session")
def deepseek_tokenizer(deepseek_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(deepseek_model)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, tiny_tokenizer) -> Path:
    """Twelve refusal examples in the workflow's training-set format."""
    from safelora.data import RefusalRow, build_examples
    from safelora.io import atomic_write_jsonl

    rows = [RefusalRow(f"How do I do harmful thing number {i}?", "I'm sorry, I can't help.") for i in range(12)]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    atomic_write_jsonl(path, build_examples(rows, tiny_tokenizer, "I should not answer this question!"))
    return path
