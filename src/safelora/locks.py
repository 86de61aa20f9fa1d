"""One writer per output: an exclusive lock on a lock file beside it, plus a record of its holder.

A Snakemake driver killed with SIGKILL leaves its cluster jobs running; after `--unlock` and a
restart, new jobs would write the same outputs beside them. A job takes `writer_lock(output)`
first: while another live process holds it the job refuses to start, naming that holder (host,
pid, SLURM job id, start time) and how to end it. The kernel releases the lock when its holder
exits in any way (SIGKILL included), so a holder that is gone is recognised by the lock being
free, whatever host it ran on; its record, left behind, is named when the lock is taken over.

Assumption (docs/errors.md): the lock file is on a filesystem where `flock` is honoured across
hosts: local disks, NFS on Linux >= 2.6.12 (the kernel maps flock to NFS byte-range locks,
served by lockd/NLM for NFSv3 and by the server for NFSv4), GPFS, and Lustre mounted with
`-o flock` (with `localflock` it is per node only). NFSv4 frees the lock of a host that died
when its lease expires (about 90 s); NFSv3 only when that host reboots: if the named host is gone
for good, delete the lock file by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class LockHeldError(RuntimeError):
    """Another live job holds the lock of an output; the message names it and how to end it."""


def lock_path(output: Path) -> Path:
    """The lock file of an output (file or folder): `<output>.lock` beside it, so deleting the output keeps the lock."""
    return output.with_name(output.name + ".lock")


def holder_record() -> dict[str, Any]:
    """Who this process is: host, pid, SLURM job id (None outside SLURM) and start time (UTC)."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe(holder: dict[str, Any]) -> str:
    slurm = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{slurm}, since {holder.get('started')}"


def _how_to_end(holder: dict[str, Any]) -> str:
    kill = f"kill {holder.get('pid')} on {holder.get('host')}"
    return f"scancel {holder['slurm_job_id']} (or {kill})" if holder.get("slurm_job_id") else kill


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The record in the lock file, or None when it is empty (released cleanly) or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    try:
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_holder(fd: int, record: dict[str, Any] | None) -> None:
    os.ftruncate(fd, 0)
    if record is not None:
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    os.fsync(fd)


@contextlib.contextmanager
def writer_lock(output: Path, job: str) -> Iterator[None]:
    """Hold the lock of `output` (written by `job`, e.g. "train") for the block, or raise LockHeldError."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # O_CLOEXEC by default: no exec'd child keeps it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or {}
            raise LockHeldError(
                f"{output} is being written by another {job} job: {describe(holder)}. Two jobs writing one "
                "output corrupt it (a Snakemake driver killed while its jobs ran leaves such orphans). If that "
                f"job is an orphan, end it: {_how_to_end(holder)}; then rerun. Lock file: {path}"
            ) from None
        gone = _read_holder(fd)
        if gone is not None:
            print(f"taking over {path} from {describe(gone)}, which is gone (its lock was free)", flush=True)
        _write_holder(fd, holder_record())
        yield
        _write_holder(fd, None)  # released cleanly: the next holder has no one to report
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def writer_locks(outputs: Iterable[Path], job: str) -> Iterator[None]:
    """`writer_lock` on every output of a job (a judge job writes one verdict file per checkpoint)."""
    with contextlib.ExitStack() as stack:
        for output in outputs:
            stack.enter_context(writer_lock(output, job))
        yield
