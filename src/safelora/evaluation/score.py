"""Score summaries: verdict files -> one Score JSON per (checkpoint, benchmark).

Pass@1 is computed per problem as the mean over its parseable samples (the unbiased estimator
with k = 1), then averaged over problems; per-problem values are kept for the bootstrap.
Unparseable verdicts are counted; above `max_unparseable_share` scoring fails loudly. Beside the
scores, the generations' truncation is counted (`truncation_counts`); it changes no score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from safelora import registry
from safelora.evaluation.graders import sample_keys
from safelora.evaluation.parsers import truncation_flags
from safelora.io import DamagedFileError, check_samples, read_jsonl
from safelora.settings import ScoreSettings

# --------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct samples out of `n` (Chen et al., 2021).

    1 - C(n-c, k) / C(n, k), computed as a product so that large n does not overflow.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters on the same items.

    When both raters give one and the same label to every item, chance agreement is 1 and kappa
    is 0/0; this returns 1.0 there (perfect agreement, nothing to correct for) instead of NaN.
    With binary labels that is the only case in which chance agreement is 1.
    """
    if len(a) != len(b):
        raise ValueError(f"raters labelled different numbers of items: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("kappa of zero items is undefined")
    n = len(a)
    observed = sum(bool(x) == bool(y) for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1 - expected)


class UnparseableError(RuntimeError):
    """Too many judge outputs could not be parsed to trust the score."""


def metric_from_verdicts(verdicts: list[dict[str, Any]], max_unparseable_share: float, source: str) -> dict[str, Any]:
    by_problem: dict[str, list[float]] = defaultdict(list)
    unparseable = 0
    for v in verdicts:
        if v["value"] is None:
            unparseable += 1
            by_problem.setdefault(str(v["prompt_id"]), [])
        else:
            by_problem[str(v["prompt_id"])].append(float(v["value"]))
    if not verdicts:
        raise ValueError(f"{source}: no verdicts")
    share = unparseable / len(verdicts)
    if share > max_unparseable_share:
        raise UnparseableError(
            f"{source}: {unparseable} of {len(verdicts)} judge outputs ({share:.1%}) could not be parsed, "
            f"above max_unparseable_share {max_unparseable_share:.1%}; inspect the 'raw' field"
        )
    per_problem = {pid: pass_at_k(len(values), int(sum(values)), 1) for pid, values in by_problem.items() if values}
    value = sum(per_problem.values()) / len(per_problem) if per_problem else float("nan")
    return {
        "value": value,
        "n_problems": len(by_problem),
        "n_samples": len(verdicts),
        "unparseable": unparseable,
        "per_problem": dict(sorted(per_problem.items())),
    }


def agreement(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Cohen's kappa between every pair of graders, on samples both parsed."""
    result = []
    for (a, va), (b, vb) in combinations(sorted(files.items()), 2):
        left = {(v["prompt_id"], v["sample_index"]): v["value"] for v in va if v["value"] is not None}
        pairs = [
            (left[key], v["value"])
            for v in vb
            if (key := (v["prompt_id"], v["sample_index"])) in left and v["value"] is not None
        ]
        if pairs:
            kappa = cohen_kappa([x == 1.0 for x, _ in pairs], [y == 1.0 for _, y in pairs])
            result.append({"graders": [a, b], "kappa": kappa, "n": len(pairs)})
    return result


def check_graders(keys: list[tuple[str, str | None]], primary: str, source: str) -> None:
    """Each (grader, variant) has one verdict file and every variant its primary grader's: so a Score
    record has one entry per (metric, variant, grader) and one primary grader per (metric, variant)."""
    repeated = sorted({key for key in keys if keys.count(key) > 1}, key=str)
    if repeated:
        raise ValueError(f"{source}: more than one verdict file for (grader, variant) {repeated}")
    lacking = sorted({variant for _, variant in keys if (primary, variant) not in keys}, key=str)
    if lacking:
        raise ValueError(f"{source}: no verdict file of the primary grader '{primary}' for variant(s) {lacking}")


def read_verdicts(path: str | Path, items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Verdict records, checked against what the grader was given, the benchmark's `items` x `n`
    samples: each (problem, sample) exactly once, each value null or in [0, 1]. A file that is not
    (cut, edited, another benchmark's) is a DamagedFileError naming the file, the line and the fix."""
    verdicts = read_jsonl(path)
    try:
        for lineno, v in enumerate(verdicts, start=1):
            value = v.get("value", "absent") if isinstance(v, dict) else "absent"
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
            ):
                raise ValueError(f"{path}: line {lineno}: value {value!r} is neither null nor in [0, 1]")
        keys = [(str(v.get("prompt_id")), v.get("sample_index")) for v in verdicts]
        check_samples(keys, sample_keys(items, n), str(path), f"{len(items)} items x n={n}")
    except ValueError as err:
        raise DamagedFileError(f"{err} (regrade it with: snakemake --forcerun {path})") from err
    return verdicts


def truncation_counts(generations: list[dict[str, Any]]) -> dict[str, int]:
    """Samples, and how many of them stopped at the token limit and never closed their thinking
    (`parsers.truncation_flags`), of one checkpoint's Generation records on one benchmark."""
    flags = [truncation_flags(g["prompt"], g["text"], g["finish_reason"]) for g in generations]
    return {
        "samples": len(flags),
        "truncated": sum(truncated for truncated, _ in flags),
        "unclosed_think": sum(unclosed for _, unclosed in flags),
    }


def compute_score(
    ids: dict[str, Any],
    settings: ScoreSettings,
    verdict_paths: list[str | Path],
    items: list[dict[str, Any]],
    generations: list[dict[str, Any]],
) -> dict[str, Any]:
    """The Score record (docs/design.md, schemas/records/score.schema.yaml) of one checkpoint and
    benchmark, from verdict files of its `items` x `settings.n` samples and the `generations` they graded."""
    metric_name = registry.KIND_METRICS[settings.kind]
    keys = [registry.grader_and_variant(Path(path).stem) for path in verdict_paths]
    check_graders(keys, settings.primary, ", ".join(map(str, verdict_paths)))
    metrics, by_grader = [], {}
    for path, (grader, variant) in zip(verdict_paths, keys, strict=True):
        verdicts = read_verdicts(path, items, settings.n)
        metric = metric_from_verdicts(verdicts, settings.max_unparseable_share, str(path))
        metrics.append(
            {
                "metric": metric_name,
                "variant": variant,
                "grader": grader,
                "primary": grader == settings.primary,
                **metric,
            }
        )
        # No agreement on reasoning benchmarks: a fallback judge's verdicts copy its grader's passes
        # (AIME); GPQA's two regex graders are compared in tests/test_peer_extraction.py.
        if metric_name != registry.REASONING_METRIC:
            by_grader[grader] = verdicts
    return {
        **ids,
        "scorer_version": settings.scorer_version,
        "metrics": metrics,
        "agreement": agreement(by_grader),
        "truncation": truncation_counts(generations),
    }
