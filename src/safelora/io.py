"""Atomic file writers and JSON helpers.

Every output of the workflow is written to a temporary file in the destination folder and then
renamed into place, so an interrupted job never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

RECORD_SCHEMAS = Path(str(resources.files("safelora") / "schemas" / "records"))


def _default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give, instead of mkstemp's private 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def stable_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variation: a stable representation for params."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@contextlib.contextmanager
def _temporary_sibling(path: Path, suffix: str = "") -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _default_mode())
    try:
        yield tmp_path
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside `path` for any writer; it replaces `path` on success."""
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        yield tmp
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class RecordError(ValueError):
    """A record that does not match its kind's schema; the message names the kind, the file and the field."""


@functools.cache
def record_validator(kind: str) -> Any:
    """The jsonschema validator of `schemas/records/<kind>.schema.yaml`."""
    import jsonschema
    import yaml

    schema = yaml.safe_load((RECORD_SCHEMAS / f"{kind}.schema.yaml").read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return validator_cls(schema)


def check_record(path: str | os.PathLike[str], kind: str, record: Any) -> None:
    """Raise RecordError unless `record` matches `schemas/records/<kind>.schema.yaml`, naming the file and field."""
    import jsonschema

    error = jsonschema.exceptions.best_match(record_validator(kind).iter_errors(record))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise RecordError(f"{kind} record {path}: invalid value at '{where}': {error.message}")


def write_record(path: str | os.PathLike[str], kind: str, record: Any) -> None:
    """Validate `record` against its kind's schema, then write it as JSON atomically."""
    check_record(path, kind, record)
    atomic_write_json(path, record)


def read_record(path: str | os.PathLike[str], kind: str) -> Any:
    """A record of `kind`, validated against its schema again where it is read: a file edited after
    `write_record` wrote it is refused naming the file and field (unreadable JSON names the file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON: {err.msg} (line {err.lineno})") from err
    check_record(path, kind, record)
    return record


class DamagedFileError(ValueError):
    """A file that does not hold what its producer writes (cut, duplicated or corrupt), naming file and line."""


def _jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line ending in "\\n"; bytes that are not UTF-8 name the file and line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {lineno} is not valid UTF-8 (byte {err.start} of the line)") from err


def _json_line(path: str | os.PathLike[str], lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from err


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read JSON Lines; a malformed line is an error naming the file and line number."""
    return [_json_line(path, lineno, line) for lineno, line in _jsonl_lines(path) if line.strip()]


def read_generations(path: str | os.PathLike[str], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generation records, checked to be exactly the benchmark's `items` (BenchmarkItem records) x n
    samples, once each.

    A damaged file (cut, a repeated or foreign record, bad bytes) is renamed to `<name>.damaged`,
    so no job reads it again and any job that needs it regenerates it, and the error names the
    file, the line and the command that regenerates it and what was computed from it.
    """
    path = Path(path)
    ids = [str(item["id"]) for item in items]
    try:
        records = [_json_line(path, lineno, line) for lineno, line in _jsonl_lines(path)]
        check_generations(records, ids, str(path))
    except ValueError as err:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        raise DamagedFileError(
            f"{err} (moved to {aside.name}; regenerate it with: snakemake --forcerun {path})"
        ) from err
    return records


def check_generations(records: list[dict[str, Any]], ids: list[str], where: str) -> None:
    """Raise ValueError unless `records` (line k = record k) cover each id x sample index 0..n-1 once."""
    if not records:
        raise ValueError(f"{where}: no generation records for {len(ids)} items")
    n = records[0].get("sampling", {}).get("n") if isinstance(records[0], dict) else None
    expected = {(i, s) for i in ids for s in range(n)} if isinstance(n, int) else set()
    for lineno, record in enumerate(records, start=1):
        if not isinstance(record, dict) or record.get("sampling", {}).get("n") != n:
            raise ValueError(f"{where}: line {lineno} is not a Generation record with the file's n={n}")
    keys = [(str(r.get("prompt_id")), r.get("sample_index")) for r in records]
    check_samples(keys, expected, where, f"{len(ids)} items x n={n}")


def check_samples(keys: list[tuple[str, Any]], expected: set[tuple[str, int]], where: str, described: str) -> None:
    """Raise ValueError unless `keys` ((prompt id, sample index) of line k = key k) cover `expected`
    once each, naming the line; `described` says what was expected ("4 items x n=2")."""
    seen: dict[tuple[str, Any], int] = {}
    for lineno, key in enumerate(keys, start=1):
        if key in seen:
            raise ValueError(f"{where}: line {lineno} repeats prompt '{key[0]}' sample {key[1]} of line {seen[key]}")
        if key not in expected:
            raise ValueError(
                f"{where}: line {lineno}: prompt '{key[0]}' sample {key[1]} is not one of the benchmark's {described}"
            )
        seen[key] = lineno
    missing = [key for key in sorted(expected) if key not in seen]
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} of {len(expected)} samples missing ({described}) after "
            f"line {len(keys)}, e.g. prompt '{missing[0][0]}' sample {missing[0][1]}"
        )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
