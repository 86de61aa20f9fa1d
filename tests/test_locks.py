"""safelora.locks across real processes: a judge job's lock on every verdict file it writes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safelora.locks import LockHeldError, lock_path, writer_locks

HOLD = """
import sys, time
from pathlib import Path
from safelora.locks import writer_locks
with writer_locks([Path(p) for p in sys.argv[1:]], "judge"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_judge_job_refuses_when_any_of_its_verdict_files_is_held_and_takes_over_once_the_holder_is_gone(tmp_path):
    """An orphan judging epochs 1-2 of a run holds both verdict files; a job locking epochs 3 and 2
    refuses, naming it, and holds nothing afterwards (epoch 3's lock is free again); after kill -9 of
    the orphan it proceeds."""
    epochs = [tmp_path / f"epoch-{e}/llama_guard.jsonl" for e in (1, 2, 3)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "SLURM_JOB_ID": "31"}
    orphan = subprocess.Popen(
        [sys.executable, "-c", HOLD, *map(str, epochs[:2])], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert orphan.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                LockHeldError,
                match=rf"epoch-2/llama_guard.jsonl is being written by another judge job: pid {orphan.pid} .*SLURM job 31",
            ),
            writer_locks([epochs[2], epochs[1]], "judge"),
        ):
            pass
        with writer_locks(epochs[2:], "judge"):  # the refused job released epoch 3's lock
            pass
    finally:
        orphan.send_signal(signal.SIGKILL)
        orphan.wait()
    with writer_locks(epochs, "judge"):
        assert all(lock_path(p).exists() for p in epochs)
    with writer_locks(epochs, "judge"):
        pass
