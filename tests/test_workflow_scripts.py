"""Every workflow script runs by hand: `--help` works without the heavy imports."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "workflow_scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_help_runs_and_imports_nothing_heavy(script):
    probe = (
        "import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'deepspeed') if m in sys.modules]\n"
        "print('HEAVY', heavy)\nsys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "HEAVY []" in result.stdout


def test_train_launcher_is_executable_and_documented():
    launcher = SCRIPTS[0].parent / "launch_train.sh"
    assert launcher.stat().st_mode & 0o111
    assert "Usage: launch_train.sh GPUS NODES PARALLELISM SCRIPT" in launcher.read_text()
