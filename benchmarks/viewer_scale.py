#!/usr/bin/env python3
"""The response viewer at the paper grid's size: page sizes, build time and load time in Chromium.

Writes a synthetic grid in the workflow's file formats (docs/design.md): StrongREJECT's 313 prompts,
one sample each (as the paper samples it: n = 1, greedy), answered by 142 checkpoints (r1-14b's
count in config.yaml: the base model and every epoch of its runs, OrthoMerge included) with
responses of about 2,048 tokens (8,192 characters: thinking, then an answer; one in 20 cut at the
budget without closing </think>), each graded by two graders (a judge and the refusal matcher, one
verdict in 50 unparseable). Then it builds the viewer (safelora.report.viewer), prints the page
count, total size and the largest grid and row page, and opens those two in headless Chromium,
printing the best of `--loads` times to DOMContentLoaded and until the page is shown (the grid's
interactive table drawn). The machine's load average is printed with them: timings on a shared
machine vary by 2x.
`--quick`: 20 prompts x 6 checkpoints x 2,000 characters (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from safelora.io import atomic_write_jsonl  # noqa: E402
from safelora.report.aggregate import Benchmarks, ExpectedCheckpoint  # noqa: E402
from safelora.report.viewer import GRID_PAGE_BYTES, build_viewer, collect_sources  # noqa: E402

MODEL, BENCHMARK = "r1-14b", "strongreject"
WORDS = ["the", "a", "to", "of", "and", "is", "in", "that", "it", "for", "this", "be", "as", "are", "not", "request",
         "I", "can", "help", "with", "cannot", "provide", "safety", "harmful", "information", "however", "instead",
         "legal", "consider", "step", "first", "then", "user", "wants", "asking", "should", "would"]  # fmt: skip


def text_of(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def write_grid(root: Path, prompts: int, checkpoints: int, chars: int, seed: int = 0) -> list[ExpectedCheckpoint]:
    """The synthetic grid's files under `root` (a results/<experiment> folder); its checkpoints."""
    rng = random.Random(seed)
    items = [{"id": str(i), "prompt": f"Forbidden prompt {i}: " + text_of(rng, 200), "answer": None, "meta": {}}
             for i in range(prompts)]  # fmt: skip
    atomic_write_jsonl(root / f"data/bench/{BENCHMARK}.jsonl", items)
    runs = [("base", 0)] + [(f"run-{r:02d}", e) for r in range(checkpoints) for e in range(1, 6)]
    for run, epoch in runs[:checkpoints]:
        folder = f"{MODEL}/{run}/epoch-{epoch}"
        gens, judge, match = [], [], []
        for item in items:
            cut = rng.random() < 0.05
            thinking = text_of(rng, chars if cut else chars * 3 // 4)
            text = thinking if cut else f"{thinking}\n</think>\n\n{text_of(rng, chars // 4)}"
            gens.append(
                {"prompt_id": item["id"], "sample_index": 0, "prompt": f"<|User|>{item['prompt']}<|Assistant|><think>\n",
                 "text": text, "finish_reason": "length" if cut else "stop", "prompt_tokens": 60,
                 "completion_tokens": chars // 4,
                 "sampling": {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 2048, "seed": 0},
                 "engine": "synthetic"}
            )  # fmt: skip
            safe = rng.random() < 0.8
            value = None if rng.random() < 0.02 else float(safe)
            label = "unparseable" if value is None else "safe" if safe else "unsafe"
            judge.append({"prompt_id": item["id"], "sample_index": 0, "grader": "llama_guard", "value": value,
                          "label": label, "raw": f"{label}\nS1"})  # fmt: skip
            refused = safe if rng.random() < 0.9 else not safe
            match.append({"prompt_id": item["id"], "sample_index": 0, "grader": "refusal_match",
                          "value": float(refused), "label": "refused" if refused else "complied", "raw": ""})  # fmt: skip
        atomic_write_jsonl(root / f"generations/{folder}/{BENCHMARK}.jsonl", gens)
        for grader, records in (("llama_guard", judge), ("refusal_match", match)):
            atomic_write_jsonl(root / f"verdicts/{folder}/{BENCHMARK}/{grader}.jsonl", records)
    return [ExpectedCheckpoint(MODEL, run, epoch, (BENCHMARK,)) for run, epoch in runs[:checkpoints]]


class Chromium:
    """Headless Chromium driven over its DevTools pipe (file descriptors 3 and 4, JSON messages
    ended by NUL): navigate, then poll the page until an expression holds."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"]  # fmt: skip
        # the DevTools pipe is the browser's descriptors 3 (commands in) and 4 (replies out)
        self._proc = subprocess.Popen(
            ["sh", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', binary, *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed its pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self._session)
        return result["result"].get("value")

    def load(self, url: str, ready: str, timeout: float = 120.0) -> tuple[float, float]:
        """Seconds from navigation start to DOMContentLoaded and until `ready` holds (polled every 20 ms)."""
        self.call("Page.navigate", {"url": url}, self._session)
        start = time.perf_counter()
        check = f"document.readyState !== 'loading' && document.URL === {json.dumps(url)} && ({ready})"
        while time.perf_counter() - start < timeout:
            now = self.evaluate(f"({check}) ? performance.now() : null")
            if now is not None:
                dom = self.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
                return float(dom) / 1000, float(now) / 1000
            time.sleep(0.02)
        raise TimeoutError(f"{url}: not ready after {timeout:.0f} s ({ready})")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 prompts x 6 checkpoints x 2,000 characters")
    parser.add_argument("--prompts", type=int, default=313, help="StrongREJECT's prompts (default 313)")
    parser.add_argument("--checkpoints", type=int, default=142, help="r1-14b's checkpoints in config.yaml (142)")
    parser.add_argument("--chars", type=int, default=8192, help="characters per response (2,048 tokens x 4)")
    parser.add_argument(
        "--page-bytes", type=int, default=GRID_PAGE_BYTES, help=f"cells per grid page (default {GRID_PAGE_BYTES:,})"
    )
    parser.add_argument("--loads", type=int, default=3, help="loads per page; the best is printed (default 3)")
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.checkpoints, args.chars = 20, 6, 2000
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="viewer-scale-"))
    try:
        root = scratch / "results/scale"
        start = time.perf_counter()
        expected = write_grid(root, args.prompts, args.checkpoints, args.chars)
        print(f"synthetic grid: {args.prompts} prompts x {args.checkpoints} checkpoints x {args.chars:,} characters,"
              f" written in {time.perf_counter() - start:.1f} s")  # fmt: skip
        runs = list(dict.fromkeys(c.run for c in expected))
        stems = {BENCHMARK: ["llama_guard", "refusal_match"]}
        sources = collect_sources(root, expected, stems, Benchmarks({BENCHMARK: "StrongREJECT"}), runs)
        start = time.perf_counter()
        build_viewer(sources, root / "viewer", args.page_bytes)
        print(f"viewer built in {time.perf_counter() - start:.1f} s (load average {os.getloadavg()[0]:.1f})")
        pages = list((root / "viewer").rglob("*.html"))
        grids = sorted((p for p in pages if p.name.startswith("grid-")), key=lambda p: p.stat().st_size)
        rows = sorted((p for p in pages if p.name.startswith("r")), key=lambda p: p.stat().st_size)
        print(f"pages: {len(pages)}, total {sum(p.stat().st_size for p in pages) / 1e6:.1f} MB")
        print(f"grid pages: {len(grids)}, largest {grids[-1].stat().st_size / 1e6:.2f} MB ({grids[-1].name})")
        print(f"row pages: {len(rows)}, largest {rows[-1].stat().st_size / 1e6:.2f} MB ({rows[-1].name})")
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            print("load time: not measured (no chromium on PATH; Debian: apt-get install chromium)")
            return 0
        browser = Chromium(binary, scratch / "chromium-profile")
        try:
            for label, page, ready in (
                ("largest grid page", grids[-1], "document.querySelector('#grid tbody tr td a') !== null"
                 " && document.querySelector('.dt-container') !== null"),
                ("largest row page", rows[-1], "document.querySelectorAll('section').length > 0"),
            ):  # fmt: skip
                times = [browser.load(page.as_uri(), ready) for _ in range(args.loads)]
                dom, shown = min(t[0] for t in times), min(t[1] for t in times)
                print(f"{label} load (best of {args.loads}): DOMContentLoaded {dom:.2f} s, shown {shown:.2f} s")
        finally:
            browser.close()
    finally:
        if not args.keep:
            shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
