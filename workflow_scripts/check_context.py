#!/usr/bin/env python3
"""Check that every prompt of a benchmark, plus its generation budget, fits a model's context.

A prompt that does not fit fails every attempt the same way, so this runs as its own job, which
the workflow never retries (rule check_context), with the tokenizer alone: generation starts only
when it passed. Writes the longest prompt's length as JSON.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from safelora.settings import ContextSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the model folder or hub id whose tokenizer generation uses")
    parser.add_argument("--items", required=True, help="BenchmarkItem JSONL")
    parser.add_argument(
        "--settings",
        type=ContextSettings.from_json,
        required=True,
        help="JSON of safelora.settings.ContextSettings: max_new_tokens (the benchmark's), max_model_len (the model's)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from safelora.data import render_prompt
    from safelora.evaluation.generation import TokenizerOnly, check_context
    from safelora.io import atomic_write_json, read_jsonl

    counter = TokenizerOnly(AutoTokenizer.from_pretrained(args.base))
    items = read_jsonl(args.items)
    prompts = [render_prompt(counter.tokenizer, item["prompt"]) for item in items]
    ids = [str(item["id"]) for item in items]
    budget = args.settings
    try:
        check_context(counter, prompts, ids, budget.max_new_tokens, budget.max_model_len)
    except ValueError as err:
        print(f"{args.items}: {err}", file=sys.stderr)
        return 1
    lengths = [counter.count_tokens(prompt) for prompt in prompts]
    longest = max(range(len(ids)), key=lengths.__getitem__)
    atomic_write_json(
        args.out,
        {
            "longest_prompt": ids[longest],
            "prompt_tokens": lengths[longest],
            "max_new_tokens": budget.max_new_tokens,
            "max_model_len": budget.max_model_len,
        },
    )
    print(f"{len(ids)} prompts fit: the longest, '{ids[longest]}', needs {lengths[longest] + budget.max_new_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
