"""Pruning of finished runs and the memory guard."""

import json
import subprocess
import sys
import textwrap

from safelora.housekeeping import MEMORY_EXIT_CODE, prune_run


def test_prune_keeps_the_chosen_epochs_and_drops_trainer_state(tmp_path):
    epochs = []
    for e in (1, 2, 3):
        folder = tmp_path / "ckpt" / f"epoch-{e}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        epochs.append({"epoch": e, "path": str(folder)})
    state = tmp_path / "state" / "checkpoint-9"
    state.mkdir(parents=True)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"epochs": epochs}))
    record = prune_run(manifest, tmp_path / "state", "last", trainer_state=True)
    assert record["kept_epochs"] == [3]
    assert not (tmp_path / "state").exists()
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == ["epoch-3"]


def test_memory_guard_stops_a_growing_job_with_a_clear_message(repo):
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(repo / 'src')!r})
        from safelora.housekeeping import MemoryGuard
        MemoryGuard(limit_mb=300, interval_s=0.05).start()
        hog = []
        for _ in range(200):
            hog.append(bytearray(20 * 2**20))
            time.sleep(0.02)
        print("never reached")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == MEMORY_EXIT_CODE
    assert "memory guard" in result.stderr and "mem_mb=300" in result.stderr
    assert "never reached" not in result.stdout
