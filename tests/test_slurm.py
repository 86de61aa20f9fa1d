"""The real workflow through a real single-node SLURM with `profiles/slurm` (+ a CI override).

Starts munged, slurmctld and slurmd (tests/slurm/start_slurm.sh, Debian's slurm-wlm), runs the
demo DAG's cheap jobs on a tiny model up to two score files, and checks from SLURM's own records
that the jobs ran as SLURM jobs with the GPUs the workflow asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "tests/slurm"
GENERATE_GPUS = 2  # the tiny model's tensor_parallel: generate asks for one GPU per rank

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TARGETS = [
    "results/tiny/data/train/tiny.jsonl",  # build_train_set (CPU)
    "results/tiny/train/tiny/lora-r4-mlp/recipe.yaml",  # write_recipe (local rule: not submitted)
    "results/tiny/scores/tiny/base/epoch-0/strongreject.json",  # build_benchmark, generate (GPU), grade, score
    "results/tiny/scores/tiny/base/epoch-0/xstest.json",
]


def _require_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the SLURM test starts daemons and writes /etc/slurm: it needs root")
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is not available to install slurm-wlm and munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", "install", "-y", "slurm-wlm", "munge"], env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:  # a stale package index: refresh once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "slurm-wlm", "munge"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    _require_slurm()
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "tests/slurm/start_slurm.sh" not in conf.read_text():
        pytest.skip("this machine has its own /etc/slurm/slurm.conf: not replacing a real SLURM setup")
    state = tmp_path_factory.mktemp("slurm-state")
    start = subprocess.run(
        ["bash", str(HERE / "start_slurm.sh"), str(state)], capture_output=True, text=True, timeout=120
    )
    assert start.returncode == 0, start.stdout + start.stderr
    yield state
    subprocess.run(["bash", str(HERE / "stop_slurm.sh"), str(state)], timeout=60)


def ci_config(model_dir: Path) -> dict:
    """The demo config on a tiny local model: two benchmarks of two prompts, four new tokens."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text(encoding="utf-8"))
    config["experiment"] = "tiny"
    config["models"] = {
        "tiny": {
            "source": {"path": str(model_dir)},
            "size": "tiny",
            "dtype": "float32",
            "max_model_len": 512,
            "tensor_parallel": GENERATE_GPUS,
        }
    }
    source = config["training_data"]["sources"]["demo"]
    source.update(path=str(REPO / source["path"]), rows=8)
    for method in ("full", "lora"):
        config["training"][method]["per_model"] = {
            "tiny": {"gpus": 1, "per_device_train_batch_size": 4, "global_batch": 4}
        }
    config["runs"] = [run for run in config["runs"] if run["name"] in ("base", "lora-r4-mlp")]
    for run in config["runs"]:
        run["models"] = ["tiny"]
    config["analysis"]["runs"] = ["lora-r4-mlp"]
    benchmarks = config["benchmarks"]
    del benchmarks["arithmetic"]
    for bench in benchmarks.values():
        bench["source"]["csv"] = str(REPO / bench["source"]["csv"])
        bench["limit"] = 2
        bench["sampling"]["max_new_tokens"] = 4
    return config


# The processes that do a job's work: its workflow script (the engine runs in it).
WORKLOAD = (b"workflow_scripts/",)


class JobEnvironments:
    """Samples CUDA_VISIBLE_DEVICES from /proc of every workload process SLURM tracks, while jobs run."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> JobEnvironments:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            listing = subprocess.run(["scontrol", "listpids"], capture_output=True, text=True).stdout
            for line in listing.splitlines()[1:]:
                pid, jobid = line.split()[:2]
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if not any(part in cmdline for part in WORKLOAD):
                    continue  # SLURM's and Snakemake's own helpers (sampled mid-start under load)
                value = next((v[21:].decode() for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")), "")
                self.seen.setdefault(jobid, set()).add(value)


def slurm_jobs() -> dict[str, dict[str, str]]:
    """SLURM's record of every job it knows (MinJobAge keeps finished ones): id -> fields."""
    listing = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    jobs = {}
    for jobid in listing:
        text = subprocess.run(
            ["scontrol", "show", "job", "-d", jobid], capture_output=True, text=True, check=True
        ).stdout
        jobs[jobid] = dict(re.findall(r"(\w+)=(\S*)", text))
    return jobs


def test_workflow_jobs_run_as_slurm_jobs_with_the_requested_gpus(slurm_cluster, tiny_model, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(ci_config(tiny_model), sort_keys=False))
    before = set(slurm_jobs())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        "timeout",
        "240",
        sys.executable,
        "-m",
        "snakemake",
        *TARGETS,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(workdir / "config.yaml"),
        "--profile",
        str(REPO / "profiles/slurm"),
        "--profile",
        str(HERE / "profile"),
    ]
    with JobEnvironments() as environments:
        run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-6000:]
    for target in TARGETS:
        assert (workdir / target).stat().st_size > 0

    jobs = {jobid: job for jobid, job in slurm_jobs().items() if jobid not in before}
    by_kind = {}
    for jobid, job in jobs.items():
        assert job["JobState"] == "COMPLETED", job
        # a rule's job: rule_<rule>[_wildcards_...]
        kind = re.match(r"rule_(\w+?)(_wildcards_|$)", job["Comment"]).group(1)
        by_kind.setdefault(kind, []).append(jobid)
    # Every non-local job was a SLURM job; grade_text and score are local rules (seconds of work
    # each, run by Snakemake itself), so they never became submissions.
    assert sorted((k, len(v)) for k, v in by_kind.items()) == [
        ("build_benchmark", 2),
        ("build_train_set", 1),
        ("generate", 2),
    ]
    for kind, ids in by_kind.items():
        for jobid in ids:
            gres = jobs[jobid].get("JOB_GRES", "(null)")
            if kind == "generate":
                assert gres == f"gpu:{GENERATE_GPUS}", jobs[jobid]
                # the job's processes saw exactly the GPUs SLURM bound to it, e.g. "0,1" or "2,3"
                assert len(environments.seen[jobid]) == 1, environments.seen
                (devices,) = environments.seen[jobid]
                assert len(set(devices.split(","))) == GENERATE_GPUS, environments.seen
            else:
                assert gres == "(null)", jobs[jobid]
                assert environments.seen.get(jobid, {""}) == {""}, environments.seen
