"""Hostile snippets run in the sandbox: each is contained and the parent stays healthy."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from safelora.evaluation import sandbox
from safelora.evaluation.sandbox import SandboxUnavailableError, run_sandboxed

REPO = Path(__file__).resolve().parents[1]


def run(code: str, **kwargs):
    kwargs.setdefault("timeout_s", 10)
    kwargs.setdefault("memory_mb", 512)
    return run_sandboxed(textwrap.dedent(code), **kwargs)


@pytest.fixture(autouse=True)
def parent_stays_healthy():
    children_before = _children()
    yield
    # the parent can still fork and run a subprocess, and nothing the sandbox started survives
    # (a child from before may exit meanwhile)
    assert subprocess.run(["true"]).returncode == 0
    assert _children() <= children_before


def _children() -> set[int]:
    own = str(os.getpid())
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == own:
                found.add(int(pid))
    return found


def test_plain_code_runs_in_a_private_workdir() -> None:
    result = run("import os, sys; print(os.getcwd()); print(sys.stdin.read().upper())", stdin="hi")
    assert result.ok, result.stderr
    assert result.stdout.split() == ["/tmp/work", "HI"]


@pytest.mark.parametrize("address", [("127.0.0.1", 22), ("1.1.1.1", 80), ("8.8.8.8", 53)])
def test_socket_connect_fails(address: tuple[str, int]) -> None:
    result = run(f"""
        import socket
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect({address!r})
            print("CONNECTED")
        except OSError as err:
            print("BLOCKED", err.errno)
    """)
    assert result.ok, result.stderr
    assert result.stdout.startswith("BLOCKED"), result.stdout


def test_only_a_down_loopback_interface() -> None:
    result = run("print(open('/proc/net/dev').read())")
    names = [line.split(":")[0].strip() for line in result.stdout.strip().splitlines()[2:]]
    assert names == ["lo"]


def test_fork_bomb_is_contained() -> None:
    result = run(
        """
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        except OSError:
            print("LIMITED", n)
    """,
        max_processes=32,
    )
    assert result.stdout.startswith("LIMITED"), (result.stdout, result.stderr)
    assert int(result.stdout.split()[1]) < 32
    assert not result.timed_out  # the sleeping children died with the sandbox's init


def test_memory_bomb_is_contained() -> None:
    result = run("x = bytearray(2 * 1024**3)\nprint('ALLOCATED')", memory_mb=256)
    assert "ALLOCATED" not in result.stdout
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_infinite_loop_is_killed_at_the_wall_clock_limit() -> None:
    result = run("while True:\n    pass", timeout_s=2)
    assert result.timed_out and result.killed_by_signal is not None
    assert result.wall_s < 10


def test_cpu_limit_stops_a_loop_before_the_wall_clock() -> None:
    result = run("while True:\n    pass", timeout_s=20, cpu_s=1)
    assert not result.timed_out
    assert result.killed_by_signal in (9, 24)  # SIGKILL or SIGXCPU


def test_os_system_runs_only_inside_the_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run(f"""
        import os
        print(os.system("touch {marker} 2>/dev/null"), os.path.exists("{marker}"))
        print(os.system("curl -s -m 3 http://1.1.1.1 >/dev/null 2>&1 || wget -q -T 3 http://1.1.1.1 >/dev/null 2>&1"))
        print(os.system("ls /work/main/src >/dev/null 2>&1"))
    """)
    assert result.ok, result.stderr
    touch_rc, exists, net_rc, ls_rc = result.stdout.split()
    assert exists == "False" and not marker.exists()
    assert net_rc != "0" and ls_rc != "0"


@pytest.mark.parametrize(
    "target",
    [
        str(REPO / "pwned.txt"),
        str(REPO / "src" / "pwned.py"),
        "/tmp/safelora-pwned.txt",
        "/etc/pwned",
        "/usr/lib/pwned",
        os.path.expanduser("~/pwned.txt"),
    ],
)
def test_writing_outside_the_workdir_does_not_reach_the_host(target: str) -> None:
    result = run(f"""
        try:
            with open({target!r}, "w") as fh:
                fh.write("x")
            print("WROTE")
        except OSError as err:
            print("BLOCKED", err.errno)
    """)
    assert result.ok, result.stderr
    assert not os.path.exists(target)  # /tmp is a private tmpfs: a write there vanishes
    if not target.startswith("/tmp/"):
        assert result.stdout.startswith("BLOCKED"), result.stdout


def test_checkout_and_home_are_hidden() -> None:
    result = run(f"""
        import os
        for path in [{str(REPO / "src")!r}, {str(REPO / "tests")!r}, {os.path.expanduser("~")!r} + "/.cache"]:
            print(path, os.path.exists(path))
    """)
    assert result.ok, result.stderr
    assert all(line.endswith("False") for line in result.stdout.strip().splitlines()), result.stdout


def test_the_checkout_is_hidden_wherever_it_lies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only through the fixed list (/work, /home, ...): a checkout under /scratch is hidden too."""
    monkeypatch.setattr("safelora.evaluation.sandbox.HIDDEN_DIRS", ())
    assert os.path.realpath(REPO) in sandbox._hidden_dirs()


def test_environment_secrets_do_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_planted_secret_value")
    result = run("""
        import os
        print(sorted(os.environ))
        for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
            try:
                print(open(f'/proc/{pid}/environ').read())
            except OSError as err:
                print(pid, "unreadable", err.errno)
        print(os.popen('env').read())
    """)
    assert result.ok, result.stderr
    assert "hf_planted_secret_value" not in result.stdout
    assert "HF_TOKEN" not in result.stdout


def test_host_processes_are_invisible_and_unkillable() -> None:
    result = run(f"""
        import os, signal
        print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
        try:
            os.kill({os.getpid()}, signal.SIGKILL)
            print("KILLED")
        except OSError as err:
            print("BLOCKED", err.errno)
    """)
    assert result.ok, result.stderr
    pids, outcome = result.stdout.strip().splitlines()
    assert os.getpid() not in eval(pids)  # noqa: S307 - a list of ints we printed
    assert outcome.startswith("BLOCKED")


def test_capabilities_are_dropped_so_mounts_stay() -> None:
    result = run("""
        import subprocess
        print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])
        print(subprocess.run(['umount', '/work'], capture_output=True).returncode)
    """)
    assert result.ok, result.stderr
    cap_eff, umount_rc = result.stdout.split()
    assert int(cap_eff, 16) == 0 and umount_rc != "0"


def test_output_is_capped() -> None:
    result = run("import sys\nsys.stdout.write('x' * 5_000_000)", max_output_bytes=1000)
    assert result.output_truncated and len(result.stdout) == 1000


def test_refuses_to_run_without_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without util-linux on PATH the sandbox cannot isolate anything: it must refuse, not run.
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(SandboxUnavailableError):
        run("print('ran anyway')")


def test_failed_setup_raises_instead_of_running(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hidden folder that cannot be mounted makes the launcher fail before the code runs.
    monkeypatch.setattr("safelora.evaluation.sandbox._hidden_dirs", lambda: ["/nonexistent-safelora-dir"])
    with pytest.raises(SandboxUnavailableError, match="code not run"):
        run("print('ran anyway')")
