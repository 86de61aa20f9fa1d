"""benchmarks/gpu_check.py --cpu: the GPU check's whole path (the project's CLIs: build, LoRA and
ZeRO-3 training under torchrun, generation from both checkpoints, grading and judging) on CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/gpu_check.py"),
            "--cpu",
            "--rows",
            "8",
            "--prompts",
            "2",
            "--max-new-tokens",
            "4",
            "--workdir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for run in ("lora-r4-mlp", "full"):  # 8 rows / global batch 4 = 2 optimizer steps
        assert re.search(rf"^train {re.escape(run)} +2 steps  step +[\d.]+ s .* peak RSS +\d+ MiB", out, re.M), out
    for name in ("lora", "full"):
        assert re.search(rf"^generate {name} +transformers +2 samples +\d+ tokens", out, re.M), out
    assert "generate vllm: skipped" in out
    assert re.search(r"^grade +refusal_match +2 verdicts", out, re.M), out
    assert re.search(r"^judge +llama_guard +2 verdicts", out, re.M), out
    assert re.search(r"^gpu_check done in \d+ s$", out, re.M), out
    # full fine-tuning really ran under DeepSpeed ZeRO: the trainer state holds its partitioned checkpoint
    assert list((tmp_path / "full" / "state").glob("checkpoint-*/global_step*/*zero_pp_rank_0_*optim_states.pt"))
    assert not list((tmp_path / "lora-r4-mlp" / "state").glob("checkpoint-*/global_step*"))
