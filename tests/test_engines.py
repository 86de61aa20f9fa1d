"""One engine for many jobs: adapters named per request, and the node's shared engine process.

On the transformers backend (the DAG tests' and the demo's): one backend serving two adapters and
the base, interleaved, gives each the text a backend of its own gives it, and an adapter rewritten
in place is served anew; jobs that open the shared engine one after another get one engine
process, the same records as an engine of their own, and the engine exits when idle.
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from tiny_model import random_adapter

from safelora.evaluation import engines
from safelora.evaluation.engines import engine_dir, engine_env, open_backend
from safelora.evaluation.generation import GenerationJob, ModelRef, Sampling, TransformersBackend, run_generation
from safelora.io import read_jsonl

PROMPTS = [
    f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    for question in ("What is 2 + 3?", "How do I bake a cake?")
]
GREEDY = Sampling(n=1, temperature=0, top_p=1.0, max_new_tokens=12, seed=0)
MLP = ["gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    random_adapter(tiny_model, root / "a", 1, MLP)
    random_adapter(tiny_model, root / "b", 2, [*MLP, "q_proj", "v_proj"])
    return {"a": root / "a", "b": root / "b"}


def texts(backend, adapter: Path | None) -> list[str]:
    return [c.text for [c] in backend.generate(PROMPTS, GREEDY, [0, 1], str(adapter) if adapter else None)]


def own_backend(tiny_model) -> TransformersBackend:
    return TransformersBackend(ModelRef(base=str(tiny_model), dtype="float32"), batch_size=2)


def test_the_engine_process_imports_this_package_without_an_installed_one(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    first = engine_env()["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "safelora/evaluation/engines.py").resolve() == Path(engines.__file__).resolve()


@pytest.mark.slow
def test_one_transformers_backend_serves_adapters_like_one_backend_each(tiny_model, adapters, tmp_path):
    alone = {name: texts(own_backend(tiny_model), adapters.get(name)) for name in ("a", "b", "base")}
    assert len({tuple(t) for t in alone.values()}) == 3, "each adapter (and the base) writes its own text"
    shared = own_backend(tiny_model)
    for name in ("a", "base", "b", "a", "base"):
        assert texts(shared, adapters.get(name)) == alone[name], name
    # An adapter retrained in place (newer files) is loaded afresh, not served from the old copy.
    moved = tmp_path / "a"
    shutil.copytree(adapters["a"], moved)
    assert texts(shared, moved) == alone["a"]
    for f in adapters["b"].iterdir():
        shutil.copy2(f, moved / f.name)
        os.utime(moved / f.name, (time.time() + 10, time.time() + 10))
    assert texts(shared, moved) == alone["b"]


@pytest.mark.slow
def test_jobs_share_one_engine_process_with_the_records_of_their_own(
    tiny_model, adapters, tmp_path_factory, monkeypatch
):
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("t")))  # a short path: Unix sockets allow 107 bytes
    out = tmp_path_factory.mktemp("out")
    ref = ModelRef(base=str(tiny_model), dtype="float32")
    sampling = Sampling(n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=3)
    ids = ["p0", "p1"]
    for name in ("a", "base", "b"):  # three jobs, one after another, as Snakemake runs them
        adapter = str(adapters[name]) if name in adapters else None
        for where, backend in (
            ("shared", open_backend("transformers", ref, 3, 2, idle_s=3)),
            ("own", open_backend("transformers", ref, 3, 2, idle_s=0)),
        ):
            run_generation(
                GenerationJob(ids, PROMPTS, sampling, 1, {}, adapter), backend, out / f"{where}-{name}.jsonl"
            )
        own, shared = (read_jsonl(out / f"{where}-{name}.jsonl") for where in ("own", "shared"))
        assert shared == own and len(shared) == 4, name
    (log,) = engine_dir().glob("*.log")
    starts = [line for line in log.read_text().splitlines() if line.startswith("engine ")]
    assert len(starts) == 1, log.read_text()
    deadline = time.monotonic() + 60
    while list(engine_dir().glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not list(engine_dir().glob("*.sock")), "the engine exits after its idle time"
    assert "idle for 3 s: engine exits" in log.read_text()


@pytest.mark.slow
def test_an_idle_engine_is_stopped_for_another_and_a_busy_one_is_not(tiny_model, tmp_path_factory, monkeypatch):
    """What a vLLM job does before starting its engine (two cannot share a GPU's memory):
    the scope's idle engines exit, with their processes, and an engine a job still uses stays."""
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("t")))
    monkeypatch.setattr(engines, "BUSY_GRACE_S", 1.0)
    ref = ModelRef(base=str(tiny_model), dtype="float32")
    busy = open_backend("transformers", ref, 1, 2, idle_s=600)  # its job is still connected
    (busy_socket,) = engine_dir().glob("*.sock")
    idle = open_backend("transformers", ref, 2, 2, idle_s=600)  # another seed: another engine
    (idle_socket,) = set(engine_dir().glob("*.sock")) - {busy_socket}
    idle.conn.close()  # its job ended
    deadline = time.monotonic() + 30  # the engine sees the job's end asynchronously
    stopped = engines.stop_idle_engines(engine_dir())
    while not stopped and time.monotonic() < deadline:
        stopped = engines.stop_idle_engines(engine_dir())
    assert stopped == [idle_socket] and not idle_socket.exists() and busy_socket.exists()
    assert "stopped on request" in idle_socket.with_suffix(".log").read_text()
    assert texts(busy, None) == texts(own_backend(tiny_model), None)  # the busy engine serves on
    busy.conn.close()
    deadline = time.monotonic() + 30
    while busy_socket.exists() and time.monotonic() < deadline:
        engines.stop_idle_engines(engine_dir())
    assert not busy_socket.exists()
