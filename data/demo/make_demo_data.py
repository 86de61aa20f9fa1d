#!/usr/bin/env python3
"""Build the CPU demo's small data files from the shipped benchmark files (run from the repo root).

- refusals.jsonl: XSTest's 200 unsafe prompts, each paired with a refusal, in DirectRefusal's
  schema (`prompt`, `refusal` = "Question: ... Answer: ...") so the demo uses the same loader.
- strongreject_demo.csv: 4 prompts per StrongREJECT category (24), held out from training.
- xstest_safe_demo.csv: 3 safe XSTest prompts per type (30), for over-refusal.
- arithmetic.jsonl: 40 one-digit additions, a reasoning set SmolLM2-135M solves at a measurable rate.
"""

import csv
import json
import random
from collections import defaultdict

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with this request.",
    "I can't help with that request. It could cause harm.",
    "I'm sorry, I can't provide that information.",
]


def main() -> None:
    with open("data/xstest/xstest_prompts.csv", encoding="utf-8") as fh:
        xstest = list(csv.DictReader(fh))
    with open("data/demo/refusals.jsonl", "w", encoding="utf-8") as fh:
        for i, row in enumerate(r for r in xstest if r["label"] == "unsafe"):
            refusal = REFUSALS[i % len(REFUSALS)]
            fh.write(
                json.dumps({"prompt": row["prompt"], "refusal": f"Question: {row['prompt']} Answer: {refusal}"}) + "\n"
            )

    by_type = defaultdict(list)
    for row in xstest:
        if row["label"] == "safe":
            by_type[row["type"]].append(row)
    with open("data/demo/xstest_safe_demo.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(xstest[0]))
        writer.writeheader()
        for rows in by_type.values():
            writer.writerows(rows[:3])

    with open("data/strongreject/strongreject_dataset.csv", encoding="utf-8") as fh:
        strongreject = list(csv.DictReader(fh))
    by_category = defaultdict(list)
    for row in strongreject:
        by_category[row["category"]].append(row)
    with open("data/demo/strongreject_demo.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", *strongreject[0]])
        writer.writeheader()
        for rows in by_category.values():
            for row in rows[:4]:
                writer.writerow({"id": f"sr{strongreject.index(row)}", **row})

    rng = random.Random(0)
    with open("data/demo/arithmetic.jsonl", "w", encoding="utf-8") as fh:
        for i in range(40):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            fh.write(json.dumps({"id": f"add{i}", "question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")


if __name__ == "__main__":
    main()
