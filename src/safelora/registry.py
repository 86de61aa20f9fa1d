"""The registries: one entry per built-in grader and per figure.

Benchmarks are registered in the config (`benchmarks.<name>` in config.yaml: kind, source,
label, graders, ...), the way lm-eval registers tasks in YAML files; judge models likewise in
`judges.<name>`. What is fixed in code is listed here, and every other place derives from it:
the config check, the rules' wildcards and verdict paths, the scripts' choices, the score
files' grader names and the figures' titles. Adding a grader or a figure is one entry here plus
its own function (`grading.TEXT_GRADERS`, `code_exec`, `figures.FIGURES`); an import-time check
in those modules names an entry without a function or a function without an entry.

This module imports nothing from the package, so the Snakefile can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

# The benchmark kinds and the metric each is scored by (docs/aggregation.md).
KIND_METRICS = {
    "safety": "safety",
    "over_refusal": "over_refusal",
    "math": "pass@1",
    "multiple_choice": "pass@1",
    "code": "pass@1",
}
REASONING_METRIC = "pass@1"
METRICS = tuple(dict.fromkeys(KIND_METRICS.values()))  # in display order
METRIC_LABELS = {"safety": "safety", "over_refusal": "over-refusal", "pass@1": "pass@1"}


@dataclass(frozen=True)
class Grader:
    """A grader that needs no judge model.

    `rule` is the rule that runs it: `grade_text` (text graders on CPU) or `execute_code`
    (sandboxed execution). `variants` name its verdict files: none gives `<name>.jsonl`, and
    ("base", "plus") gives `<name>_base.jsonl` and `<name>_plus.jsonl`, scored as separate
    columns (`pass@1:<benchmark>:<variant>`).
    """

    name: str
    kinds: tuple[str, ...]
    rule: str
    variants: tuple[str, ...] = ()

    def verdict_stem(self, variant: str | None = None) -> str:
        if variant not in (self.variants or (None,)):
            raise ValueError(f"grader '{self.name}' has no verdict variant {variant!r} (variants: {self.variants})")
        return f"{self.name}_{variant}" if variant else self.name

    def verdict_stems(self) -> list[str]:
        return [self.verdict_stem(v) for v in self.variants or (None,)]


GRADERS = {
    g.name: g
    for g in (
        Grader("refusal_match", ("safety", "over_refusal"), "grade_text"),
        Grader("math_verify", ("math",), "grade_text"),
        Grader("last_number", ("math",), "grade_text"),
        Grader("choice_regex", ("multiple_choice",), "grade_text"),
        Grader("choice_paper_code", ("multiple_choice",), "grade_text"),
        Grader("evalplus", ("code",), "execute_code", variants=("base", "plus")),
    )
}

# Judge kinds (config `judges.<name>.kind`) and the benchmark kinds each may grade.
JUDGE_KINDS = {
    "llama_guard": ("safety",),
    "refusal_judge": ("safety", "over_refusal"),
    "math_judge": ("math",),
}


# A judge job reads every checkpoint of one run and writes a verdict file per checkpoint; a rule's
# outputs are fixed patterns, so rules/judge.smk defines one judge rule per set of checkpoint
# epochs in the grid (`judge_epochs_0`, `judge_epochs_1to5`, ...), named here.
JUDGE_RULE = "judge"


def judge_rule(epochs: list[int]) -> str:
    """The judge rule for runs whose checkpoints have `epochs`: [0] -> `judge_epochs_0`,
    [1, 2, 3] -> `judge_epochs_1to3`, [2, 5] -> `judge_epochs_2_5`."""
    spans: list[list[int]] = []
    for epoch in sorted(epochs):
        if spans and epoch == spans[-1][-1] + 1:
            spans[-1].append(epoch)
        else:
            spans.append([epoch])
    return f"{JUDGE_RULE}_epochs_" + "_".join(str(s[0]) if len(s) == 1 else f"{s[0]}to{s[-1]}" for s in spans)


def rule_family(rule: str) -> str:
    """`judge` for every judge rule (`judge_rule`), else the rule's own name."""
    return JUDGE_RULE if rule.startswith(f"{JUDGE_RULE}_epochs_") else rule


def text_graders() -> list[str]:
    return [g.name for g in GRADERS.values() if g.rule == "grade_text"]


def graders_by_kind() -> dict[str, set[str]]:
    """Benchmark kind -> the built-in grader names and judge kinds that may grade it."""
    allowed: dict[str, set[str]] = {kind: set() for kind in KIND_METRICS}
    for grader in GRADERS.values():
        for kind in grader.kinds:
            allowed[kind].add(grader.name)
    for judge_kind, kinds in JUDGE_KINDS.items():
        for kind in kinds:
            allowed[kind].add(judge_kind)
    return allowed


def verdict_stem(grader: str, variant: str | None = None) -> str:
    """The name (without `.jsonl`) of one verdict file of a grader or a judge (judges have no variants)."""
    return GRADERS[grader].verdict_stem(variant) if grader in GRADERS else grader


def verdict_stems(grader: str) -> list[str]:
    """The verdict file names (without `.jsonl`) a grader or judge writes per (checkpoint, benchmark)."""
    return GRADERS[grader].verdict_stems() if grader in GRADERS else [grader]


def grader_and_variant(stem: str) -> tuple[str, str | None]:
    """`evalplus_plus` -> ('evalplus', 'plus'); `llama_guard` -> ('llama_guard', None)."""
    for grader in GRADERS.values():
        for variant in grader.variants:
            if stem == f"{grader.name}_{variant}":
                return grader.name, variant
    return stem, None


@dataclass(frozen=True)
class Figure:
    """A figure of the report. `reads`: the results `table`, the judge `agreement` table, the
    weight-analysis tables (`weights`) or the training runs' logs (`training_logs`). `title` is its heading; figures over benchmarks add the
    labels of the benchmarks they show (config `benchmarks.<name>.label`)."""

    name: str
    reads: str
    title: str


# In report order.
FIGURES = {
    f.name: f
    for f in (
        Figure("fig2", "table", "Figure 2: reasoning vs safety"),
        Figure("fig6", "table", "Figure 6: reasoning vs safety, base tests"),
        Figure("fig3", "table", "Figure 3: LoRA rank and target-module ablations"),
        Figure("fig7", "table", "Figure 7: LoRA ranks across all epochs"),
        Figure("modules", "table", "LoRA target modules across all epochs (later versions' Figure 3c)"),
        Figure("layers", "table", "LoRA layer ranges across all epochs (later versions' layer study)"),
        Figure("fig5", "table", "Figure 5: Pareto-optimal checkpoints per method"),
        Figure("fig1", "weights", "Figure 1: stable rank of the weight update ΔW per layer"),
        Figure("fig4", "weights", "Figure 4: alignment of ΔW with the initial weights $W_I$ (mean over layers)"),
        Figure("overrefusal", "table", "Safety vs over-refusal"),
        Figure("agreement", "agreement", "Judge agreement (Cohen's κ) per checkpoint"),
        Figure("training_curves", "training_logs", "Training loss per step (dashed: epoch ends)"),
        Figure("truncation", "table", "Samples cut at the token limit, per epoch"),
    )
}


def check_implemented(concept: str, registered: list[str] | set[str], implemented: list[str] | set[str]) -> None:
    """Raise unless the registry's entries and a module's implementations name the same things."""
    missing, extra = set(registered) - set(implemented), set(implemented) - set(registered)
    if missing or extra:
        raise RuntimeError(
            f"{concept}: registered without an implementation: {sorted(missing)}; "
            f"implemented without a registry entry (safelora/registry.py): {sorted(extra)}"
        )
