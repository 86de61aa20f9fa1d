"""A cluster node's scratch folder, as a red-team review found it (a scratch path outside every fixed list), and a sample that
goes for it.

`/scratch-test-<random>/user/` is a path no fixed list of folders covers; it holds `hf/token` (the
job's `HF_HOME`) and, under `tmp/` (the job's `TMPDIR`), a listening Unix socket like a shared
engine's; a listening abstract Unix socket stands beside it. `PROBE` reads the token, lists the
folder and connects to both sockets, printing one JSON object: what it reached, what was blocked.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import threading
from pathlib import Path

GREETING = b"safelora engine v1"

PROBE = """
import json, os, socket

found = {}


def attempt(name, action):
    try:
        found[name] = "REACHED " + repr(action())[:60]
    except Exception as err:
        found[name] = f"blocked {type(err).__name__}: {err}"


def connect(address):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(address)
    return s.recv(64)


attempt("read HF_HOME/token", lambda: open(%(token)r).read())
attempt("list the scratch folder", lambda: sorted(os.listdir(%(folder)r)))
attempt("connect to the socket under TMPDIR", lambda: connect(%(socket)r))
attempt("connect to the abstract socket", lambda: connect(%(abstract)r))
print(json.dumps(found))
"""


class ScratchFolder:
    """The folder with its token and two listening sockets; `close()` removes it all."""

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        tag = secrets.token_hex(4)
        self.top = Path(f"/scratch-test-{tag}")
        self.folder = self.top / "user"
        self.hf_home = self.folder / "hf"
        self.tmpdir = self.folder / "tmp"
        self.token = self.hf_home / "token"
        self.socket_path = self.tmpdir / f"safelora-engines-{tag}" / "engine.sock"
        self.abstract = f"\0safelora-scratch-test-{tag}"
        self.socket_path.parent.mkdir(parents=True)
        self.hf_home.mkdir()
        self.token.write_text(f"hf_scratch_secret_{tag}")
        self.token.chmod(0o600)
        self._servers = [self._listen(str(self.socket_path)), self._listen(self.abstract)]
        self.socket_path.chmod(0o777)
        self.top.chmod(0o755)
        if uid is not None:  # the job's own user owns its scratch folder, as on the cluster
            for path in (self.folder, *self.folder.rglob("*")):
                os.chown(path, uid, gid)

    @staticmethod
    def _listen(address: str) -> socket.socket:
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen()

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(GREETING)

        threading.Thread(target=serve, daemon=True).start()
        return server

    @property
    def env(self) -> dict[str, str]:
        return {"TMPDIR": str(self.tmpdir), "HF_HOME": str(self.hf_home)}

    @property
    def probe(self) -> str:
        return PROBE % {
            "token": str(self.token),
            "folder": str(self.folder),
            "socket": str(self.socket_path),
            "abstract": self.abstract,
        }

    def close(self) -> None:
        for server in self._servers:
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread
            server.close()
        shutil.rmtree(self.top, ignore_errors=True)


def reached(stdout: str) -> dict[str, str]:
    """The probe's JSON line (the last line of `stdout`)."""
    return json.loads(stdout.strip().splitlines()[-1])
