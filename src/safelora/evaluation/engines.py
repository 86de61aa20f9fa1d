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
import signal
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
STOP_TIMEOUT_S = 300.0
BUSY_GRACE_S = 10.0
# Backends that reserve a fixed share of GPU memory at start: one at a time per job (stop_idle_engines).
EXCLUSIVE_BACKENDS = frozenset({"vllm"})


def engine_dir() -> Path:
    """The user's engine folder under the node-local temporary directory, one per SLURM job: the
    members of a group job share engines, and another SLURM job on the node (other GPUs, and a
    TMPDIR that need not be its own) never connects to them."""
    scope = f"safelora-engines-{os.getuid()}"
    if os.environ.get("SLURM_JOB_ID"):
        scope += f"-job{os.environ['SLURM_JOB_ID']}"
    folder = Path(os.environ.get("TMPDIR") or "/tmp") / scope
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
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),  # an engine serves on its own GPUs only
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
                if backend_name in EXCLUSIVE_BACKENDS:
                    stop_idle_engines(folder, keep=socket)
                conn = _start(socket, log, backend_name, ref, seed, batch_size, idle_s)
        try:
            engine = conn.recv()
        except EOFError:
            continue
        print(f"shared engine {key} ({engine}, log {log})", flush=True)
        return RemoteBackend(conn, engine, AutoTokenizer.from_pretrained(ref.base))
    raise RuntimeError(f"the shared engine {key} closed every connection at once ({log})")


def stop_idle_engines(folder: Path, keep: Path | None = None) -> list[Path]:
    """Stop the folder's engines that serve no job (all but `keep`) and wait until their processes
    are gone; return their sockets. A vLLM engine takes a fixed share of its GPU's memory
    (`gpu_memory_utilization`) and refuses to start where less is free, so the base model's engine,
    idle after the LoRA checkpoints of a group job, must go before a full fine-tuning checkpoint's
    engine can start on that GPU. A busy engine is left alone."""
    stopped = []
    for socket in sorted(folder.glob("*.sock")):
        if socket == keep:
            continue
        status, group = _ask_to_stop(socket)
        if status == "stopping":
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(group):
                raise TimeoutError(f"the idle engine {socket.stem} did not exit within {STOP_TIMEOUT_S:.0f} s")
            print(f"stopped the idle engine {socket.stem}: its GPU memory is free for this job's engine", flush=True)
            stopped.append(socket)
    return stopped


def _ask_to_stop(socket: Path) -> tuple[str, int | None]:
    """("stopping", its process group), ("busy", None) or ("gone", None). A job that just ended
    may still count as connected for a moment, so a busy engine is asked again for BUSY_GRACE_S."""
    deadline = time.monotonic() + BUSY_GRACE_S
    while True:
        conn = _connect(socket)
        if conn is None:
            return "gone", None
        try:
            conn.recv()  # the engine's name, sent on connect
            conn.send(("stop_if_idle",))
            status, group = conn.recv()
        except (EOFError, OSError):  # it reached its idle exit meanwhile
            return "gone", None
        finally:
            conn.close()
        if status != "busy" or time.monotonic() > deadline:
            return status, group
        time.sleep(0.5)


def _group_alive(group: int) -> bool:
    """Whether a process of the engine's process group still runs (vLLM's engine core is a child
    process that holds the GPU memory; a zombie holds none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == group and state != "Z":
            return True
    return False


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
                request = conn.recv()
                if request[0] == "stop_if_idle":
                    self._stop_if_idle(conn)
                    continue
                _, prompts, sampling, seeds, adapter = request
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

    def _stop_if_idle(self, conn: Connection) -> None:
        """Exit, with every process of this engine's group, if no job but the asking one is
        connected; a request being served holds the lock, so the engine is busy then."""
        if not self.lock.acquire(timeout=0):
            conn.send(("busy", None))
            return
        if self.connected > 1:
            self.lock.release()
            conn.send(("busy", None))
            return
        self.socket.unlink(missing_ok=True)
        print("stopped on request of a job that starts another engine", flush=True)
        conn.send(("stopping", os.getpgid(0)))
        _exit_group()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_s))
            with self.lock:
                if self.connected == 0 and time.monotonic() - self.last_seen > self.idle_s:
                    self.socket.unlink(missing_ok=True)
                    print(f"idle for {self.idle_s:.0f} s: engine exits", flush=True)
                    _exit_group()


def _exit_group() -> None:
    """End the engine and its child processes (vLLM's engine core): the group `serve` leads."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


def serve(backend_name: str, ref: ModelRef, seed: int, batch_size: int, socket: Path, idle_s: float) -> None:
    started = time.monotonic()
    if os.getpgid(0) != os.getpid():  # lead a process group, so that _exit_group ends only this engine
        os.setpgid(0, 0)
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
