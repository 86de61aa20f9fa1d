"""Record what lighteval's and lm-eval's answer extractors make of completions.json.

Runs in its own virtual environment, never the project's (lighteval and lm-eval would break its
pins; lm-eval's extraction filters need none of its dependencies):

    python3 -m venv /tmp/peers_venv
    /tmp/peers_venv/bin/pip install --no-deps "lighteval==0.13.0" "lm-eval==0.4.13"
    /tmp/peers_venv/bin/pip install "math-verify[antlr4_13_2]==0.9.0" numpy sacrebleu scikit-learn \
        torch pytablewriter nltk huggingface_hub pydantic transformers pandas requests
    /tmp/peers_venv/bin/python tests/peer_extraction/record_peers.py

It writes peers.json next to this file (committed); tests/test_peer_extraction.py grades the same
completions with the project's graders and compares. Per completion and peer: the extracted
answer (as the peer prints it) and whether the peer scores it correct.

- AIME, lighteval: the `aime24` task's metric (math pass@1: ExprExtractionConfig and
  LatexExtractionConfig on prediction and gold, math-verify comparison), on the completion after
  lighteval's `remove_reasoning_tags` with its default ``<think>``/``</think>`` pair.
- AIME, lm-eval: the `aime24` task's `process_results` (last ``\\boxed``, else the span between
  the first and last ``$``, else the whole response; hendrycks `is_equiv`). Its
  `last_boxed_only_string`/`remove_boxed`/`is_equiv` are the ones the paper code's
  math_metric_llm_eval_general.py uses for its string match before the Qwen judge.
- GPQA, lighteval: the `gpqa:diamond` instruct metric (IndicesExtractionConfig, native letters,
  `try_extract_without_anchor`).
- GPQA, lm-eval: the paper code's task filters (gpqa/better_prompt/_gpqa_better_prompt_yaml):
  `flexible-extract`, a multi_choice_regex on ``\\(([A-Z])\\)`` taking the last match,
  ignore_case and ignore_punctuation, scored by exact_match against ``(X)``.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent


def lighteval_aime(text: str, gold: str) -> tuple[str | None, bool]:
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.utils.extractive_match_utils import (
        ExprExtractionConfig,
        LatexExtractionConfig,
        extract_target_from_pred,
        get_extraction_regexes,
    )
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc
    from lighteval.utils.language import Language
    from lighteval.utils.utils import remove_reasoning_tags

    targets = [ExprExtractionConfig(), LatexExtractionConfig()]
    metric = MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH, gold_extraction_target=targets, pred_extraction_target=targets, precision=6
    )
    final = remove_reasoning_tags(text, [("<think>", "</think>")])
    doc = Doc(query="", choices=[gold], gold_index=0)
    correct = metric.compute(doc, ModelResponse(text=[text], text_post_processed=[final]))
    extracted = extract_target_from_pred(final, get_extraction_regexes(doc, targets, Language.ENGLISH))
    return (str(extracted[-1]) if extracted else None), bool(correct)


def _lm_eval_aime_utils():
    """lm_eval/tasks/aime/utils.py loaded as a file: the tasks package itself imports datasets."""
    import importlib.util

    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "aime" / "utils.py"
    spec = importlib.util.spec_from_file_location("lm_eval_aime_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lm_eval_aime(text: str, gold: str) -> tuple[str | None, bool]:
    utils = _lm_eval_aime_utils()
    boxed = utils.last_boxed_only_string(text)
    try:  # as process_results does: remove_boxed asserts on what it cannot unwrap (\fbox)
        extracted = utils.remove_boxed(boxed) if boxed is not None else None
    except (AssertionError, IndexError):
        extracted = None
    correct = utils.process_results({"answer": gold}, [text])["exact_match"] == 1
    return extracted, correct


def lighteval_gpqa(text: str, gold: str) -> tuple[str | None, bool]:
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.utils.extractive_match_utils import (
        IndicesExtractionConfig,
        extract_target_from_pred,
        get_extraction_regexes,
    )
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc
    from lighteval.utils.language import Language
    from lighteval.utils.utils import remove_reasoning_tags

    targets = [IndicesExtractionConfig(prefix_for_extraction="NativeLetters", try_extract_without_anchor=True)]
    metric = MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH, gold_extraction_target=targets, pred_extraction_target=targets, precision=6
    )
    final = remove_reasoning_tags(text, [("<think>", "</think>")])
    doc = Doc(query="", choices=list("ABCD"), gold_index="ABCD".index(gold))
    correct = metric.compute(doc, ModelResponse(text=[text], text_post_processed=[final]))
    extracted = extract_target_from_pred(final, get_extraction_regexes(doc, targets, Language.ENGLISH))
    return (str(extracted[-1]) if extracted else None), bool(correct)


def lm_eval_gpqa(text: str, gold: str) -> tuple[str | None, bool]:
    import string

    from lm_eval.filters.extraction import MultiChoiceRegexFilter

    flexible = MultiChoiceRegexFilter(
        regex_pattern=r"(\([A-Z]\))", group_select=-1, ignore_case=True, ignore_punctuation=True
    )
    [[extracted]] = flexible.apply([[text]], [{"choices": ["", "", "", ""]}])

    # exact_match with ignore_case and ignore_punctuation, as the task's metric_list sets it
    def norm(s: str) -> str:
        return s.lower().translate(str.maketrans("", "", string.punctuation))

    found = None if extracted == "[invalid]" else extracted
    return found, norm(extracted) == norm(f"({gold})")


PEERS = {
    "aime": {"lighteval": lighteval_aime, "lm_eval": lm_eval_aime},
    "gpqa": {"lighteval": lighteval_gpqa, "lm_eval": lm_eval_gpqa},
}


def main() -> None:
    completions = json.loads((HERE / "completions.json").read_text(encoding="utf-8"))
    records = {}
    for c in completions:
        records[c["id"]] = {}
        for peer, extract in PEERS[c["benchmark"]].items():
            answer, correct = extract(c["text"], c["gold"])
            records[c["id"]][peer] = {"answer": answer, "correct": correct}
    out = {"versions": {p: version(p) for p in ("lighteval", "lm_eval", "math-verify")}, "records": records}
    tmp = HERE / "peers.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(HERE / "peers.json")
    for cid, peers in records.items():
        print(cid, {p: (r["answer"], r["correct"]) for p, r in peers.items()})


if __name__ == "__main__":
    main()
