"""Every `benchmarks/*.py` script runs as a user runs it (this interpreter, from the checkout): a real
quick run where one takes seconds on CPU, else `--help`, which still imports the script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--configfile", "config/demo.yaml", "--profile", "profiles/local"]

# script -> (arguments, text its output must contain). `--help` where a real run needs a GPU or vLLM
# (gpu_check.py has its own CPU test, tests/test_gpu_check.py), the demo's results (demo_run.py runs
# the demo), or minutes and gigabytes of memory on CPU (7B/14B-shaped matrices); dryrun_overhead.py
# on the demo's config, once (the paper grid's repeated dry runs take minutes).
RUNS = {
    "analysis_memory.py": (["--help"], "usage:"),
    "demo_run.py": (["--help"], "usage:"),
    "dryrun_overhead.py": ([*DEMO, "--repeats", "1"], "no-op rerun, CPU: ratio real/bare"),
    "gpu_check.py": (["--help"], "usage:"),
    "gpu_hours.py": (DEMO, "| **total** |"),
    "gpu_vllm_lora.py": (["--help"], "usage:"),
    "ortho_reg_overhead.py": (["--help"], "usage:"),
    "svd_stable_rank.py": (["--quick"], "truncated_svd k=64"),
    "train_steps.py": (DEMO, "| smollm2 | lora-r4-mlp | 0 | model_split | 1 |"),
    "viewer_scale.py": (["--quick", "--loads", "1"], "grid pages: 1, largest"),
}


def test_every_benchmark_script_is_covered():
    assert sorted(p.name for p in (REPO / "benchmarks").glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_script_runs(script):
    args, expected = RUNS[script]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{script} {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert expected in result.stdout, result.stdout[-3000:]
