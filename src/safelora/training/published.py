"""Published epoch checkpoints as the training manifest records them, and what changed since.

The manifest records every file of each `epoch-<e>/` folder: size, sha256 and modification time.
Two checks read that record:

- at planning (`changes_since_training`, a param of every rule that loads a trained checkpoint):
  sizes and modification times only, so it costs a `stat` per file. A changed value makes
  `snakemake -n` list the jobs that read the checkpoint, with the file in the reason. The
  modification time catches what Snakemake's own newer-than-output test misses: a deleted
  folder, and a file replaced by `cp -p` of an older one.
- in every job that loads the checkpoint (`verify`): sizes and sha256, failing with the file, the
  manifest and how to rebuild, so no result is computed from weights other than the trained ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# The planning check's value while every recorded file is as trained (or nothing is trained yet):
# the same before and after training, so only a change after training reruns anything.
AS_TRAINED = "as trained"


class CheckpointChangedError(RuntimeError):
    """A published checkpoint's files differ from what the training manifest recorded."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Name -> size, sha256 and modification time (ns) of each file of a published epoch folder."""
    records = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        records[path.name] = {"size": stat.st_size, "sha256": sha256(path), "mtime_ns": stat.st_mtime_ns}
    return records


def manifest_of(folder: Path) -> Path | None:
    """The training manifest of `<results>/checkpoints/{model}/{run}/{hash}/epoch-<e>`, or None for
    another folder (a base model, an OrthoMerge adapter)."""
    parts = folder.parts
    if len(parts) >= 5 and parts[-5] == "checkpoints" and parts[-1].startswith("epoch-"):
        return Path(*parts[:-5], "train", parts[-4], parts[-3], "manifest.json")
    return None


def recorded_files(manifest: Path, folder: Path) -> dict[str, dict[str, Any]] | None:
    """The files the manifest records for `folder`, or None when it does not list that folder
    (not trained yet, another recipe's folder, or a manifest older than these records). Folders are
    matched by recipe hash and epoch (`<hash>/epoch-<e>`), so a results folder moved elsewhere still matches."""
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise CheckpointChangedError(f"{manifest} is not valid JSON ({err}): retrain the run to rebuild it") from err
    for entry in record.get("epochs", []):
        if Path(entry["path"]).parts[-2:] == folder.parts[-2:]:
            return entry.get("files")
    return None


def _pruned(manifest: Path, folder: Path) -> bool:
    """Whether the prune rule removed `folder` (listed in pruned.json beside the manifest)."""
    try:
        removed = json.loads((manifest.parent / "pruned.json").read_text(encoding="utf-8"))["removed"]
    except FileNotFoundError:
        return False
    return str(folder) in removed


def changes_since_training(manifest: Path, folder: Path) -> str:
    """AS_TRAINED, or the first recorded file of `folder` that is missing or whose size or modification
    time differs from the manifest's record. A folder the prune rule removed is as trained (pruned)."""
    files = recorded_files(manifest, folder)
    if not files or _pruned(manifest, folder):
        return AS_TRAINED
    if not folder.is_dir():
        return f"changed since training: {folder} is missing ({manifest} records it)"
    for name, record in files.items():
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            return f"changed since training: {folder / name} is missing ({manifest} records it)"
        if (stat.st_size, stat.st_mtime_ns) != (record["size"], record["mtime_ns"]):
            return f"changed since training: {folder / name} differs in size or modification time from {manifest}"
    return AS_TRAINED


def verify(folder: Path) -> None:
    """Raise CheckpointChangedError unless every file the manifest records for `folder` is there with
    its recorded size and sha256 (nothing to check for a folder no manifest records)."""
    manifest = manifest_of(folder)
    files = recorded_files(manifest, folder) if manifest else None
    for name, record in (files or {}).items():
        path = folder / name
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != record["size"]:
            problem = f"has {path.stat().st_size} bytes, trained {record['size']}"
        elif (digest := sha256(path)) != record["sha256"]:
            problem = f"has sha256 {digest[:16]}…, trained {record['sha256'][:16]}…"
        else:
            continue
        raise CheckpointChangedError(
            f"checkpoint {folder} is not the one trained: {name} {problem} ({manifest} records it). Results "
            f"from it would describe other weights. Restore the file, or retrain: snakemake --forcerun {manifest}"
        )
