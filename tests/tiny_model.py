"""A tiny but real Qwen2 model and ChatML tokenizer, built locally for tests (no hub)."""

from __future__ import annotations

from pathlib import Path

from safelora.config import lora_fields

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The Qwen2 projections (config.yaml analysis.modules).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _corpus(repo: Path) -> list[str]:
    lines = (repo / "data/demo/refusals.jsonl").read_text(encoding="utf-8").splitlines()
    lines += (repo / "data/xstest/xstest_prompts.csv").read_text(encoding="utf-8").splitlines()
    lines += [f"What is {a} + {b}? {a + b}" for a in range(10) for b in range(10)]
    lines += ["<think>I should not answer this question!</think>", "def f(x):\n    return x + 1"]
    return lines


def _bpe(repo: Path, special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(repo), trainer)
    return tok


def build_tokenizer(repo: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(repo, SPECIAL),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


# DeepSeek-R1-Distill-Qwen's tokens: special BOS, EOS and turn markers, `<think>`/`</think>` added as
# ordinary tokens; the pad token the paper code sets (train.py:237). Its chat template reduced to
# user and assistant turns (no system prompt, no tools); the generation prompt opens `<think>\n`.
DEEPSEEK_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<|fim_pad|>"]
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"
)


def build_deepseek_tokenizer(repo: Path):
    """A tiny BPE tokenizer with DeepSeek-R1-Distill's special tokens and template, adding BOS on
    encoding as R1-Distill's does (`add_bos_token: true`)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(repo, DEEPSEEK_SPECIAL)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    bos = DEEPSEEK_SPECIAL[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<｜end▁of▁sentence｜>",
        pad_token="<|fim_pad|>",
        chat_template=DEEPSEEK_TEMPLATE,
    )


# The GPU checks' random models (benchmarks/gpu_check.py, gpu_vllm_lora.py): Qwen2.5-0.5B's shape, and a tiny one.
SHAPES = {
    "qwen2.5-0.5b": {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2},
    "tiny": {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 4, "kv_heads": 2},
}


def random_qwen2(
    tokenizer, *, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, max_positions: int, seed: int
):
    """A Qwen2 with random weights and tied embeddings, sized by the arguments, for `tokenizer`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def build_tiny_model(out: Path, repo: Path, hidden: int = 128, layers: int = 2, seed: int = 0, tokenizer=None) -> Path:
    """Save a random-weight Qwen2 (head size 32, as vLLM needs) with its tokenizer (default: the
    ChatML one) into `out`."""
    tokenizer = tokenizer or build_tokenizer(repo)
    model = random_qwen2(
        tokenizer,
        hidden=hidden,
        intermediate=2 * hidden,
        layers=layers,
        heads=hidden // 32,
        kv_heads=max(1, hidden // 64),
        max_positions=1024,
        seed=seed,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_adapter(model_dir: Path, out: Path, seed: int, targets: list[str], **lora_options):
    """A rank-4 PEFT adapter on the model with random (non-zero) A and B, saved with the tokenizer
    as training exports it; returns the PEFT model. `lora_options`: more `LoraConfig` arguments."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        model,
        LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": targets, "init_lora_weights": False, **lora_options}),
    )
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return peft_model


# A training recipe as safelora.config.training_recipe writes it, sized for the tiny model.
BASE_SFT = {
    "num_train_epochs": 2,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "gradient_checkpointing": False,
    "logging_steps": 1,
    "bf16": True,
    "fp16": False,
    "completion_only_loss": True,
    "per_device_train_batch_size": 2,
    "max_length": 128,
    "seed": 7,
    "data_seed": 7,
}
BASE_OPTIONS = {
    "model": "tiny",
    "model_source": {"path": "tiny"},
    "dtype": "float32",
    "data_source": "tiny",
    "data": {"think": "I should not answer this question!"},
    "version": 1,
    "gpus": 1,
    "global_batch": 4,
    "parallelism": "model_split",
    "deepspeed": None,
    "ortho_reg": None,
}
LORA = lora_fields(4, ["gate_proj", "up_proj", "down_proj"], alpha=16, dropout=0.0)


def recipe(method, sft=None, lora=None, **options):
    """A recipe of `method` ("full" or "lora"): `sft` and `lora` replace fields, `options` project options."""
    r = {"sft": {**BASE_SFT, **(sft or {})}, "safelora": {**BASE_OPTIONS, "method": method, "run": method, **options}}
    if method == "lora":
        r["lora"] = lora or LORA
    return r
