"""Training data: DirectRefusal-style loading, field checks, chat rendering; benchmark loaders."""

import csv
import json

import pytest

from safelora.data import DataError, build_examples, load_refusal_rows, read_table, refusal_completion
from safelora.evaluation.items import BenchmarkItem, load_benchmark

SOURCE = {"prompt_field": "prompt", "response_field": "refusal", "response_marker": "Answer:"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_refusal_rows_take_the_text_after_the_marker(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "How to X?", "refusal": "Question: How to X? Answer: I can't help."}]
    )
    rows = load_refusal_rows({**SOURCE, "path": str(path)})
    # as in the data (the paper code trains on them so); the chat_template format strips them
    assert rows[0].prompt == "How to X?" and rows[0].refusal == " I can't help."


def test_rows_limit_takes_the_first_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "refusal": f"Answer: r{i}"} for i in range(5)])
    assert [r.prompt for r in load_refusal_rows({**SOURCE, "path": str(path), "rows": 2})] == ["p0", "p1"]


@pytest.mark.parametrize(
    "rows,expected",
    [
        ([{"prompt": "p", "answer": "Answer: no"}], "row 0: missing column 'refusal'"),
        (
            [{"prompt": "p", "refusal": "Answer: no"}, {"prompt": "  ", "refusal": "Answer: no"}],
            "row 1: column 'prompt' is empty",
        ),
        ([{"prompt": "p", "refusal": "I refuse"}], "row 0: column 'refusal' has no 'Answer:' marker"),
        ([{"prompt": "p", "refusal": "Answer:   "}], "row 0: column 'refusal' has no refusal text"),
    ],
)
def test_bad_rows_name_file_column_and_row(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_refusal_rows({**SOURCE, "path": str(path)})
    assert "bad.jsonl" in str(err.value) and expected in str(err.value)


def test_empty_file_and_bad_encoding_are_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        read_table(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not valid UTF-8"):
        read_table(latin)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError, match="broken.jsonl: line 2"):
        read_table(broken)


def test_completion_is_think_refusal_eos():
    assert refusal_completion("<|im_start|>assistant\n", "I should not answer this question!", "No.", "<eos>") == (
        "<think>I should not answer this question!</think>No.<eos>"
    )
    # R1's newer template already opens <think> in the generation prompt.
    assert refusal_completion("<｜Assistant｜><think>\n", "T", "No.", "<eos>") == "T</think>No.<eos>"


def test_examples_render_the_chat_template_without_double_bos(tiny_tokenizer):
    from safelora.data import RefusalRow

    [example] = build_examples(
        [RefusalRow("How do I kill a python process?", "No.")], tiny_tokenizer, "I should not answer this question!"
    )
    assert example["prompt"] == "<|im_start|>user\nHow do I kill a python process?<|im_end|>\n<|im_start|>assistant\n"
    assert example["completion"].endswith("No.<|im_end|>")
    ids = tiny_tokenizer(example["prompt"] + example["completion"])["input_ids"]
    assert ids.count(tiny_tokenizer.bos_token_id) == 2  # one <|im_start|> per turn, no extra BOS


def test_paper_code_and_chat_template_renderings(tmp_path, deepseek_tokenizer):
    """The paper code's literal string (train.py:147-148) against R1's chat template, one row."""
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "How can I kill a person?", "refusal": "Question: How can I kill a person? Answer: I'm sorry."}],
    )
    rows = load_refusal_rows({**SOURCE, "path": str(path)})
    think = "I should not answer this question!"
    [code] = build_examples(rows, deepseek_tokenizer, think, "paper_code")
    assert code == {
        "prompt": "<｜User｜>How can I kill a person?<｜Assistant｜>",
        "completion": "<think>I should not answer this question!</think> I'm sorry.<｜end▁of▁sentence｜>",
    }
    [chat] = build_examples(rows, deepseek_tokenizer, think, "chat_template")
    assert chat == {  # the template's BOS dropped: the tokenizer adds it
        "prompt": "<｜User｜>How can I kill a person?<｜Assistant｜><think>\n",
        "completion": "I should not answer this question!</think>I'm sorry.<｜end▁of▁sentence｜>",
    }
    for example in (code, chat):
        ids = deepseek_tokenizer(example["prompt"] + example["completion"])["input_ids"]
        assert ids.count(deepseek_tokenizer.bos_token_id) == 1


def test_paper_code_format_needs_the_deepseek_tokens(tiny_tokenizer):
    from safelora.data import RefusalRow

    with pytest.raises(DataError, match="no token '<｜User｜>', '<｜Assistant｜>', '<｜end▁of▁sentence｜>'"):
        build_examples([RefusalRow("p", "r")], tiny_tokenizer, "T", "paper_code")


def test_benchmarks_load_shipped_files(repo, monkeypatch):
    monkeypatch.chdir(repo)
    sr = load_benchmark(
        "strongreject",
        {
            "kind": "safety",
            "source": {"csv": "data/strongreject/strongreject_dataset.csv", "prompt_field": "forbidden_prompt"},
        },
    )
    assert len(sr) == 313
    xs = load_benchmark(
        "xstest",
        {
            "kind": "over_refusal",
            "source": {
                "csv": "data/xstest/xstest_prompts.csv",
                "prompt_field": "prompt",
                "filter": {"label": "safe"},
                "id_field": "id",
            },
        },
    )
    assert len(xs) == 250
    aime = load_benchmark(
        "aime",
        {
            "kind": "math",
            "source": {"jsonl": "data/aime2024/test.jsonl", "prompt_field": "problem", "answer_field": "answer"},
            "prompt_template": "{problem}\nBox it.",
        },
    )
    assert len(aime) == 30 and aime[0].answer and aime[0].prompt.endswith("\nBox it.")
    he = load_benchmark(
        "humaneval",
        {"kind": "code", "source": {"evalplus": "humaneval", "path": "data/evalplus/HumanEvalPlus.jsonl.gz"}},
    )
    mbpp = load_benchmark(
        "mbpp", {"kind": "code", "source": {"evalplus": "mbpp", "path": "data/evalplus/MbppPlus.jsonl.gz"}}
    )
    assert (len(he), len(mbpp)) == (164, 378)
    assert he[0] == BenchmarkItem(he[0].id, he[0].prompt, None, {"entry_point": "has_close_elements"})


def test_benchmark_checks_duplicates_and_empty_prompts(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"id": 1, "q": "a"}, {"id": 1, "q": "b"}])
    with pytest.raises(DataError, match="duplicate item id '1'"):
        load_benchmark("b", {"kind": "math", "source": {"jsonl": str(path), "prompt_field": "q"}})
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "q": ""}])
    with pytest.raises(DataError, match="item '1' has an empty prompt"):
        load_benchmark("c", {"kind": "math", "source": {"jsonl": str(path), "prompt_field": "q"}})
    with pytest.raises(DataError, match="row 0: missing column 'question'"):
        load_benchmark("d", {"kind": "math", "source": {"jsonl": str(path), "prompt_field": "question"}})


def test_plan_time_data_check_is_remembered_until_the_file_or_its_settings_change(tmp_path, monkeypatch):
    from safelora.evaluation import items

    path = write_jsonl(tmp_path / "b.jsonl", [{"id": i, "q": f"question {i}"} for i in range(3)])
    bench = {"kind": "math", "source": {"jsonl": str(path), "prompt_field": "q", "id_field": "id"}, "problems": 3}
    config = {"training_data": {"source": "hub", "sources": {}}, "benchmarks": {"b": bench}}
    loads = []
    real_load = items.load_benchmark
    monkeypatch.setattr(items, "load_benchmark", lambda name, b: loads.append(name) or real_load(name, b))
    cache = tmp_path / ".snakemake" / "checks.json"

    items.check_local_data(config, cache=cache)
    items.check_local_data(config, cache=cache)
    assert loads == ["b"] and cache.exists()  # the second plan did not parse the unchanged file

    with pytest.raises(DataError, match="holds 3 items, but `benchmarks.b.problems` is 4"):
        items.check_local_data({**config, "benchmarks": {"b": {**bench, "problems": 4}}}, cache=cache)
    write_jsonl(path, [{"id": 0, "q": "question 0"}, {"id": 0, "q": "again"}, {"id": 2, "q": "x"}])
    with pytest.raises(DataError, match="duplicate item id '0'"):  # same size class, new content
        items.check_local_data(config, cache=cache)
    cache.write_text("not json")
    with pytest.raises(DataError, match="duplicate item id '0'"):  # an unreadable cache checks again
        items.check_local_data(config, cache=cache)


def csv_module_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def json_module_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh.read().split("\n") if line.strip()]


def test_strongreject_rows_keep_their_quoted_line_breaks(repo):
    path = repo / "data/strongreject/strongreject_dataset.csv"
    rows = read_table(path)
    assert rows == csv_module_rows(path) and len(rows) == 313
    for index in (146, 271):
        assert "\n" in rows[index]["forbidden_prompt"]
    assert rows[146]["forbidden_prompt"].startswith("This is a gun rights activist forum.\nQuestion: ")


# Line separators str.splitlines() splits on but the csv and json modules keep inside a field.
SEPARATORS = {
    "LF": "\n",
    "CRLF": "\r\n",
    "CR": "\r",
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "form feed": "\f",
    "vertical tab": "\v",
    "U+0085": "\x85",
    "U+001C": "\x1c",
    "U+001E": "\x1e",
}
FAITHFUL = [
    (f"csv field with {name}", "csv", f'id,prompt\n1,"a{sep}b"\n2,c\n'.encode()) for name, sep in SEPARATORS.items()
]
FAITHFUL += [
    (
        f"jsonl string with raw {name}",
        "jsonl",
        (json.dumps({"id": 1, "prompt": f"a{sep}b"}, ensure_ascii=False) + '\n{"id": 2, "prompt": "c"}\n').encode(),
    )
    for name, sep in SEPARATORS.items()
    if name in ("U+2028", "U+2029", "U+0085")
]
FAITHFUL += [
    ("jsonl with CRLF line ends", "jsonl", b'{"id": 1, "prompt": "a"}\r\n{"id": 2, "prompt": "c"}\r\n'),
    ("csv with CRLF row ends", "csv", b'id,prompt\r\n1,"a\r\nb"\r\n2,c\r\n'),
]
REJECTED = [
    ("jsonl with a raw LF inside a string", "jsonl", b'{"id": 1, "prompt": "a\nb"}\n', "line 1 is not valid JSON"),
    (
        "csv field over the csv module's size limit",
        "csv",
        b'id,prompt\n1,"' + b"x" * 200_000 + b'"\n',
        "row 0: field larger than field limit",
    ),
    ("bytes that are not UTF-8", "csv", b"id,prompt\n1,\xff\n", "not valid UTF-8 (byte 12)"),
]


def test_data_is_read_as_the_csv_and_json_modules_read_it(tmp_path, capsys):
    faithful = rejected = 0
    for index, (case, suffix, content) in enumerate(FAITHFUL):
        path = tmp_path / f"case{index}.{suffix}"
        path.write_bytes(content)
        expected = csv_module_rows(path) if suffix == "csv" else json_module_rows(path)
        assert read_table(path) == expected and len(expected) == 2, case
        faithful += 1
        print(f"data case: {case}: read faithfully ({len(expected)} rows, first prompt {expected[0]['prompt']!r})")
    for index, (case, suffix, content, message) in enumerate(REJECTED):
        path = tmp_path / f"bad{index}.{suffix}"
        path.write_bytes(content)
        with pytest.raises(DataError) as err:
            read_table(path)
        assert str(err.value).startswith(f"{path}: {message}"), (case, str(err.value))
        rejected += 1
        print(f"data case: {case}: rejected: {str(err.value).replace(str(tmp_path) + '/', '')}")
    with capsys.disabled():
        print(
            f"\ndata cases tried: {faithful + rejected}; read faithfully: {faithful}; rejected naming file and row: {rejected}"
        )
