"""Benchmark loaders: every benchmark becomes a list of `BenchmarkItem` records.

The user message (`prompt`) is final here: templates and GPQA's choice shuffling are applied
when the items are built, so generation only renders the chat template.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safelora.data import DataError, read_table
from safelora.evaluation.parsers import clean_choice, gpqa_prompt, shuffle_choices
from safelora.io import atomic_write_json, stable_json


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def planned_items(bench: dict[str, Any]) -> int:
    """Items a benchmark's file holds: its `problems` (GPQA: x its shuffle seeds), capped by `limit`."""
    items = bench["problems"] * len(bench.get("shuffle_seeds") or [None])
    return min(items, bench["limit"]) if bench.get("limit") else items


def load_benchmark(name: str, bench: dict[str, Any]) -> list[BenchmarkItem]:
    """Items of one configured benchmark, checked for empty prompts and duplicate ids, and (given
    `problems`, as the workflow does) for the problem count that cost and runtime estimates use."""
    source = bench["source"]
    if "evalplus" in source:
        items = _evalplus_items(source)
    elif "hub" in source and bench["kind"] == "multiple_choice":
        from datasets import load_dataset

        rows = load_dataset(source["hub"], source.get("config"), split=source.get("split", "train"))
        items = gpqa_items(list(rows), bench)
    else:
        items = _table_items(source)
    if "problems" in bench and len(items) != planned_items({**bench, "limit": None}):
        raise DataError(
            f"benchmark '{name}': {_origin(source)} holds {len(items)} items, but `benchmarks.{name}.problems` "
            f"is {bench['problems']}{' (x shuffle seeds)' if bench.get('shuffle_seeds') else ''}: "
            "set it to the source's problem count (it sizes the GPU-hour estimate and the SLURM runtimes)"
        )
    template = bench.get("prompt_template")
    if template and bench["kind"] != "multiple_choice":
        items = [
            BenchmarkItem(i.id, template.format(problem=i.prompt), i.answer, {**i.meta, "problem": i.prompt})
            for i in items
        ]
    if bench.get("limit"):
        items = items[: bench["limit"]]
    _check_items(name, items)
    return items


def _origin(source: dict[str, Any]) -> str:
    return source.get("csv") or source.get("jsonl") or source.get("path") or source.get("hub", "?")


def _table_items(source: dict[str, Any]) -> list[BenchmarkItem]:
    origin = _origin(source)
    if "hub" in source:
        from datasets import load_dataset

        rows = list(load_dataset(source["hub"], source.get("config"), split=source.get("split", "train")))
    else:
        rows = read_table(origin)
    for key, value in source.get("filter", {}).items():
        rows = [row for row in rows if str(row.get(key)) == value]
    prompt_field = source["prompt_field"]
    items = []
    answer_field = source.get("answer_field")
    for index, row in enumerate(rows):
        for key in ("prompt_field", "answer_field", "id_field"):
            if source.get(key) and source[key] not in row:
                raise DataError(
                    f"{origin}: row {index}: missing column '{source[key]}' (source.{key}; "
                    f"columns: {', '.join(map(str, row))})"
                )
        item_id = str(row[source["id_field"]]) if source.get("id_field") else str(row.get("id", index))
        meta = {k: v for k, v in row.items() if k not in (prompt_field, answer_field) and _is_scalar(v)}
        items.append(
            BenchmarkItem(
                id=item_id,
                prompt=str(row[prompt_field] or ""),
                answer=str(row[answer_field]) if answer_field else None,
                meta=meta,
            )
        )
    return items


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _evalplus_items(source: dict[str, Any]) -> list[BenchmarkItem]:
    path = source["path"]
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            row = json.loads(line)
            for key in ("task_id", "prompt", "entry_point"):
                if key not in row:
                    raise DataError(f"{path}: line {lineno}: missing field '{key}'")
            items.append(
                BenchmarkItem(id=row["task_id"], prompt=row["prompt"].strip(), meta={"entry_point": row["entry_point"]})
            )
    return items


def gpqa_items(rows: list[dict[str, Any]], bench: dict[str, Any]) -> list[BenchmarkItem]:
    """One item per (question, shuffle seed): the seed is one of the paper code's lm-eval runs.

    A shuffle is the code's ``process_docs`` after ``random.seed(seed)``: one ``random.Random``
    shuffles the choices of every question in dataset order. With ``choice_order: shared`` every
    run asks the order of the first seed's shuffle (the code's runs most likely shared one order,
    served by `datasets`' map cache); with ``per_seed`` each run shuffles by its own seed. The
    question is used as stored; the choices are cleaned by ``clean_choice``
    (``choice_cleaning: paper_code``) or only stripped (``strip``). Item ids are
    ``<Record ID>@<seed>``, ``meta.shuffle_seed`` is the seed whose order the prompt shows; graders
    file sample j of an item as sample ``meta.sample_offset + j`` of ``meta.question``, so scores
    see one problem per question with seeds x n samples.
    """
    seeds = bench["shuffle_seeds"]
    n = bench["sampling"]["n"]
    orders: dict[int, list[tuple[str, str, str]]] = {}
    items = []
    for position, seed in enumerate(seeds):
        order_seed = seed if bench["choice_order"] == "per_seed" else seeds[0]
        if order_seed not in orders:
            orders[order_seed] = _shuffled_questions(rows, bench, order_seed)
        for question_id, prompt, letter in orders[order_seed]:
            meta = {"question": question_id, "shuffle_seed": order_seed, "sample_offset": position * n}
            items.append(BenchmarkItem(id=f"{question_id}@{seed}", prompt=prompt, answer=letter, meta=meta))
    return items


def _shuffled_questions(rows: list[dict[str, Any]], bench: dict[str, Any], seed: int) -> list[tuple[str, str, str]]:
    """(question id, prompt, correct letter) of every row, its choices shuffled by one
    ``random.Random(seed)`` in dataset order."""
    clean = clean_choice if bench["choice_cleaning"] == "paper_code" else str.strip
    rng = random.Random(seed)
    questions = []
    for index, row in enumerate(rows):
        incorrect = [clean(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)]
        choices, letter = shuffle_choices(rng, clean(row["Correct Answer"]), incorrect)
        prompt = gpqa_prompt(bench["prompt_template"], row["Question"], choices)
        questions.append((str(row.get("Record ID", index)), prompt, letter))
    return questions


def _check_items(name: str, items: list[BenchmarkItem]) -> None:
    if not items:
        raise DataError(f"benchmark '{name}': no items")
    seen: set[str] = set()
    for item in items:
        if not item.prompt.strip():
            raise DataError(f"benchmark '{name}': item '{item.id}' has an empty prompt")
        if item.id in seen:
            raise DataError(f"benchmark '{name}': duplicate item id '{item.id}'")
        seen.add(item.id)


def check_local_data(config: dict[str, Any], cache: str | os.PathLike[str] | None = None) -> None:
    """Load every local data file the config names, so bad data fails before any job is planned.

    Hub sources are checked when their job loads them (no network at planning time). With `cache`
    (a JSON file; the Snakefile's is in `.snakemake/`), a check that passed is remembered by the
    file's path, size and modification time and the settings it was loaded with, so an unchanged
    file is not parsed again at every plan (the EvalPlus files took ~0.4 s); a changed file or
    setting is checked again.
    """
    from safelora.data import load_refusal_rows

    checks = []
    for name, source in config["training_data"]["sources"].items():
        if "path" in source and name == config["training_data"]["source"]:
            label = f"training_data.sources.{name}"
            checks.append((label, source, source["path"], lambda s=source, n=label: load_refusal_rows(s, name=n)))
    for name, bench in config["benchmarks"].items():
        if "hub" not in bench["source"]:
            checks.append((name, bench, _origin(bench["source"]), lambda n=name, b=bench: load_benchmark(n, b)))
    passed = _read_passed(cache)
    now = set()
    for label, settings, path, check in checks:
        key = _check_key(label, settings, path)
        if key is None or key not in passed:
            check()
        if key is not None:
            now.add(key)
    if cache is not None and now != passed:
        atomic_write_json(cache, sorted(now))


def _check_key(label: str, settings: dict[str, Any], path: str) -> str | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None  # the check itself reports the missing file
    return stable_json([label, settings, os.path.abspath(path), stat.st_size, stat.st_mtime_ns])


def _read_passed(cache: str | os.PathLike[str] | None) -> set[str]:
    try:
        return set(json.loads(Path(cache).read_text(encoding="utf-8"))) if cache else set()
    except (OSError, ValueError, TypeError):
        return set()  # absent or unreadable: check everything
