"""Pruning of finished runs and the memory guard."""

import copy
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from safelora import config as grid
from safelora.config import ConfigError
from safelora.housekeeping import MEMORY_EXIT_CODE, prune_run


def finished_run(tmp_path):
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
    return manifest


def test_prune_keeps_the_chosen_epochs_and_drops_trainer_state(tmp_path):
    manifest = finished_run(tmp_path)
    record = prune_run(manifest, tmp_path / "state", "last", trainer_state=True)
    assert record["kept_epochs"] == [3]
    assert not (tmp_path / "state").exists()
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == ["epoch-3"]


def test_prune_never_deletes_every_checkpoint_and_reports_what_is_on_disk(tmp_path):
    manifest = finished_run(tmp_path)
    with pytest.raises(
        ValueError, match=r"manifest.json: keep_epochs \[7\] keeps none of the run's epochs \[1, 2, 3\]"
    ):
        prune_run(manifest, tmp_path / "state", [7], trainer_state=True)
    assert len(list((tmp_path / "ckpt").iterdir())) == 3 and (tmp_path / "state").exists()
    shutil.rmtree(tmp_path / "ckpt" / "epoch-1")  # a kept epoch lost before pruning is not reported as kept
    record = prune_run(manifest, tmp_path / "state", [1, 3], trainer_state=False)
    assert record["kept_epochs"] == [3] and record["removed"] == [str(tmp_path / "ckpt" / "epoch-2")]


# (keep_epochs, expected error or None) on the demo config (full: 2 epochs, LoRA: 3).
PRUNE_CONFIGS = [
    ([7], "prune.keep_epochs: run 'full' has 2 epochs, not [7]"),
    ([2, 3], "prune.keep_epochs: run 'full' has 2 epochs, not [3]"),
    ([], "prune.keep_epochs: an empty list would delete every checkpoint"),
    ([1, 2], None),
    ("last", None),
    ("all", None),
]


def test_prune_epochs_a_run_does_not_have_are_rejected_naming_the_key_and_run(repo, capsys):
    with open(repo / "config/demo.yaml", encoding="utf-8") as fh:
        demo = yaml.safe_load(fh)
    rejected = 0
    for keep, expected in PRUNE_CONFIGS:
        config = copy.deepcopy(demo)
        config["prune"] = {"trainer_state": True, "keep_epochs": keep}
        grid.validate_schema(config)
        if expected is None:
            grid.check_config(config, repo)
            print(f"config case: prune.keep_epochs {keep}: accepted")
            continue
        with pytest.raises(ConfigError) as err:
            grid.check_config(config, repo)
        assert str(err.value).startswith(expected), str(err.value)
        rejected += 1
        print(f"config case: prune.keep_epochs {keep}: rejected: {err.value}")
    with capsys.disabled():
        print(
            f"\nprune configs tried: {len(PRUNE_CONFIGS)}; rejected naming the key and run: {rejected}; "
            f"accepted: {len(PRUNE_CONFIGS) - rejected}"
        )


def test_memory_guard_stops_a_growing_job_with_a_clear_message(repo):
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(repo / "src")!r})
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
