"""Disk and memory housekeeping: pruning finished runs, failing clearly before running out of memory."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

# Exit code of a job stopped by the memory guard (distinct from the OOM killer's 137).
MEMORY_EXIT_CODE = 86


def prune_run(
    manifest_path: Path, state_dir: Path, keep_epochs: list[int] | str, trainer_state: bool
) -> dict[str, Any]:
    """Delete a finished run's trainer state and the epoch checkpoints not kept; return what went.

    Refuses (deleting nothing) when no kept epoch is among the run's epochs, so a run never loses
    every checkpoint; `kept_epochs` lists the epochs whose folders are on disk afterwards.
    """
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    epochs = [e["epoch"] for e in manifest["epochs"]]
    keep = set(epochs) if keep_epochs == "all" else {max(epochs)} if keep_epochs == "last" else set(keep_epochs)
    if not keep & set(epochs):
        raise ValueError(
            f"{manifest_path}: keep_epochs {sorted(keep)} keeps none of the run's epochs {epochs}; nothing pruned"
        )
    removed = []
    if trainer_state and state_dir.exists():
        shutil.rmtree(state_dir)
        removed.append(str(state_dir))
    for entry in manifest["epochs"]:
        folder = Path(entry["path"])
        if entry["epoch"] not in keep and folder.exists():
            shutil.rmtree(folder)
            removed.append(str(folder))
    kept = [e["epoch"] for e in manifest["epochs"] if Path(e["path"]).is_dir()]
    return {"removed": removed, "kept_epochs": kept}


def process_tree_rss_mb(pid: int | None = None) -> float:
    """Resident memory (MiB) of a process (default: this one) and all its children; 0 once it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class MemoryGuard:
    """Stop the job with a clear message when its host memory nears the budget it was given.

    A scheduler or the kernel's OOM killer would otherwise kill it with SIGKILL and no word of why.
    The guard polls the RSS of the process tree; at `fraction` of `limit_mb` it prints the figures
    and exits with MEMORY_EXIT_CODE, so the log says which resource to raise.
    """

    def __init__(self, limit_mb: float, fraction: float = 0.95, interval_s: float = 1.0) -> None:
        self.limit_mb = limit_mb
        self.fraction = fraction
        self.interval_s = interval_s
        self._stop = threading.Event()

    def start(self) -> MemoryGuard:
        if self.limit_mb > 0:
            threading.Thread(target=self._watch, name="memory-guard", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = process_tree_rss_mb()
            if used > self.fraction * self.limit_mb:
                print(
                    f"memory guard: the job uses {used:.0f} MB of host memory, over {self.fraction:.0%} of its "
                    f"mem_mb={self.limit_mb:.0f}; stopping before it is killed. Raise mem_mb for this rule "
                    "(profiles/*/config.yaml set-resources) or lower its batch size.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(MEMORY_EXIT_CODE)
