"""Run untrusted Python code with no network, resource limits and a private file system view.

Layers (docs/sandbox.md has the threat model and the hostile-snippet results):

1. ``unshare --user --map-root-user --net --mount --pid --fork --kill-child --mount-proc``
   (util-linux): a fresh network namespace holding only a loopback device that is down (no route
   anywhere, not even to 127.0.0.1, and no abstract Unix sockets of the host), a private mount
   table, and a PID namespace whose init is the launcher (2.): when it exits or the sandbox
   is killed, the kernel kills every process left inside.
2. This file run as a launcher inside the namespaces (standard library only): it builds a fresh
   root on an empty tmpfs and ``pivot_root``s into it, detaching the host's tree. An allow-list
   is all that is there: the Python installation (the venv, its base interpreter, the folders of
   the shared objects it maps), the system folders ``/usr`` and ``/bin``, ``/lib*`` (symlinks
   where the host has symlinks), ``/etc/ld.so.cache``, a few devices, each bound read-only; a
   fresh ``/proc`` of the new PID namespace; ``/tmp``, ``/var/tmp`` and ``/dev/shm`` as small
   private tmpfs mounts that vanish with the sandbox. Whatever the host's folders are called
   (``/scratch``, ``$TMPDIR``, ``$HF_HOME``, sockets), none of them is in the sandbox. The
   launcher checks that the only network interface is ``lo`` and refuses to run the code
   otherwise.
3. rlimits: address space, processes (against fork bombs), CPU seconds, file size, no core dumps.
4. ``setpriv``: every capability dropped and no-new-privs set, so the code cannot undo the mounts.
5. The parent: a minimal environment (no tokens), a wall-clock timeout that sends SIGTERM and then
   SIGKILL to the whole process group, and capped capture of stdout/stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The sandbox's root holds only these (besides the interpreter's own folders, found per
# interpreter): system folders with the shared libraries and tools (bound read-only, or made the
# same symlinks where the host has symlinks), the dynamic linker's cache, and basic devices.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache",)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEVICE_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "fd/0", "/dev/stdout": "fd/1", "/dev/stderr": "fd/2"}
# Private writable tmpfs mounts inside the sandbox.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
WORKDIR = "/tmp/work"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_SETUP_OK = b"ok"
_STATUS_ERROR_EXIT = 125  # the launcher's own exit status when setup fails


class SandboxUnavailableError(RuntimeError):
    """The OS-level isolation (namespaces, mounts) could not be set up; nothing was run."""


# Kernel settings that decide whether an unprivileged process may make the sandbox's user
# namespace, with the value that forbids it: disabled (any distribution), restricted by AppArmor
# (Ubuntu 23.10+), or the old Debian switch.
USERNS_SETTINGS = {
    "user.max_user_namespaces": ("/proc/sys/user/max_user_namespaces", "0"),
    "kernel.apparmor_restrict_unprivileged_userns": ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    "kernel.unprivileged_userns_clone": ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
}


def kernel_userns_settings() -> dict[str, str]:
    """The USERNS_SETTINGS this kernel has, with their current values (as this process sees them)."""
    found = {}
    for name, (path, _) in USERNS_SETTINGS.items():
        try:
            found[name] = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
    return found


def unavailable_message(detail: str, euid: int, settings: dict[str, str]) -> str:
    """What a job prints when the sandbox cannot be set up: the cause, the kernel settings, the ways out."""
    blocking = [f"{name} = {value}" for name, value in settings.items() if value == USERNS_SETTINGS[name][1]]
    shown = ", ".join(f"{name} = {value}" for name, value in settings.items()) or "none readable"
    if euid == 0:
        why = "Running as root, it needs no user namespace, so the namespaces or mounts themselves failed"
    elif blocking:
        why = f"Running unprivileged (uid {euid}), it needs a user namespace, which {' and '.join(blocking)} forbids"
    else:
        why = f"Running unprivileged (uid {euid}), it needs a user namespace, which this system refused"
    return (
        f"the code sandbox cannot be set up here, so no sample was run: {detail}. {why} "
        f"(kernel settings: {shown}; user.max_user_namespaces must be above 0, "
        f"kernel.apparmor_restrict_unprivileged_userns 0 or an AppArmor profile allowing `userns`). "
        "Alternatives (docs/sandbox.md, 'Running unprivileged'): ask the administrators to allow user "
        "namespaces, run the execute_code jobs on nodes that allow them (set-resources in the profile), "
        "or as root in a container. Code is never run unsandboxed."
    )


def preflight(python: str = sys.executable) -> None:
    """Fail before any sample runs where the sandbox cannot be set up for `python`.

    Runs a trivial program in the sandbox; raises SandboxUnavailableError naming the kernel
    settings and the documented alternatives when it cannot."""
    try:
        result = run_sandboxed("print('sandbox ok')", timeout_s=60, memory_mb=1024, python=python)
    except SandboxUnavailableError as err:
        raise SandboxUnavailableError(unavailable_message(str(err), os.geteuid(), kernel_userns_settings())) from err
    if result.stdout.strip() != "sandbox ok":
        detail = f"a trivial program exited {result.returncode}: {result.stderr.strip()[-500:]}"
        raise SandboxUnavailableError(unavailable_message(detail, os.geteuid(), kernel_userns_settings()))


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_by_signal: int | None  # the signal that ended the program, if any
    wall_s: float
    output_truncated: bool  # stdout or stderr went over max_output_bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise SandboxUnavailableError(f"`{name}` (util-linux) is not installed; cannot sandbox")
    return path


# Run by the interpreter to be sandboxed, as the sandbox runs it (site enabled): its prefixes and
# the files of the shared objects it has mapped (libpython, libc, ... wherever they are installed).
_PROBE = """
import json, sys
maps = [line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps") if len(line.split(maxsplit=5)) == 6]
prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
print(json.dumps({"prefixes": prefixes, "maps": sorted({m for m in maps if m.startswith("/")})}))
"""


@functools.lru_cache(maxsize=8)
def _probe_interpreter(python: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prefixes, mapped shared-object files) of `python`, as it runs in the sandbox."""
    found = json.loads(
        subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, check=True, env={"PATH": SANDBOX_PATH}
        ).stdout
    )
    return tuple(found["prefixes"]), tuple(m for m in found["maps"] if os.path.isfile(m))


def _symlink_hops(path: str) -> list[str]:
    """`path` and every path its symlink chain passes through, up to the file itself."""
    hops = [path]
    while os.path.islink(hops[-1]) and len(hops) < 40:
        hops.append(os.path.normpath(os.path.join(os.path.dirname(hops[-1]), os.readlink(hops[-1]))))
    return hops


def sandbox_root(python: str = sys.executable) -> dict:
    """What the sandbox's root holds for `python`: the allow-list the launcher builds.

    ``binds``: folders bound read-only at their own (resolved) paths: the system folders and the
    interpreter's prefixes, the folders of its symlink chain and of its mapped shared objects;
    ``links``: symlinks made as on the host (``/bin -> usr/bin``); ``files``: files and devices
    bound read-only; ``python``: the interpreter's path inside (its folder resolved, its own name
    kept, so that a venv still finds its ``pyvenv.cfg``).
    """
    prefixes, mapped = _probe_interpreter(python)
    inside = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(python))), os.path.basename(python))
    links = {d: os.readlink(d) for d in SYSTEM_DIRS if os.path.islink(d)}
    dirs = {d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)}
    dirs |= {os.path.realpath(p) for p in prefixes}
    dirs |= {os.path.realpath(os.path.dirname(hop)) for hop in _symlink_hops(inside)}
    dirs |= {os.path.dirname(os.path.realpath(m)) for m in mapped}
    # Never a whole top folder of the host's temporary files (a library mapped from /tmp).
    dirs -= {"/", *(os.path.realpath(d) for d in SCRATCH_DIRS)}
    return {
        # A folder inside another one is there already.
        "binds": sorted(d for d in dirs if not any(d.startswith(o + "/") for o in dirs)),
        "links": links,
        "files": [f for f in (*SYSTEM_FILES, *DEVICES) if os.path.exists(f)],
        "device_links": DEVICE_LINKS,
        "python": inside,
    }


class _CappedReader(threading.Thread):
    def __init__(self, stream, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def run(self) -> None:
        while chunk := self.stream.read(65536):
            room = self.limit - self.size
            if room > 0:
                self.chunks.append(chunk[:room])
                self.size += min(room, len(chunk))
            if len(chunk) > room:
                self.truncated = True
        self.stream.close()

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def _write_stdin(stream, data: bytes) -> None:
    """A child that exits before reading all of its input is not an error here."""
    try:
        with contextlib.suppress(BrokenPipeError):
            stream.write(data)
    finally:
        with contextlib.suppress(BrokenPipeError):
            stream.close()


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the sandbox's process group, then SIGKILL if it is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def run_sandboxed(
    code: str,
    *,
    timeout_s: float,
    memory_mb: int,
    stdin: str | None = None,
    max_processes: int = 64,
    cpu_s: int | None = None,
    file_size_mb: int = 64,
    scratch_mb: int = 256,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    max_output_bytes: int = 16 * 2**20,
    grace_s: float = 1.0,
) -> SandboxResult:
    """Run `code` as ``python main.py`` in the sandbox's private working directory.

    `memory_mb` is the address-space limit, `cpu_s` the CPU-seconds limit (default: the wall-clock
    timeout rounded up plus one), `max_processes` the process/thread limit, `scratch_mb` the size
    of each private tmpfs. `env` adds variables to the minimal environment (PATH, HOME, LANG).
    Raises SandboxUnavailableError when the isolation cannot be set up; then nothing ran.
    """
    spec = {
        "code": code,
        "root": sandbox_root(python),
        "scratch": list(SCRATCH_DIRS),
        "scratch_mb": scratch_mb,
        "setpriv": _tool("setpriv"),
        "rlimits": {
            "RLIMIT_AS": memory_mb * 2**20,
            "RLIMIT_NPROC": max_processes,
            "RLIMIT_CPU": cpu_s if cpu_s is not None else int(timeout_s) + 1,
            "RLIMIT_FSIZE": file_size_mb * 2**20,
            "RLIMIT_CORE": 0,
        },
        "env": {
            "PATH": SANDBOX_PATH,
            "HOME": WORKDIR,
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        },
    }
    # Real root makes the namespaces directly and the launcher drops to `nobody` afterwards;
    # anyone else needs a user namespace to make them.
    as_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    unshare = [_tool("unshare"), *as_user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    with tempfile.TemporaryDirectory(prefix="safelora-sandbox-") as host_dir:
        spec_path = os.path.join(host_dir, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        status_r, status_w = os.pipe()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*unshare, python, "-I", "-S", os.path.abspath(__file__), spec_path, str(status_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": SANDBOX_PATH},
                cwd=host_dir,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        finally:
            os.close(status_w)
        readers = [_CappedReader(proc.stdout, max_output_bytes), _CappedReader(proc.stderr, max_output_bytes)]
        for reader in readers:
            reader.start()
        feeder = threading.Thread(target=_write_stdin, args=(proc.stdin, (stdin or "").encode()), daemon=True)
        feeder.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc, grace_s)
        else:
            # The namespace is gone with its init; a straggler would only be a stuck pipe holder.
            _stop_group(proc, grace_s)
        wall_s = time.monotonic() - start
        with os.fdopen(status_r, "rb") as fh:
            status = fh.read()
        for thread in (*readers, feeder):
            thread.join(timeout=5)
    stdout, stderr = readers[0].text(), readers[1].text()
    started, _, ending = status.decode(errors="replace").partition("\n")
    if started != _SETUP_OK.decode():
        detail = started or stderr.strip() or f"exit {proc.returncode}"
        raise SandboxUnavailableError(f"sandbox setup failed, code not run: {detail}")
    returncode, signum = _program_end(ending, proc.returncode)
    return SandboxResult(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        killed_by_signal=signum,
        wall_s=wall_s,
        output_truncated=any(r.truncated for r in readers),
    )


def _program_end(ending: str, unshare_returncode: int) -> tuple[int, int | None]:
    """(returncode, signal) of the program from the launcher's report, negative if signalled.

    Without a report the launcher itself was killed (the wall-clock timeout): use unshare's.
    """
    kind, _, value = ending.partition(" ")
    if kind == "exit":
        return int(value), None
    if kind == "signal":
        return -int(value), int(value)
    signum = -unshare_returncode if unshare_returncode < 0 else None
    return unshare_returncode, signum


# ---------------------------------------------------------------------------------------------
# The launcher: runs inside the namespaces as root of the new user namespace, standard library
# only (it is started with ``python -I -S`` before it leaves the host's tree for the new root).

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC = 0x2, 0x4, 0x8, 0x1000, 0x4000
_MNT_DETACH = 0x2
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_SYS_MOUNT_SETATTR = 442  # the same number on every Linux architecture
# pivot_root(2) has no C library wrapper and a number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}
_CLONE_NEWUSER = 0x10000000
_PR_SET_DUMPABLE = 4
NOBODY = 65534


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _make_readonly(path: str, *, recursive: bool = True) -> None:
    """Mark the mount at `path` (and those below it) read-only and nosuid (mount_setattr(2))."""
    attr = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID)
    _check(
        _libc.syscall(
            _SYS_MOUNT_SETATTR,
            _AT_FDCWD,
            path.encode(),
            _AT_RECURSIVE if recursive else 0,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        f"read-only {path}",
    )


def _pivot_root_here() -> None:
    """Make the current folder (a mount) the root and detach the old root with all it held."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise RuntimeError(f"pivot_root: unknown syscall number for {os.uname().machine}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    # The old root now lies on top of the new one, at the same place: detach it.
    _check(_libc.umount2(b".", _MNT_DETACH), "detach the host's root")
    os.chdir("/")


def _network_interfaces() -> list[str]:
    with open("/proc/net/dev", encoding="ascii") as fh:
        return [line.split(":")[0].strip() for line in fh.readlines()[2:]]


def _setup(spec: dict, new_root: str) -> None:
    """Build the allow-listed root at `new_root` (an empty folder) and move into it."""
    root = spec["root"]
    os.umask(0o022)
    _mount("tmpfs", new_root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    inside = {path: new_root + path for path in (*root["binds"], *root["files"], *spec["scratch"], "/proc")}
    # Scratch first: an interpreter under /tmp (a checkout there, as in CI) is bound on top of it.
    for path in spec["scratch"]:
        os.makedirs(inside[path])
        _mount("tmpfs", inside[path], "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec['scratch_mb']}m,mode=1777")
    for path in (*root["binds"], "/proc"):
        os.makedirs(inside[path], exist_ok=True)
    for path in root["files"]:
        os.makedirs(os.path.dirname(inside[path]), exist_ok=True)
        open(inside[path], "x").close()  # noqa: SIM115 - an empty mount point
    for path, target in {**root["links"], **root["device_links"]}.items():
        os.makedirs(os.path.dirname(new_root + path), exist_ok=True)
        os.symlink(target, new_root + path)
    for path in (*root["binds"], *root["files"]):
        _mount(path, inside[path], None, _MS_BIND | _MS_REC, None)
        _make_readonly(inside[path])
    _make_readonly(new_root, recursive=False)
    # A fresh proc of the new PID namespace, writable, for the user namespace maps.
    _mount("proc", inside["/proc"], "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    os.chdir(new_root)
    _pivot_root_here()
    os.makedirs(WORKDIR)
    with open(os.path.join(WORKDIR, "main.py"), "w", encoding="utf-8") as fh:
        fh.write(spec["code"])
    os.chdir(WORKDIR)
    interfaces = _network_interfaces()
    if interfaces != ["lo"]:
        raise RuntimeError(f"network not isolated: interfaces {interfaces}")


def _drop_privileges(spec: dict) -> None:
    """In the program's process, before exec: another uid if we are real root, then rlimits."""
    if _in_initial_user_namespace():
        _become_nobody()
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _in_initial_user_namespace() -> bool:
    with open("/proc/self/uid_map", encoding="ascii") as fh:
        return fh.read().split() == ["0", "0", "4294967295"]


def _become_nobody() -> None:
    """Real root: drop to uid/gid 65534, then enter a user namespace of our own.

    The kernel exempts real root from RLIMIT_NPROC, so the fork-bomb limit needs another uid;
    the extra user namespace gives this sandbox its own process count for that uid, so a fork
    bomb in one sandbox cannot starve another one running beside it.
    """
    os.chown(WORKDIR, NOBODY, NOBODY)
    os.chown(os.path.join(WORKDIR, "main.py"), NOBODY, NOBODY)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    # Changing uid made us non-dumpable, which leaves /proc/self owned by root.
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _check(_libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{NOBODY} {NOBODY} 1"), ("gid_map", f"{NOBODY} {NOBODY} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as fh:
            fh.write(text)


def _launch(spec_path: str, status_fd: int) -> None:
    """Set up, then stay as the namespace's init: run the program as a child and report its end.

    The status pipe carries ``ok`` (sent by the child just before exec) and then
    ``exit N`` / ``signal S``, or an error message if setup failed. Exiting ends the PID
    namespace, so the kernel kills whatever the program left behind.
    """
    os.set_inheritable(status_fd, False)
    # Not dumpable: a program of the same uid cannot open /proc/1/fd/* (the status pipe, stdout).
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    try:
        new_root = os.path.join(os.path.dirname(spec_path), "root")
        os.mkdir(new_root)
        _setup(spec, new_root)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
        os.write(status_fd, f"{type(err).__name__}: {err}".encode())
        os._exit(_STATUS_ERROR_EXIT)
    pid = os.fork()
    if pid == 0:
        try:
            _drop_privileges(spec)
            setpriv = [
                spec["setpriv"],
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--ambient-caps=-all",
            ]
            os.write(status_fd, _SETUP_OK + b"\n")
            os.execve(setpriv[0], [*setpriv, "--", spec["root"]["python"], "main.py"], spec["env"])
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
            os.write(status_fd, f"{type(err).__name__}: {err}".encode())
        os._exit(_STATUS_ERROR_EXIT)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        os.write(status_fd, f"signal {os.WTERMSIG(status)}".encode())
        os._exit(128 + os.WTERMSIG(status))
    os.write(status_fd, f"exit {os.WEXITSTATUS(status)}".encode())
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    _launch(sys.argv[1], int(sys.argv[2]))
