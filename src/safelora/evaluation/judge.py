"""Judge jobs: render each sample's judge conversation, generate greedily, parse the verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safelora.data import render_messages
from safelora.evaluation.engines import open_backend
from safelora.evaluation.generation import ModelRef, Sampling
from safelora.evaluation.graders import judge_messages, parse_judge, settled_without_judge, verdict
from safelora.io import atomic_write_jsonl, read_generations, read_jsonl


def run_judge(
    spec: dict[str, Any],
    kind: str,
    generations_path: Path,
    items_path: Path,
    fallback_path: Path | None,
    backend_name: str,
    batch_size: int,
    out: Path,
    engine_idle_s: float = 0,
) -> None:
    """Judge every sample (or, with a fallback, those it did not pass); `engine_idle_s` > 0 shares
    the node's engine of this judge model with the other judge jobs (safelora.evaluation.engines)."""
    records = read_jsonl(items_path)
    generations = read_generations(generations_path, records)
    items = {str(item["id"]): item for item in records}
    fallback = read_jsonl(fallback_path) if fallback_path else None
    settled = settled_without_judge(spec, generations, fallback)
    ask = [i for i in range(len(generations)) if i not in settled]
    name = out.stem
    outputs: dict[int, str] = {}
    if ask:
        ref = ModelRef(base=spec.get("hub") or spec["path"], tensor_parallel=spec.get("tensor_parallel", 1))
        backend = open_backend(backend_name, ref, seed=0, batch_size=batch_size, idle_s=engine_idle_s)
        prompts = [
            render_messages(
                backend.tokenizer, judge_messages(spec["kind"], generations[i], items[generations[i]["prompt_id"]])
            )
            for i in ask
        ]
        sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=spec.get("max_new_tokens", 32), seed=0)
        completions = backend.generate(prompts, sampling, seeds=[0] * len(prompts))
        outputs = {i: c[0].text for i, c in zip(ask, completions, strict=True)}
    verdicts = []
    for i, gen in enumerate(generations):
        if i in settled:
            verdicts.append(verdict(gen, name, *settled[i]))
            continue
        value, label = parse_judge(spec, kind, outputs[i])
        verdicts.append(verdict(gen, name, value, label, outputs[i]))
    atomic_write_jsonl(out, verdicts)
    unparseable = sum(v["label"] == "unparseable" for v in verdicts)
    print(f"{len(verdicts)} verdicts by {name}; {len(ask)} judged; {unparseable} unparseable")
