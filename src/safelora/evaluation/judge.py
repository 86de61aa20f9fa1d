"""Judge jobs: render each sample's judge conversation, generate greedily, parse the verdicts.

A judge job covers every checkpoint of one run on one benchmark: the judge model loads once, in
this process, and each checkpoint's verdicts are written atomically to a file of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safelora.data import render_messages
from safelora.evaluation.generation import Backend, ModelRef, make_backend
from safelora.evaluation.graders import judge_messages, parse_judge, settled_without_judge, verdict
from safelora.io import atomic_write_jsonl, read_generations, read_jsonl
from safelora.settings import JudgeSettings, Sampling


@dataclass(frozen=True)
class JudgedCheckpoint:
    """One checkpoint's generations, its verdict file, and (for a fallback judge) the verdicts of
    the grader it backs up."""

    generations: Path
    out: Path
    fallback: Path | None = None


def run_judge(settings: JudgeSettings, checkpoints: list[JudgedCheckpoint], items_path: Path, batch_size: int) -> None:
    """Judge every checkpoint's samples (or, with a fallback, those it did not pass). Every input
    is read and checked before the judge model loads; it loads once, when a sample first needs it."""
    judge = settings.judge
    records = read_jsonl(items_path)
    items = {str(item["id"]): item for item in records}
    generations = [read_generations(c.generations, records) for c in checkpoints]
    settled = [
        settled_without_judge(judge, gens, read_jsonl(c.fallback) if c.fallback else None)
        for c, gens in zip(checkpoints, generations, strict=True)
    ]
    backend: Backend | None = None
    sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=judge.max_new_tokens, seed=0)
    for checkpoint, gens, done in zip(checkpoints, generations, settled, strict=True):
        ask = [i for i in range(len(gens)) if i not in done]
        outputs: dict[int, str] = {}
        if ask:
            if backend is None:
                ref = ModelRef(base=judge.model, tensor_parallel=judge.tensor_parallel)
                backend = make_backend(settings.backend, ref, seed=0, batch_size=batch_size)
                print(f"judge model {ref.base} loaded ({backend.engine})", flush=True)
            prompts = [
                render_messages(backend.tokenizer, judge_messages(judge.kind, gens[i], items[gens[i]["prompt_id"]]))
                for i in ask
            ]
            completions = backend.generate(prompts, sampling, seeds=[0] * len(prompts))
            outputs = {i: c[0].text for i, c in zip(ask, completions, strict=True)}
        name = checkpoint.out.stem
        verdicts = []
        for i, gen in enumerate(gens):
            value, label, raw = done[i] if i in done else (*parse_judge(judge, settings.kind, outputs[i]), outputs[i])
            verdicts.append(verdict(gen, name, value, label, raw))
        atomic_write_jsonl(checkpoint.out, verdicts)
        unparseable = sum(v["label"] == "unparseable" for v in verdicts)
        print(f"{checkpoint.out}: {len(verdicts)} verdicts by {name}; {len(ask)} judged; {unparseable} unparseable")
