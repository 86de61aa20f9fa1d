"""Helpers to run the real workflow on a tiny locally built model in a scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# A planted hub token: no output, log, param or metadata file of the run may contain it.
FAKE_TOKEN = "hf_PLANTEDfakeTOKEN0123456789abcdef"


def tiny_config(model_dir: Path) -> dict:
    """The demo config shrunk to seconds per job, pointing at a tiny model and absolute data paths."""
    with open(REPO / "config/demo.yaml", encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    config["experiment"] = "tiny"
    config["models"] = {
        "tiny": {
            "source": {"path": str(model_dir)},
            "size": "tiny",
            "dtype": "float32",
            "max_model_len": 512,
            "tensor_parallel": 1,
        }
    }
    source = config["training_data"]["sources"]["demo"]
    source.update(path=str(REPO / source["path"]), rows=16)
    config["training_data"]["max_length"] = 128
    for method, epochs in (("full", 1), ("lora", 2)):
        config["training"][method]["num_train_epochs"] = epochs
        config["training"][method]["per_model"] = {
            "tiny": {"gpus": 1, "per_device_train_batch_size": 4, "global_batch": 8}
        }
    for run in config["runs"]:
        run["models"] = ["tiny"]
    config["orthomerge"] = {"sources": ["lora-r4-mlp"], "epochs": "last", "variants": {"both": [1.2]}, "k": 8}
    config["analysis"]["svd_rank"] = 16
    config["judges"] = {
        "tiny_guard": {"kind": "llama_guard", "path": str(model_dir), "max_new_tokens": 4, "version": 1}
    }
    benchmarks = config["benchmarks"]
    del benchmarks["xstest"]
    sr = benchmarks["strongreject"]
    sr["source"]["csv"] = str(REPO / sr["source"]["csv"])
    sr.update(limit=3, graders=["refusal_match", "tiny_guard"])
    sr["sampling"]["max_new_tokens"] = 6
    ar = benchmarks["arithmetic"]
    ar["source"]["jsonl"] = str(REPO / ar["source"]["jsonl"])
    ar["limit"] = 3
    ar["sampling"].update(n=2, max_new_tokens=4)
    benchmarks["humaneval"] = {
        "kind": "code",
        "label": "HumanEval",
        "source": {"evalplus": "humaneval", "path": str(REPO / "data/evalplus/HumanEvalPlus.jsonl.gz")},
        "problems": 164,
        "limit": 2,
        "sampling": {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8},
        "graders": ["evalplus"],
        "primary": "evalplus",
        "execution": {"timeout_s": 5, "memory_mb": 1024},
        "scorer_version": 1,
    }
    # The tiny judge answers gibberish: its verdicts are unparseable by design, counted, not scored.
    config["max_unparseable_share"] = 1.0
    config["aggregate"]["bootstrap"]["n"] = 200
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def snakemake(
    workdir: Path, *args: str, timeout: int = 1200, job_path: str | None = None
) -> subprocess.CompletedProcess:
    """Snakemake of this interpreter; its jobs find `python` on `job_path` (default: this interpreter first)."""
    env = {
        **os.environ,
        "PATH": job_path or f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "HF_TOKEN": FAKE_TOKEN,
    }
    if job_path:
        env.pop("PYTHONPATH", None)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--profile",
        str(REPO / "profiles/local"),
        *args,
        "--configfile",
        str(workdir / "config.yaml"),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def planned_jobs(workdir: Path) -> Counter:
    """Jobs a dry run would execute, per rule (empty when there is nothing to do)."""
    result = snakemake(workdir, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = Counter()
    table = re.search(r"job\s+count\n[-\s]+\n(.*?)\ntotal", result.stdout, re.S)
    if table:
        for line in table.group(1).splitlines():
            rule, count = line.split()
            counts[rule] = int(count)
    return counts


def planned(workdir: Path) -> list:
    """Jobs a dry run would execute, with their wildcards and outputs (safelora.gpu_hours parses them)."""
    from safelora.gpu_hours import parse_dryrun

    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    return parse_dryrun(result.stdout)
