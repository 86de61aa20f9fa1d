"""Evaluation stage (rules/data.smk's benchmarks, rules/generate.smk, rules/judge.smk,
rules/score.smk): benchmark items (`items`), generation (`generation`), graders and judges (`graders`, `judge`, `parsers`, `code_exec` in the `sandbox`) and
Score summaries (`score`)."""
