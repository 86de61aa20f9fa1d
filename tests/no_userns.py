"""Run a command as another user where user namespaces are disabled, without touching the host.

Usage (as root): python no_userns.py UID GID COMMAND...

The command runs inside a user namespace of its own (ids 0-65535 mapped to themselves) whose
`user.max_user_namespaces` is 0, as uid/gid UID/GID: for it, creating a user namespace fails as on
a cluster node with `sysctl user.max_user_namespaces=0`. The limit is per user namespace, so the
host's setting and other processes are unaffected.
"""

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
IDS = "0 0 65536"


def main() -> int:
    uid, gid, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(125)
        os.write(unshared_w, b"1")
        os.read(mapped_r, 1)  # the parent writes the id maps
        with open("/proc/sys/user/max_user_namespaces", "w", encoding="ascii") as fh:
            fh.write("0")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.execvp(command[0], command)
    if os.read(unshared_r, 1) != b"1":
        raise OSError(f"unshare(CLONE_NEWUSER) failed in the child (exit {os.waitpid(pid, 0)[1]})")
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as fh:
            fh.write(IDS)
    os.write(mapped_w, b"1")
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    sys.exit(main())
