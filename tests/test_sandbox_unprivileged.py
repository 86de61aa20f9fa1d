"""execute_code as an unprivileged cluster user: sandboxed where user namespaces are allowed, and
stopped before any sample where they are not (docs/sandbox.md, 'Running unprivileged').

Needs root to set up (useradd, a readable interpreter); CI runs as root. The user's interpreter
is a venv of the system Python of the same version whose site-packages are hard links to this
venv's (the running interpreter's base may sit in root's home, which the user cannot read).
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hostile_scratch import ScratchFolder, reached

from safelora.evaluation.code_exec import load_evalplus_problems
from safelora.evaluation.sandbox import unavailable_message
from safelora.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
HUMANEVAL = REPO / "data" / "evalplus" / "HumanEvalPlus.jsonl.gz"
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.fixture(scope="module")
def cluster_user():
    """(uid, gid, python, folder): a user made for this test, an interpreter it can run, a folder it owns."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not SYSTEM_PYTHON.exists():
        pytest.skip("needs root, useradd and a system Python of this version")
    name = f"safelora-sbx-{os.getpid()}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    top = Path(tempfile.mkdtemp(prefix="safelora-sbx-", dir="/tmp"))
    try:
        user = pwd.getpwnam(name)
        top.chmod(0o755)
        venv = top / "venv"
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        linked = subprocess.run(
            ["cp", "-al", f"{sysconfig.get_paths()['purelib']}/.", str(site)], capture_output=True, text=True
        )
        if linked.returncode != 0:
            pytest.skip(f"cannot hard-link the venv's packages: {linked.stderr[-300:]}")
        for editable in site.glob("__editable__*"):  # the checkout's package comes from PYTHONPATH
            editable.unlink()
        folder = top / "job"
        folder.mkdir()
        os.chown(folder, user.pw_uid, user.pw_gid)
        yield user.pw_uid, user.pw_gid, venv / "bin" / "python", folder
    finally:
        shutil.rmtree(top, ignore_errors=True)
        subprocess.run(["userdel", name], check=False)


def write_generations(folder: Path, marker: Path) -> Path:
    """HumanEval/3: the canonical solution, and one that would leave `marker` if run unsandboxed."""
    task = load_evalplus_problems("humaneval", HUMANEVAL)["HumanEval/3"]
    right = f"```python\n{task['prompt']}{task['canonical_solution']}```"
    tamper = (
        f"```python\ndef below_zero(operations):\n    open({str(marker)!r}, 'w').write('ran')\n    return True\n```"
    )
    items = folder / "items.jsonl"  # the benchmark's items, against which the generation file is checked
    items.write_text(json.dumps({"id": "HumanEval/3", "prompt": task["prompt"], "answer": None, "meta": {}}) + "\n")
    path = folder / "generations.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt_id": "HumanEval/3", "sample_index": i, "sampling": {"n": 2}, "text": text}) + "\n"
            for i, text in enumerate([right, tamper])
        )
    )
    for f in (items, path):
        f.chmod(0o644)
    return path


def execute_code(python: Path, folder: Path, generations: Path, prefix: list[str]) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(folder),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        *prefix,
        str(python),
        str(REPO / "workflow_scripts" / "execute_code.py"),
        "--settings",
        json.dumps({"dataset": "humaneval", "problems": str(HUMANEVAL), "timeout_s": 20, "memory_mb": 4096}),
        "--generations",
        str(generations),
        "--items",
        str(generations.with_name("items.jsonl")),
        "--out",
        str(folder / "plus.jsonl"),
        "--out-base",
        str(folder / "base.jsonl"),
        "--workers",
        "1",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_execute_code_runs_sandboxed_as_an_unprivileged_user(cluster_user):
    uid, gid, python, folder = cluster_user
    marker = folder / "ran"
    generations = write_generations(folder, marker)
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    whoami = subprocess.run([*as_user, "id", "-u"], capture_output=True, text=True, check=True)
    assert int(whoami.stdout) == uid != 0
    result = execute_code(python, folder, generations, as_user)
    assert result.returncode == 0, result.stderr[-3000:]
    plus = read_jsonl(folder / "plus.jsonl")
    assert [(v["value"], v["label"]) for v in plus] == [(1.0, "pass"), (0.0, "base_fail")]  # plus needs base (EvalPlus)
    assert not marker.exists()  # the tampering sample ran, in the sandbox's private /tmp only


@pytest.mark.slow
def test_without_user_namespaces_execute_code_stops_before_any_sample(cluster_user):
    uid, gid, python, folder = cluster_user
    for name in ("plus.jsonl", "base.jsonl"):
        (folder / name).unlink(missing_ok=True)
    marker = folder / "ran"
    generations = write_generations(folder, marker)
    result = execute_code(
        python, folder, generations, [sys.executable, str(REPO / "tests" / "no_userns.py"), str(uid), str(gid)]
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "no sample was run" in result.stderr
    assert "user.max_user_namespaces = 0 forbids" in result.stderr
    assert "kernel.apparmor_restrict_unprivileged_userns" in result.stderr and "docs/sandbox.md" in result.stderr
    assert not (folder / "plus.jsonl").exists() and not (folder / "base.jsonl").exists()
    assert not marker.exists()  # never run unsandboxed


@pytest.mark.slow
def test_the_users_scratch_folder_is_out_of_reach(cluster_user):
    """A red-team finding, as found: the job's own user, TMPDIR and HF_HOME on node scratch."""
    uid, gid, python, folder = cluster_user
    scratch = ScratchFolder(uid, gid)
    try:
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), "HOME": str(folder), **scratch.env}
        sandboxed = (
            "import sys; from safelora.evaluation.sandbox import run_sandboxed; "
            "r = run_sandboxed(sys.stdin.read(), timeout_s=60, memory_mb=1024); "
            "print(r.stderr, file=sys.stderr); print(r.stdout)"
        )
        outside, inside = (
            subprocess.run(
                [*as_user, str(python), "-c", code], input=stdin, env=env, capture_output=True, text=True, timeout=120
            )
            for code, stdin in ((scratch.probe, None), (sandboxed, scratch.probe))
        )
    finally:
        scratch.close()
    assert outside.returncode == 0 and inside.returncode == 0, outside.stderr[-2000:] + inside.stderr[-2000:]
    print(f"\nas uid {uid}, outside the sandbox: {json.dumps(reached(outside.stdout), indent=1)}")
    print(f"as uid {uid}, inside the sandbox: {json.dumps(reached(inside.stdout), indent=1)}")
    assert all(v.startswith("REACHED") for v in reached(outside.stdout).values())  # the probe can succeed
    assert all(v.startswith("blocked") for v in reached(inside.stdout).values())


def test_the_message_names_the_setting_that_forbids_the_namespace():
    apparmor = unavailable_message(
        "unshare failed",
        1000,
        {"user.max_user_namespaces": "15000", "kernel.apparmor_restrict_unprivileged_userns": "1"},
    )
    assert "kernel.apparmor_restrict_unprivileged_userns = 1 forbids" in apparmor
    assert "user.max_user_namespaces = 15000 forbids" not in apparmor
    allowed = unavailable_message("mount failed", 1000, {"user.max_user_namespaces": "15000"})
    assert "forbids" not in allowed and "this system refused" in allowed
    root = unavailable_message("mount failed", 0, {"user.max_user_namespaces": "0"})
    assert "needs no user namespace" in root
    assert all("docs/sandbox.md" in m and "never run unsandboxed" in m for m in (apparmor, allowed, root))
