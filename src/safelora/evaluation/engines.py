"""Shared engines: one backend process per engine on a node, serving every job that needs it.

Snakemake keeps one job per (checkpoint, benchmark) output, so only stale outputs are planned;
those jobs then share engines instead of starting one each. A job asks `open_backend` for the
engine its checkpoint needs (the base weights and engine settings, `engine_key`). The first job on
the node starts `serve` in a process of its own session, listening on a Unix socket in
`engine_dir()`; later jobs, in parallel or one after another, connect to it. Each request names
its LoRA adapter, so one engine serves the base and all its adapters (a full fine-tuning
checkpoint has weights of its own and so an engine of its own). The engine exits after
`idle_s` seconds without a connected job (on SLURM the group job's end also ends it).

Requests of concurrent jobs are served one after another (one chunk of one job at a time).
The socket lives in a folder only its user can enter; a request is a pickled tuple, so nothing
but this user's jobs can talk to an engine.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import safelora
from safelora.evaluation.generation import Backend, Completion, ModelRef, Sampling, make_backend, newest_file_time
from safelora.io import stable_json

START_TIMEOUT_S = 3600.0  # loading a 32B judge from a cold shared filesystem takes minutes


def engine_dir() -> Path:
    """The user's engine folder under the node-local temporary directory (SLURM sets TMPDIR)."""
    folder = Path(os.environ.get("TMPDIR") or "/tmp") / f"safelora-engines-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder}: engine folder must belong to this user with mode 0700")
    return folder


def engine_key(backend_name: str, ref: ModelRef, seed: int, batch_size: int) -> str:
    """Everything an engine's outputs depend on besides the request, hashed (with the checkout
    whose code serves it: two checkouts on one node never share an engine)."""
    base = Path(ref.base)
    weights = newest_file_time(base) if base.is_dir() else 0.0  # 0 for a hub id
    fields = {
        "backend": backend_name,
        "ref": asdict(ref),
        "seed": seed,
        "batch_size": batch_size,
        "weights": weights,
        "code": str(Path(__file__).resolve()),
    }
    return hashlib.sha256(stable_json(fields).encode()).hexdigest()[:20]


class RemoteBackend:
    """The `Backend` interface of an engine in another process."""

    def __init__(self, conn: Connection, engine: str, tokenizer: Any) -> None:
        self.conn = conn
        self.engine = engine
        self.tokenizer = tokenizer

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def generate(
        self, prompts: list[str], sampling: Sampling, seeds: list[int], adapter: str | None = None
    ) -> list[list[Completion]]:
        self.conn.send(("generate", prompts, sampling, seeds, str(Path(adapter).resolve()) if adapter else None))
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"the shared engine failed on this request:\n{value}")
        return value


def open_backend(backend_name: str, ref: ModelRef, seed: int, batch_size: int, idle_s: float) -> Backend:
    """The engine for `ref`: in this process when `idle_s` is 0, else the node's shared engine
    (started here if no job started it yet)."""
    if idle_s <= 0:
        return make_backend(backend_name, ref, seed, batch_size)
    from transformers import AutoTokenizer

    if Path(ref.base).exists():
        ref = ModelRef(**{**asdict(ref), "base": str(Path(ref.base).resolve())})
    folder = engine_dir()
    key = engine_key(backend_name, ref, seed, batch_size)
    socket, log = folder / f"{key}.sock", folder / f"{key}.log"
    for _ in range(2):  # an engine that reached its idle exit as we connected: start a new one
        with open(folder / f"{key}.lock", "w") as lock:  # one job on the node starts the engine
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = _connect(socket)
            if conn is None:
                conn = _start(socket, log, backend_name, ref, seed, batch_size, idle_s)
        try:
            engine = conn.recv()
        except EOFError:
            continue
        print(f"shared engine {key} ({engine}, log {log})", flush=True)
        return RemoteBackend(conn, engine, AutoTokenizer.from_pretrained(ref.base))
    raise RuntimeError(f"the shared engine {key} closed every connection at once ({log})")


def _connect(socket: Path) -> Connection | None:
    try:
        return Client(str(socket), family="AF_UNIX")
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def add_engine_arguments(parser: argparse.ArgumentParser, served: str) -> None:
    """The arguments of a job on an engine (generate.py, judge.py): backend, memory budget, sharing."""
    parser.add_argument("--backend", choices=["vllm", "transformers"], required=True, help="config generation.backend")
    parser.add_argument("--mem-mb", type=float, required=True, help="host memory budget; stop clearly near it (0: off)")
    parser.add_argument(
        "--engine-idle-s",
        type=float,
        required=True,
        help=f"share the node's engine of {served}, which exits after this many idle seconds (0: own engine)",
    )


def engine_env() -> dict[str, str]:
    """The engine process's environment: it imports the same `safelora` as this process, installed
    or not (a `--sdm conda` env has only the dependencies; the workflow scripts put the checkout's
    src/ on sys.path, which a child process does not inherit)."""
    src = str(Path(safelora.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def _start(
    socket: Path, log: Path, backend_name: str, ref: ModelRef, seed: int, batch_size: int, idle_s: float
) -> Connection:
    socket.unlink(missing_ok=True)  # left by an engine that was killed
    cmd = [
        sys.executable,
        "-m",
        "safelora.evaluation.engines",
        "--backend",
        backend_name,
        "--ref",
        json.dumps(asdict(ref)),
        "--seed",
        str(seed),
        "--batch-size",
        str(batch_size),
        "--socket",
        str(socket),
        "--idle-s",
        str(idle_s),
    ]
    with open(log, "a") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=engine_env(), start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the shared engine exited with {process.returncode} while starting ({log}):\n{tail}")
        conn = _connect(socket)
        if conn is not None:
            return conn
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"the shared engine did not start within {START_TIMEOUT_S:.0f} s ({log})")


class _Server:
    """Serves one backend to connected jobs, one request at a time; exits when idle."""

    def __init__(self, backend: Backend, listener: Listener, socket: Path, idle_s: float) -> None:
        self.backend, self.listener, self.socket, self.idle_s = backend, listener, socket, idle_s
        self.lock = threading.Lock()  # guards the backend and the connection count
        self.connected = 0
        self.last_seen = time.monotonic()

    def run(self) -> None:
        threading.Thread(target=self._exit_when_idle, daemon=True).start()
        while True:
            conn = self.listener.accept()
            with self.lock:
                self.connected += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        try:
            conn.send(self.backend.engine)
            while True:
                _, prompts, sampling, seeds, adapter = conn.recv()
                with self.lock:
                    try:
                        reply = ("ok", self.backend.generate(prompts, sampling, seeds, adapter))
                    except Exception:  # the job gets the error; the engine serves the others on
                        reply = ("error", traceback.format_exc())
                conn.send(reply)
        except (EOFError, OSError):  # the job finished or died
            pass
        finally:
            conn.close()
            with self.lock:
                self.connected -= 1
                self.last_seen = time.monotonic()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_s))
            with self.lock:
                if self.connected == 0 and time.monotonic() - self.last_seen > self.idle_s:
                    self.socket.unlink(missing_ok=True)
                    print(f"idle for {self.idle_s:.0f} s: engine exits", flush=True)
                    os._exit(0)


def serve(backend_name: str, ref: ModelRef, seed: int, batch_size: int, socket: Path, idle_s: float) -> None:
    started = time.monotonic()
    backend = make_backend(backend_name, ref, seed, batch_size)
    listener = Listener(str(socket), family="AF_UNIX")
    print(f"engine {backend.engine} for {ref.base} up in {time.monotonic() - started:.1f} s on {socket}", flush=True)
    _Server(backend, listener, socket, idle_s).run()


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve one generation engine on a Unix socket (started by jobs).")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--ref", required=True, help="JSON: the ModelRef")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    args = parser.parse_args()
    serve(args.backend, ModelRef(**json.loads(args.ref)), args.seed, args.batch_size, args.socket, args.idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
