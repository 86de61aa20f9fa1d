#!/usr/bin/env python3
"""Planning cost of the real workflow vs a bare Snakefile with the same jobs and the same DAG.

1. `snakemake -n --profile profiles/slurm` on the config (default: the paper grid) lists every
   job with its inputs and outputs; that listing defines the bare workflow: one rule per real
   rule, one job per real job (output `o/<rule>/<jobid>`), each job depending on the jobs that
   produce its real inputs. So job counts per rule and every edge are the real DAG's; what the
   bare one lacks is our input functions, params, resources expressions and profile.
2. Dry run: both `snakemake -n`, interleaved, several repetitions, in this one process tree.
3. No-op rerun: every output of both workflows is created empty (directories for `directory()`
   outputs), with modification times ascending along the DAG, and both are dry-run again: each
   must plan nothing; the time is what Snakemake needs to decide that.
Prints every time, the medians, and the ratios real / bare (goal: at most 1.3), of wall-clock
time and of CPU time (user + system of the Snakemake process and its children), which other
load on a shared machine distorts less. Each repetition runs the two back to back, in alternating
order, so the headline ratio is the median of the repetitions' own ratios: a machine whose speed
drifts between repetitions (tens of percent within minutes on a shared host) moves both runs of
one repetition alike. The ratio of the two medians is printed beside it.
`--instructions` runs each once under valgrind (`apt install valgrind`) instead and prints the
machine instructions executed: a count no other load moves, for a ratio on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake_cmd(snakefile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(snakefile), *args]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], cwd: Path, **env: str) -> str:
    """Run one Snakemake command (exit on failure) and return its stdout."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", **env}
    # as on a user's machine, bytecode is cached after the first plan (some sandboxes disable it)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def timed(cmd: list[str], cwd: Path) -> tuple[tuple[float, float], str]:
    """(wall-clock s, CPU s) of one run, and its stdout."""
    start, cpu = time.perf_counter(), _children_cpu_s()
    stdout = _run(cmd, cwd)
    return (time.perf_counter() - start, _children_cpu_s() - cpu), stdout


def instructions(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """Machine instructions one run executes (valgrind's cachegrind, child processes included),
    and its stdout. Unlike time, the count does not move with the host's load (two runs of the
    bare dry run differed by 0.01 %), so it can check a ratio on a shared machine; ~10x slower."""
    with tempfile.TemporaryDirectory() as logs:
        valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
        valgrind += ["--trace-children=yes", f"--log-file={logs}/%p.log"]
        stdout = _run(valgrind + cmd, cwd, PYTHONHASHSEED="0")
        counts = [re.search(r"I\s+refs:\s+([\d,]+)", log.read_text()) for log in Path(logs).glob("*.log")]
    return sum(int(c.group(1).replace(",", "")) for c in counts if c), stdout


def bare_snakefile(jobs, workdir: Path) -> Path:
    """Write the bare workflow (Snakefile + deps.json) reproducing the planned jobs' DAG."""
    producer = {path: job for job in jobs for path in job.outputs}
    deps = {}
    for job in jobs:
        sources = {(producer[p].rule, producer[p].jobid) for p in job.inputs if p in producer}
        deps[str(job.jobid)] = sorted(f"o/{rule}/{jobid}" for rule, jobid in sources)
    (workdir / "deps.json").write_text(json.dumps(deps))
    root = next(job for job in jobs if job.rule == "all")
    lines = [
        "import json",
        'DEPS = json.load(open("deps.json"))',
        "wildcard_constraints:",
        '    i=r"\\d+"',
        "rule all:",
        f'    input: DEPS["{root.jobid}"]',
    ]
    for rule in sorted({job.rule for job in jobs} - {"all"}):
        lines += [
            f"rule {rule}:",
            "    input: lambda w: DEPS[w.i]",
            f'    output: "o/{rule}/{{i}}"',
            '    shell: "touch {output}"',
        ]
    path = workdir / "Snakefile"
    path.write_text("\n".join(lines) + "\n")
    return path


def depths(jobs) -> dict[int, int]:
    """Longest path from a source job, so outputs can get ascending modification times."""
    producer = {path: job.jobid for job in jobs for path in job.outputs}
    parents = {job.jobid: {producer[p] for p in job.inputs if p in producer} for job in jobs}
    depth: dict[int, int] = {}

    def visit(jobid: int) -> int:
        if jobid not in depth:
            depth[jobid] = 1 + max((visit(p) for p in parents[jobid]), default=-1)
        return depth[jobid]

    sys.setrecursionlimit(100_000)
    for jobid in parents:
        visit(jobid)
    return depth


def directory_rules() -> set[str]:
    """Rules of the real workflow whose output is a `directory()`."""
    found = set()
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule )", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and "directory(" in block.split("log:")[0]:
                found.add(name.group(1))
    return found


def create_outputs(jobs, workdir: Path, path_of, dirs: set[str]) -> None:
    # Newer than every file the jobs read from the checkout (the local data files are inputs),
    # and ascending along the DAG, ending now.
    depth = depths(jobs)
    base = time.time() - max(depth.values()) - 1
    for job in jobs:
        for out in path_of(job):
            target = workdir / out
            if job.rule in dirs:
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                # a JSON output may be read while planning (a training manifest): an empty record
                target.write_text("{}" if target.suffix == ".json" else "")
            os.utime(target, (base + depth[job.jobid], base + depth[job.jobid]))


def report(name: str, bare: list[tuple[float, float]], real: list[tuple[float, float]]) -> None:
    for i, clock in enumerate(("wall", "CPU")):
        b, r = [t[i] for t in bare], [t[i] for t in real]
        print(
            f"{name}, {clock}: bare  " + "  ".join(f"{t:6.2f}" for t in b) + f"   median {statistics.median(b):6.2f} s"
        )
        print(
            f"{name}, {clock}: real  " + "  ".join(f"{t:6.2f}" for t in r) + f"   median {statistics.median(r):6.2f} s"
        )
        paired = statistics.median(x / y for x, y in zip(r, b, strict=True))
        print(
            f"{name}, {clock}: ratio real/bare = {paired:.2f} (median of paired ratios;"
            f" ratio of medians {statistics.median(r) / statistics.median(b):.2f})"
        )


def repeat(runs: list[tuple[str, list[str], Path]], repeats: int) -> dict[str, list[tuple[tuple[float, float], str]]]:
    """Every run once per repetition, back to back, reversed every other repetition (drift cancels)."""
    results: dict[str, list[tuple[tuple[float, float], str]]] = {name: [] for name, _, _ in runs}
    for repetition in range(repeats):
        for name, cmd, cwd in runs if repetition % 2 == 0 else runs[::-1]:
            results[name].append(timed(cmd, cwd))
    return results


def counted(runs: list[tuple[str, list[str], Path]]) -> dict[str, list[tuple[int, str]]]:
    """Every run once, under valgrind: the count needs no repetitions."""
    return {name: [instructions(cmd, cwd)] for name, cmd, cwd in runs}


def report_instructions(name: str, results: dict[str, list[tuple[int, str]]]) -> None:
    (bare, _), (real, _) = results["bare"][0], results["real"][0]
    print(f"{name}, instructions: bare {bare:,}  real {real:,}  ratio real/bare = {real / bare:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--profile", type=Path, default=REPO / "profiles/slurm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true", help="also time the real workflow without the profile")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind) instead of timing: load-independent"
    )
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("--instructions runs Snakemake under valgrind, which is not installed (apt install valgrind)")
    if args.instructions and args.no_profile:
        sys.exit("--no-profile is a timed comparison; --instructions counts the real and bare workflows only")
    sys.path.insert(0, str(REPO / "src"))
    from safelora.gpu_hours import parse_dryrun

    with tempfile.TemporaryDirectory() as tmp:
        real_dir, bare_dir = Path(tmp, "real"), Path(tmp, "bare")
        real_dir.mkdir()
        bare_dir.mkdir()
        (real_dir / "data").symlink_to(REPO / "data")  # the config's relative data paths
        real = snakemake_cmd(
            REPO / "Snakefile", "--configfile", str(args.configfile.resolve()), "--profile", str(args.profile.resolve())
        )
        plain = snakemake_cmd(REPO / "Snakefile", "--configfile", str(args.configfile.resolve()))
        _, listing = timed(real, real_dir)  # warm-up, and the job listing
        jobs = parse_dryrun(listing)
        bare = snakemake_cmd(bare_snakefile(jobs, bare_dir))
        counts = {}
        for job in jobs:
            counts[job.rule] = counts.get(job.rule, 0) + 1
        print(f"{len(jobs)} jobs in {len(counts)} rules: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())))
        timed(bare, bare_dir)  # warm-up

        runs = [("bare", bare, bare_dir), ("real", real, real_dir)]
        if args.no_profile:
            runs.append(("plain", plain, real_dir))
        if args.instructions:
            report_instructions("dry run", counted(runs[:2]))
        else:
            times = {name: [elapsed for elapsed, _ in results] for name, results in repeat(runs, args.repeats).items()}
            report("dry run", times["bare"], times["real"])
            if args.no_profile:
                report("dry run, real without profile", times["bare"], times["plain"])

        create_outputs(jobs, bare_dir, lambda job: [f"o/{job.rule}/{job.jobid}"] if job.rule != "all" else [], set())
        create_outputs(jobs, real_dir, lambda job: job.outputs if job.rule != "all" else [], directory_rules())
        noop = counted(runs[:2]) if args.instructions else repeat(runs[:2], args.repeats)
        for name, results in noop.items():
            for _, out in results:
                if "Nothing to be done" not in out:
                    sys.exit(f"no-op run of the {name} workflow planned jobs:\n{out[-3000:]}")
        if args.instructions:
            report_instructions("no-op rerun", noop)
        else:
            times = {name: [elapsed for elapsed, _ in results] for name, results in noop.items()}
            report("no-op rerun", times["bare"], times["real"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
