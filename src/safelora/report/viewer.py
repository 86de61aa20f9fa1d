"""The response viewer: every checkpoint's responses and verdicts, one row per prompt and sample.

The `viewer` rule writes a folder of HTML pages that the Snakemake report shows (docs/aggregation.md,
"Response viewer"):

- `index.html`: one line per (model, benchmark), with its rows, checkpoints, flag counts and grid pages;
- `<model>/<benchmark>/grid-<k>.html`: the grid, one row per (prompt, sample) and one column per
  checkpoint. A cell holds each grader's verdict and a preview of the response, thinking folded.
  The table is DataTables, bundled by itables for offline use (the page loads nothing from outside):
  search over prompts and previews, paging, column visibility, and search panes that filter on the
  row flags (judges disagree, verdict changes between epochs, truncated, thinking never closed,
  unparseable). Checkpoints go to further grid pages where one page's cells would pass
  `GRID_PAGE_BYTES` (a run's epochs kept together), so every grid page loads in seconds;
- `<model>/<benchmark>/r<row>.html`: one row's full responses at every checkpoint, thinking folded
  (`<details>`), each with every grader's verdict and raw output.

Grid pages carry previews only: their size grows with prompts x checkpoints, not with response
length; the full texts are a click away (benchmarks/viewer_scale.py measures the paper grid's
StrongREJECT). The inputs are the files docs/design.md names: generation records
(`generations/{model}/{run}/epoch-{e}/{benchmark}.jsonl`), verdict records
(`verdicts/{model}/{run}/epoch-{e}/{benchmark}/{grader}.jsonl`) and the benchmark items
(`data/bench/{benchmark}.jsonl`); one generation file and its verdicts are read at a time.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from safelora.evaluation.parsers import THINK_END, THINK_START, truncation_flags
from safelora.io import atomic_dir, read_generations, read_jsonl
from safelora.registry import grader_and_variant
from safelora.report.aggregate import Benchmarks, ExpectedCheckpoint

PREVIEW_CHARS = 160  # of the thinking and of the answer, in a grid cell
# Cells per grid page, in bytes: more checkpoints go to further grid pages (benchmarks/viewer_scale.py:
# a page's load time in Chromium grows with its size, about 0.3-0.5 s per MB here).
GRID_PAGE_BYTES = 4_000_000
RAW_TITLE_CHARS = 300  # of a judge's raw output, in a verdict's tooltip
PAGE_LENGTH = 10  # grid rows per page (the reader may choose 25, 50 or 100)

# Row flags: the grid's filter columns, in order.
FLAGS = {
    "disagree": "judges disagree",  # two graders gave a sample different values
    "changes": "verdict changes",  # a grader's value of a sample changes between a run's epochs
    "truncated": "truncated",  # finish reason "length"
    "unclosed": "think unclosed",  # thinking opened and </think> never written
    "unparseable": "unparseable",  # a grader's output could not be parsed
}

# ---------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class Response:
    """One generated sample as the viewer shows it: its thinking (None when the model did not
    think), its final answer, and why it may be cut short."""

    thinking: str | None
    answer: str
    truncated: bool  # finish reason "length": the sampling budget ran out
    unclosed: bool  # thinking opened (in the prompt or the text) and never closed by </think>


def split_response(prompt: str, text: str, finish_reason: str) -> Response:
    """Split a completion into thinking and answer. The answer is the text after the last
    `</think>` (what `evaluation.parsers.strip_thinking` hands the graders); the flags are
    `evaluation.parsers.truncation_flags`, the score job's definition."""
    truncated, unclosed = truncation_flags(prompt, text, finish_reason)
    head, closed, tail = text.rpartition(THINK_END)
    if unclosed:
        return Response(text.replace(THINK_START, "", 1).strip(), "", truncated, unclosed=True)
    if closed:
        return Response(head.replace(THINK_START, "", 1).strip(), tail.strip(), truncated, unclosed=False)
    return Response(None, text.strip(), truncated, unclosed=False)


def verdict_key(prompt_id: str, sample_index: int, item: Mapping[str, Any]) -> tuple[str, int]:
    """Where a generation's verdicts are filed: under its own prompt and sample, except a GPQA
    item's, filed as sample `sample_offset + i` of its question (as `evaluation.graders` files them)."""
    meta = item.get("meta") or {}
    if "question" not in meta:
        return prompt_id, sample_index
    return str(meta["question"]), meta["sample_offset"] + sample_index


@dataclass(frozen=True)
class Verdict:
    stem: str  # the verdict file's name: the grader, and its variant (evalplus_plus)
    value: float | None
    label: str
    raw: str

    @property
    def unparseable(self) -> bool:
        return self.value is None or self.label == "unparseable"


def disagree(verdicts: Iterable[Verdict]) -> bool:
    """Two graders (not two variants of one grader) both gave a value, and different ones."""
    values: dict[str, set[float]] = {}
    for v in verdicts:
        if v.value is not None:
            values.setdefault(grader_and_variant(v.stem)[0], set()).add(v.value)
    return len({frozenset(vals) for vals in values.values()}) > 1


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class CheckpointFiles:
    """One checkpoint's generation file of a benchmark and its verdict files."""

    run: str
    epoch: int
    generations: Path
    verdicts: tuple[Path, ...]

    @property
    def title(self) -> str:
        return f"{self.run} e{self.epoch}"

    @property
    def anchor(self) -> str:
        return f"{self.run}-e{self.epoch}"


@dataclass(frozen=True)
class PageSource:
    """One model on one benchmark: its benchmark items and its checkpoints, in column order."""

    model: str
    benchmark: str
    label: str
    items: Path
    checkpoints: tuple[CheckpointFiles, ...]


def collect_sources(
    results: Path,
    expected: Sequence[ExpectedCheckpoint],
    stems: Mapping[str, Sequence[str]],
    benchmarks: Benchmarks,
    runs: Sequence[str],
) -> list[PageSource]:
    """The pages to build: one per (model, benchmark) of the `expected` checkpoints, reading the
    files at docs/design.md's paths under `results` and each benchmark's verdict files `stems`.
    Benchmarks in display order; columns in `runs` order (runs_meta.json), then epoch."""
    pages: dict[tuple[str, str], list[CheckpointFiles]] = {}
    for c in expected:
        where = f"expected checkpoint {c.model} {c.run} epoch {c.epoch}"
        if c.benchmarks is None:
            raise ValueError(f"{where} names no benchmarks (expected.json as describe_grid writes it names them)")
        if c.run not in runs:
            raise ValueError(f"{where}: run '{c.run}' is not in the runs' metadata ({', '.join(runs)})")
        checkpoint = Path(c.model, c.run, f"epoch-{c.epoch}")
        for b in c.benchmarks:
            if b not in stems:
                raise ValueError(f"{where}: benchmark '{b}' has no verdict files named (known: {', '.join(stems)})")
            verdicts = tuple(Path(results, "verdicts", checkpoint, b, f"{s}.jsonl") for s in sorted(stems[b]))
            generations = Path(results, "generations", checkpoint, f"{b}.jsonl")
            pages.setdefault((c.model, b), []).append(CheckpointFiles(c.run, c.epoch, generations, verdicts))
    return [
        PageSource(
            model,
            benchmark,
            benchmarks.labels.get(benchmark, benchmark),
            Path(results, "data", "bench", f"{benchmark}.jsonl"),
            tuple(sorted(ckpts, key=lambda c: (runs.index(c.run), c.epoch))),
        )
        for (model, benchmark), ckpts in sorted(pages.items(), key=lambda kv: (kv[0][0], benchmarks.order(kv[0][1])))
    ]


def read_verdicts(paths: Sequence[Path], keys: set[tuple[str, int]]) -> dict[tuple[str, int], list[Verdict]]:
    """Each sample's verdicts from a checkpoint's verdict files; a verdict of a sample the
    generations do not hold (a stale or foreign file) is an error naming the file and line."""
    by_key: dict[tuple[str, int], list[Verdict]] = {key: [] for key in keys}
    for path in paths:
        for lineno, record in enumerate(read_jsonl(path), start=1):
            key = (str(record.get("prompt_id")), record.get("sample_index"))
            if key not in by_key:
                raise ValueError(
                    f"{path}: line {lineno}: prompt '{key[0]}' sample {key[1]} is not among the generations"
                )
            by_key[key].append(
                Verdict(path.stem, record.get("value"), str(record.get("label", "")), str(record.get("raw", "")))
            )
    return by_key


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    return _esc(text if len(text) <= limit else text[:limit].rstrip() + " …")


def _value_class(v: Verdict) -> str:
    return "vn" if v.value is None else f"v{round(v.value)}" if v.value in (0.0, 1.0) else "vp"


def verdict_badges(verdicts: Sequence[Verdict], raw_chars: int | None = RAW_TITLE_CHARS) -> str:
    """One badge per verdict: grader, label and value, the judge's raw output as its tooltip."""
    badges = []
    for v in verdicts:
        raw = v.raw if raw_chars is None or len(v.raw) <= raw_chars else v.raw[:raw_chars] + " …"
        value = "null" if v.value is None else f"{v.value:g}"
        title = f' title="{_esc(raw)}"' if raw else ""
        badges.append(f'<span class="v {_value_class(v)}"{title}>{_esc(v.stem)}: {_esc(v.label)} ({value})</span>')
    return " ".join(badges) or '<span class="v vn">no verdict</span>'


def _flag_marks(flags: Iterable[str]) -> str:
    return "".join(f'<span class="flag">{FLAGS[f]}</span>' for f in FLAGS if f in flags)


def _response_flags(r: Response) -> set[str]:
    return {f for f, on in (("truncated", r.truncated), ("unclosed", r.unclosed)) if on}


def grid_cell(r: Response, verdicts: Sequence[Verdict], link: str, flags: Iterable[str]) -> str:
    """A grid cell: verdicts, flags, the thinking folded, the answer's preview, a link to the full text."""
    parts = [verdict_badges(verdicts), _flag_marks(flags)]
    if r.thinking is not None:
        parts.append(
            f"<details><summary>thinking ({len(r.thinking):,} chars)</summary>{_preview(r.thinking)}</details>"
        )
    parts.append(f'<div class="ans">{_preview(r.answer) or "<i>no answer</i>"}</div>')
    parts.append(f'<a href="{link}">full text</a>')
    return "".join(parts)


def detail_section(c: CheckpointFiles, record: Mapping[str, Any], r: Response, verdicts: Sequence[Verdict]) -> str:
    """A checkpoint's full response on a row's page."""
    thinking = (
        ""
        if r.thinking is None
        else f"<details><summary>thinking ({len(r.thinking):,} chars)</summary><pre>{_esc(r.thinking)}</pre></details>"
    )
    raws = "".join(f"<li><b>{_esc(v.stem)}</b>: <pre>{_esc(v.raw)}</pre></li>" for v in verdicts if v.raw)
    return (
        f'<section id="{_esc(c.anchor)}"><h2>{_esc(c.title)}</h2>'
        f"<p>{verdict_badges(verdicts, None)} {_flag_marks(_response_flags(r))} finish reason: {_esc(str(record.get('finish_reason')))},"
        f" {record.get('completion_tokens')} tokens</p>{thinking}"
        f'<pre class="ans">{_esc(r.answer) or "<i>no answer</i>"}</pre>'
        + (f"<details><summary>graders' raw output</summary><ul>{raws}</ul></details>" if raws else "")
        + "</section>\n"
    )


CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.3em 0; }
.v { display: inline-block; border-radius: 3px; padding: 0 4px; margin: 1px; font-size: 12px; }
.v1 { background: #c8e6c9; } .v0 { background: #ffcdd2; } .vn { background: #e0e0e0; } .vp { background: #fff9c4; }
.flag { display: inline-block; background: #ffe0b2; border-radius: 3px; padding: 0 4px; margin: 1px; font-size: 12px; }
.ans { margin-top: 2px; } details summary { color: #555; cursor: pointer; }
td { vertical-align: top; min-width: 14em; max-width: 24em; }
section { border-top: 1px solid #ccc; margin-top: 1em; }
table.index td, table.index th { border: 1px solid #ccc; padding: 2px 6px; min-width: 0; }
"""


def _page(title: str, body: str, up: str | None) -> str:
    nav = f'<p><a href="{up}">all pages</a></p>' if up else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head><body>{nav}<h1>{_esc(title)}</h1>\n{body}\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Pages


@dataclass
class Cell:
    """A row's grid cell at one checkpoint, and its flags (FLAGS keys)."""

    html: str
    flags: set[str]


@dataclass
class Row:
    """One (prompt, sample) of a benchmark: its cells by checkpoint title, and each grader's
    values over each run's epochs (which find verdicts that change between epochs)."""

    number: int
    prompt_id: str
    sample: int
    item: Mapping[str, Any]
    cells: dict[str, Cell] = field(default_factory=dict)
    values: dict[tuple[str, str], set[float]] = field(default_factory=dict)  # (run, stem) -> values

    @property
    def file(self) -> str:
        return f"r{self.number:05d}.html"

    def prompt_cell(self) -> str:
        prompt = str(self.item.get("prompt", ""))
        reference = self.item.get("answer")
        answer = f"<div>reference: <code>{_preview(str(reference), 80)}</code></div>" if reference is not None else ""
        return (
            f'<a href="{self.file}"><b>{_esc(self.prompt_id)}</b></a>'
            + (f" sample {self.sample}" if self.sample else "")
            + f"<details><summary>{_preview(prompt, 120)}</summary>{_esc(prompt)}</details>{answer}"
        )

    def flags(self, titles: Iterable[str]) -> set[str]:
        return set().union(*(self.cells[t].flags for t in titles if t in self.cells))


def split_columns(checkpoints: Sequence[CheckpointFiles], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Checkpoint columns (indices) per grid page: in order, each page's cells at most `budget`
    bytes where one column allows, a run's epochs on one page where they fit in one."""
    runs: list[list[int]] = []
    for i, c in enumerate(checkpoints):
        if runs and checkpoints[runs[-1][0]].run == c.run:
            runs[-1].append(i)
        else:
            runs.append([i])
    pages: list[list[int]] = [[]]
    for run in runs:
        used = sum(sizes[i] for i in pages[-1])
        if pages[-1] and used + sum(sizes[i] for i in run) > budget:
            pages.append([])
        for i in run:
            if pages[-1] and sum(sizes[j] for j in pages[-1]) + sizes[i] > budget:
                pages.append([])
            pages[-1].append(i)
    return pages


@dataclass(frozen=True)
class PageSummary:
    """One (model, benchmark): its rows and checkpoints, the rows with each flag, its grid pages
    (file name, first and last checkpoint)."""

    model: str
    benchmark: str
    label: str
    rows: int
    checkpoints: int
    flagged: Mapping[str, int]
    grids: tuple[tuple[str, str, str], ...]

    @property
    def folder(self) -> str:
        return f"{quote(self.model)}/{quote(self.benchmark)}"


def _rows(items: list[dict[str, Any]], n: int) -> list[Row]:
    return [Row(i * n + s, str(item["id"]), s, item) for i, item in enumerate(items) for s in range(n)]


def _add_checkpoint(
    c: CheckpointFiles, rows: dict[tuple[str, int], Row], items: list[dict[str, Any]], folder: Path
) -> None:
    """Read one checkpoint's generations and verdicts: a cell per row in the grid, a section per
    row on its page (appended to the row's page file)."""
    generations = read_generations(c.generations, items)
    by_id = {str(item["id"]): item for item in items}
    keys = {verdict_key(str(g["prompt_id"]), g["sample_index"], by_id[str(g["prompt_id"])]) for g in generations}
    verdicts = read_verdicts(c.verdicts, keys)
    for record in generations:
        row = rows.get((str(record["prompt_id"]), record["sample_index"]))
        if row is None:
            raise ValueError(
                f"{c.generations}: prompt '{record['prompt_id']}' sample {record['sample_index']} is beyond the first file's n"
            )
        response = split_response(str(record.get("prompt", "")), str(record["text"]), str(record.get("finish_reason")))
        own = verdicts[verdict_key(row.prompt_id, row.sample, row.item)]
        flags = _response_flags(response)
        flags |= {"disagree"} if disagree(own) else set()
        flags |= {"unparseable"} if any(v.unparseable for v in own) else set()
        row.cells[c.title] = Cell(grid_cell(response, own, f"{row.file}#{quote(c.anchor)}", flags), flags)
        for v in own:
            if v.value is not None:
                row.values.setdefault((c.run, v.stem), set()).add(v.value)
        with open(folder / row.file, "a", encoding="utf-8") as fh:
            fh.write(detail_section(c, record, response, own))


def _mark_changes(row: Row, checkpoints: Sequence[CheckpointFiles]) -> None:
    """Flag each cell of a run whose grader gave this row different values over the run's epochs."""
    changed = {run for (run, _), values in row.values.items() if len(values) > 1}
    for c in checkpoints:
        if c.run in changed and c.title in row.cells:
            row.cells[c.title].flags.add("changes")


def _detail_header(source: PageSource, row: Row) -> str:
    prompt = str(row.item.get("prompt", ""))
    reference = row.item.get("answer")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(row.prompt_id)}</title>'
        f'<style>{CSS}</style></head><body><p><a href="../../index.html">all pages</a></p>'
        f"<h1>{_esc(source.label)}, {_esc(source.model)}: {_esc(row.prompt_id)} sample {row.sample}</h1>"
        f"<h2>Prompt</h2><pre>{_esc(prompt)}</pre>"
        + (f"<p>reference answer: <code>{_esc(str(reference))}</code></p>" if reference is not None else "")
        + "<p>Checkpoints: "
        + " ".join(f'<a href="#{quote(c.anchor)}">{_esc(c.title)}</a>' for c in source.checkpoints)
        + "</p>\n"
    )


def _grid_table(rows: list[Row], titles: list[str]) -> str:
    import pandas as pd
    from itables import to_html_datatable

    frame = pd.DataFrame(
        [
            [row.prompt_cell()]
            + ["yes" if flag in flags else "no" for flag in FLAGS]
            + [row.cells[t].html if t in row.cells else "" for t in titles]
            for row in rows
            for flags in [row.flags(titles)]
        ],
        columns=["prompt", *FLAGS.values(), *titles],
    )
    flag_columns = list(range(1, 1 + len(FLAGS)))
    return to_html_datatable(
        frame,
        table_id="grid",
        connected=False,
        display_logo_when_loading=False,
        allow_html=True,
        maxBytes=0,  # never downsample: every row and column is on the page
        showIndex=False,
        classes="display compact cell-border",
        pageLength=PAGE_LENGTH,
        lengthMenu=[10, 25, 50, 100],
        scrollX=True,
        fixedColumns={"start": 1},
        layout={"top1": "searchPanes", "topStart": "buttons", "topEnd": "search"},
        buttons=["pageLength", "colvis"],
        searchPanes={
            "columns": flag_columns,
            "layout": f"columns-{len(FLAGS)}",
            "cascadePanes": True,
            "dtOpts": {"scrollY": "4.5em"},  # each pane lists yes and no
        },
        # flag columns: hidden, each a search pane even where every row has one value
        columnDefs=[{"targets": flag_columns, "visible": False, "searchPanes": {"show": True}}],
    )


def _grid_links(grids: Sequence[tuple[str, str, str]], current: str | None = None) -> str:
    return " | ".join(
        f"<b>{_esc(first)} … {_esc(last)}</b>"
        if name == current
        else f'<a href="{name}">{_esc(first)} … {_esc(last)}</a>'
        for name, first, last in grids
    )


def write_page(source: PageSource, out: Path, page_bytes: int = GRID_PAGE_BYTES) -> PageSummary:
    """One (model, benchmark): its grid pages (as many as keep each within `page_bytes` of cells)
    and its rows' pages, in `out/<model>/<benchmark>/`."""
    from itables import options
    from itables.javascript import generate_init_offline_itables_html

    items = read_jsonl(source.items)
    first = read_generations(source.checkpoints[0].generations, items)
    rows = _rows(items, first[0]["sampling"]["n"])
    by_key = {(row.prompt_id, row.sample): row for row in rows}
    folder = out / source.model / source.benchmark
    folder.mkdir(parents=True)
    for row in rows:
        (folder / row.file).write_text(_detail_header(source, row), encoding="utf-8")
    for c in source.checkpoints:
        _add_checkpoint(c, by_key, items, folder)
    for row in rows:
        _mark_changes(row, source.checkpoints)
        with open(folder / row.file, "a", encoding="utf-8") as fh:
            fh.write("</body></html>\n")
    titles = [c.title for c in source.checkpoints]
    sizes = [sum(len(row.cells[t].html) for row in rows if t in row.cells) for t in titles]
    parts = [[titles[i] for i in part] for part in split_columns(source.checkpoints, sizes, page_bytes)]
    grids = tuple((f"grid-{k}.html", part[0], part[-1]) for k, part in enumerate(parts, start=1))
    bundle = generate_init_offline_itables_html(options.dt_bundle)
    for (name, _, _), part in zip(grids, parts, strict=True):
        intro = (
            f"<p>{len(rows)} rows (prompt x sample) x {len(part)} of {len(titles)} checkpoints. Checkpoint pages:"
            f" {_grid_links(grids, name)}</p><p>A cell shows each grader's verdict (value 1: safe, refused or correct,"
            " as the benchmark's metric; hover for a judge's raw output), the thinking folded and a preview of the"
            " answer; <i>full text</i> opens the row's page, every checkpoint's full response. Search covers prompts"
            " and previews; the panes filter rows by flag (over this page's checkpoints); <i>Column visibility</i>"
            " hides checkpoints.</p>"
        )
        (folder / name).write_text(
            _page(f"{source.label}: {source.model}", intro + bundle + _grid_table(rows, part), "../../index.html"),
            encoding="utf-8",
        )
    flagged = {flag: sum(flag in row.flags(titles) for row in rows) for flag in FLAGS}
    return PageSummary(source.model, source.benchmark, source.label, len(rows), len(titles), flagged, grids)


def index_html(pages: Sequence[PageSummary]) -> str:
    head = "".join(
        f"<th>{_esc(t)}</th>" for t in ("model", "benchmark", "rows", "checkpoints", *FLAGS.values(), "grid pages")
    )
    lines = "".join(
        f"<tr><td>{_esc(p.model)}</td><td>{_esc(p.label)}</td><td>{p.rows}</td><td>{p.checkpoints}</td>"
        + "".join(f"<td>{p.flagged[flag]}</td>" for flag in FLAGS)
        + f"<td>{_grid_links([(f'{p.folder}/{name}', a, b) for name, a, b in p.grids])}</td></tr>"
        for p in pages
    )
    body = (
        "<p>Every checkpoint's responses and verdicts, pages per model and benchmark (checkpoints split over"
        " several grid pages where one would be too large to load quickly); the flag columns count the rows"
        " (prompt x sample) with that flag at some checkpoint.</p>"
        f'<table class="index"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>'
    )
    return _page("Responses and verdicts", body, None)


def build_viewer(
    sources: Sequence[PageSource], out: str | Path, page_bytes: int = GRID_PAGE_BYTES
) -> list[PageSummary]:
    """Write the viewer's pages into folder `out` (replaced as a whole, atomically)."""
    with atomic_dir(out) as tmp:
        summaries = [write_page(source, tmp, page_bytes) for source in sources]
        (tmp / "index.html").write_text(index_html(summaries), encoding="utf-8")
    return summaries
