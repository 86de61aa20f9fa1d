"""Hostile snippets run in the sandbox: each is contained and the parent stays healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hostile_scratch import ScratchFolder, reached

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


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch):
    """A node-scratch folder as the job's TMPDIR and HF_HOME, with a token and listening sockets."""
    folder = ScratchFolder()
    for name, value in folder.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", None)  # the sandbox's own temporary folder lands there too
    yield folder
    folder.close()


def test_a_scratch_folder_no_list_names_is_out_of_reach(scratch: ScratchFolder) -> None:
    """A red-team finding: $HF_HOME/token and an engine socket under $TMPDIR on /scratch-test-*."""
    outside = subprocess.run([sys.executable, "-c", scratch.probe], capture_output=True, text=True, check=True)
    inside = run(scratch.probe)
    assert inside.ok, inside.stderr
    print(f"\noutside the sandbox: {json.dumps(reached(outside.stdout), indent=1)}")
    print(f"inside the sandbox: {json.dumps(reached(inside.stdout), indent=1)}")
    assert all(v.startswith("REACHED") for v in reached(outside.stdout).values())  # the probe can succeed
    assert all(v.startswith("blocked") for v in reached(inside.stdout).values())


def test_the_root_holds_only_the_allow_list() -> None:
    """Every name in the sandbox's tree, outside the bound folders and /proc, is on the allow-list."""
    root = sandbox.sandbox_root()
    listed = {*root["binds"], *root["files"], *root["links"], *root["device_links"], *sandbox.SCRATCH_DIRS}
    expected = {*listed, "/proc", sandbox.WORKDIR, sandbox.WORKDIR + "/main.py"}
    expected |= {str(parent) for path in expected for parent in Path(path).parents if str(parent) != "/"}
    result = run(f"""
        import os
        for top, dirs, files in os.walk("/"):
            for name in dirs + files:
                print(os.path.join(top, name))
            dirs[:] = [d for d in dirs if os.path.join(top, d) not in {[*root["binds"], "/proc"]!r}]
    """)
    assert result.ok, result.stderr
    found = set(result.stdout.split())
    print(f"\nthe sandbox's tree: {len(found)} names outside the bound folders and /proc; bound: {root['binds']}")
    assert found == expected


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
    # A folder that cannot be bound makes the launcher fail before the code runs.
    real = sandbox.sandbox_root(sys.executable)
    broken = {**real, "binds": [*real["binds"], "/nonexistent-safelora-dir"]}
    monkeypatch.setattr("safelora.evaluation.sandbox.sandbox_root", lambda python: broken)
    with pytest.raises(SandboxUnavailableError, match="code not run"):
        run("print('ran anyway')")
