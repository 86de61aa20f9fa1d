#!/usr/bin/env python3
"""Render the refusal training set (prompt/completion JSONL) for a model's tokenizer."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="model folder or hub id whose chat template is used")
    parser.add_argument("--source", required=True, help="JSON: a training_data.sources entry of the config")
    parser.add_argument("--think", required=True, help="the short thought before the refusal (Appendix A.1)")
    parser.add_argument(
        "--format",
        required=True,
        choices=["chat_template", "paper_code"],
        help="chat_template: the model's chat template; paper_code: the paper code's literal DeepSeek-R1 string",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from safelora.data import build_examples, load_refusal_rows
    from safelora.io import atomic_write_jsonl

    rows = load_refusal_rows(json.loads(args.source))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    examples = build_examples(rows, tokenizer, args.think, args.format)
    atomic_write_jsonl(args.out, examples)
    print(f"{len(examples)} examples; first:\n{json.dumps(examples[0], indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
