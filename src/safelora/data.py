"""Safety fine-tuning data: DirectRefusal-style records rendered as prompt/completion pairs.

Each example becomes a prompt/completion pair (loss on the completion only, Section 4.1), in one
of two formats (`training_data.format`):

- `chat_template`: prompt = the user turn rendered with the model's chat template, generation
  prompt included (DeepSeek-R1's ends with "<think>\n"); completion = the rest of
  "<think>" + think + "</think>" + refusal + eos_token (Appendix A.1); prompt and refusal stripped.
- `paper_code`: the paper code's literal DeepSeek-R1 string (train.py:147-148): prompt =
  "<｜User｜>" + prompt + "<｜Assistant｜>", completion = "<think>" + think + "</think>" + refusal +
  "<｜end▁of▁sentence｜>", with prompt and refusal as in the data: "<think>" is in the loss and has
  no newline after it.

On a cluster the rows come from the hub (`TianshengHuang/DirectRefusal`, or the first 1,000 rows
of `anonymous4486/repnoise_beavertail` as Safety-Tax builds it); locally the same loader reads a
file with the same columns.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# The paper code's DeepSeek-R1 turn markers and end of sequence (train.py:147-148).
PAPER_CODE_USER = "<｜User｜>"
PAPER_CODE_ASSISTANT = "<｜Assistant｜>"
PAPER_CODE_EOS = "<｜end▁of▁sentence｜>"

TrainingFormat = Literal["chat_template", "paper_code"]


class DataError(ValueError):
    """A data problem, naming the file, column and row."""


@dataclass(frozen=True)
class RefusalRow:
    """A prompt and its refusal (the text after the response marker), unstripped, as in the data."""

    prompt: str
    refusal: str


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV, JSON (array) or JSONL file, read exactly as the csv and json modules read it.

    CSV is parsed from the undecoded-newline text (`newline=""`), so quoted line breaks stay in
    their field; JSONL lines end at "\\n" only, so U+2028 or a form feed inside a string is data.
    A leading UTF-8 byte-order mark (Excel writes one) is not part of the first column's name.
    Bad encoding or syntax names the file and the line; every record must be a JSON object, and
    a CSV header must name each column once.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 (byte {err.start})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read as a data file: {err.strerror}") from err
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".csv":
        return _csv_rows(path, text)
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON array of records")
        for index, row in enumerate(rows):
            _require_object(row, f"{path}: record {index}")
        return rows
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from err
            _require_object(rows[-1], f"{path}: line {lineno}")
    return rows


def _require_object(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where} is {json.dumps(record)[:40]}, not a JSON object of named fields")


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        for column, name in enumerate(header):
            if name in header[:column]:
                raise DataError(
                    f"{path}: row 1 (the header): column {column + 1} '{name}' repeats column "
                    f"{header.index(name) + 1}; each column needs its own name"
                )
        rows.extend(reader)
    except csv.Error as err:
        raise DataError(f"{path}: row {len(rows)}: {err}") from err
    return rows


def load_refusal_rows(source: dict[str, Any], name: str = "training data") -> list[RefusalRow]:
    """Load refusal rows from the hub (`hub`) or a local file (`path`) and check their fields."""
    if "path" in source:
        origin = source["path"]
        rows = read_table(origin)
    else:
        from datasets import load_dataset

        origin = f"{source['hub']} (split {source.get('split', 'train')})"
        rows = list(load_dataset(source["hub"], split=source.get("split", "train")))
    if source.get("rows"):
        rows = rows[: source["rows"]]
    if not rows:
        raise DataError(f"{origin}: no rows in {name}")
    return [_refusal_row(row, i, origin, source) for i, row in enumerate(rows)]


def _refusal_row(row: dict[str, Any], index: int, origin: str, source: dict[str, Any]) -> RefusalRow:
    values = {}
    for field in (source["prompt_field"], source["response_field"]):
        if field not in row:
            raise DataError(f"{origin}: row {index}: missing column '{field}' (columns: {', '.join(row)})")
        value = row[field]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{origin}: row {index}: column '{field}' is empty")
        values[field] = value
    refusal = values[source["response_field"]]
    marker = source.get("response_marker")
    if marker:
        if marker not in refusal:
            raise DataError(f"{origin}: row {index}: column '{source['response_field']}' has no '{marker}' marker")
        refusal = refusal.split(marker, 1)[1]
    if not refusal.strip():
        raise DataError(f"{origin}: row {index}: column '{source['response_field']}' has no refusal text")
    return RefusalRow(prompt=values[source["prompt_field"]], refusal=refusal)


def render_prompt(tokenizer: Any, user_text: str) -> str:
    """The user turn rendered with the chat template, ready for generation."""
    return render_messages(tokenizer, [{"role": "user", "content": user_text}])


def render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A conversation rendered with the chat template plus the generation prompt.

    The template's own BOS is dropped when the tokenizer adds one on encoding, so the text can be
    tokenized normally (by TRL or by generation) without a double BOS.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def template_opens_thinking(prompt_text: str) -> bool:
    """Whether the rendered prompt already opens the thinking (DeepSeek-R1's template ends with `<think>`)."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def refusal_completion(prompt_text: str, think: str, refusal: str, eos_token: str) -> str:
    """`<think>think</think>refusal<eos>`; the opening tag is left out if the prompt already ends with it."""
    opening = "" if template_opens_thinking(prompt_text) else THINK_OPEN
    return f"{opening}{think}{THINK_CLOSE}{refusal}{eos_token}"


def build_examples(
    rows: list[RefusalRow], tokenizer: Any, think: str, format: TrainingFormat = "chat_template"
) -> list[dict[str, str]]:
    """Prompt/completion pairs in `format` (see the module doc)."""
    if format == "paper_code":
        _require_tokens(tokenizer, (PAPER_CODE_USER, PAPER_CODE_ASSISTANT, PAPER_CODE_EOS, THINK_OPEN, THINK_CLOSE))
        return [paper_code_example(row, think) for row in rows]
    if format != "chat_template":
        raise DataError(f"training_data.format: unknown format {format!r} (chat_template, paper_code)")
    examples = []
    for row in rows:
        prompt = render_prompt(tokenizer, row.prompt.strip())
        examples.append(
            {
                "prompt": prompt,
                "completion": refusal_completion(prompt, think, row.refusal.strip(), tokenizer.eos_token),
            }
        )
    return examples


def paper_code_example(row: RefusalRow, think: str) -> dict[str, str]:
    """The paper code's training example (train.py:141-148), texts as in the data."""
    return {
        "prompt": f"{PAPER_CODE_USER}{row.prompt}{PAPER_CODE_ASSISTANT}",
        "completion": f"{THINK_OPEN}{think}{THINK_CLOSE}{row.refusal}{PAPER_CODE_EOS}",
    }


def _require_tokens(tokenizer: Any, tokens: tuple[str, ...]) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise DataError(
            f"training_data.format 'paper_code' is the paper code's DeepSeek-R1 string; the tokenizer "
            f"{tokenizer.name_or_path!r} has no token {', '.join(map(repr, missing))} (use format 'chat_template')"
        )
