"""Safety alignment of reasoning LLMs with LoRA: the workflow's importable logic."""

__version__ = "0.1.0"
