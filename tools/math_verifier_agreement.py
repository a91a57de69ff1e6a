"""Agreement of the math answer verifiers with hand labels and with each other.

    python tools/math_verifier_agreement.py                       # tests/fixtures/math_answers.jsonl
    python tools/math_verifier_agreement.py --cases my.jsonl --out runs/agreement.json

Each case is a JSON line `{"category", "response", "reference", "expected"}`. Prints one table
row per category and a total: how often `builtin` and `math_verify` (envs/math_answer.py) agree
with `expected`, and with each other; writes the counts and every disagreement as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxrl_llm.data.datasets import load_jsonl
from jaxrl_llm.envs.math_answer import check_answer, resolve_verifier

DEFAULT_CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                             "math_answers.jsonl")
VERIFIER_NAMES = ("builtin", "math_verify")


def judge(cases: Sequence[Mapping[str, Any]], verifier: str) -> tuple[list[bool], float]:
    """Every case's verdict under `verifier`, and the mean seconds per check."""
    t0 = time.perf_counter()
    verdicts = [check_answer(c["response"], c["reference"], verifier=verifier) for c in cases]
    return verdicts, (time.perf_counter() - t0) / max(len(cases), 1)


def agreement(cases: Sequence[Mapping[str, Any]], verdicts: Mapping[str, Sequence[bool]]) -> dict[str, Any]:
    """Per category and in total: `n`, and agreement counts `<verifier>_vs_labels`, `builtin_vs_math_verify`."""
    names = list(verdicts)
    rows: dict[str, dict[str, int]] = {}
    for i, case in enumerate(cases):
        for key in (case.get("category", "other"), "total"):
            row = rows.setdefault(key, {"n": 0, **{f"{v}_vs_labels": 0 for v in names}})
            row["n"] += 1
            for v in names:
                row[f"{v}_vs_labels"] += int(verdicts[v][i] == bool(case["expected"]))
            if len(names) == 2:
                pair = f"{names[0]}_vs_{names[1]}"
                row[pair] = row.get(pair, 0) + int(verdicts[names[0]][i] == verdicts[names[1]][i])
    rows["total"] = rows.pop("total")  # last in the table
    return rows


def format_table(rows: Mapping[str, Mapping[str, int]]) -> str:
    """A Markdown table: each agreement count as `k/n (rate)`."""
    columns = [c for c in next(iter(rows.values())) if c != "n"]
    lines = ["| category | n | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, row in rows.items():
        cells = [f"{row[c]}/{row['n']} ({row[c] / row['n']:.0%})" for c in columns]
        lines.append(f"| {name} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help="JSON lines of {category, response, reference, expected}")
    parser.add_argument("--out", default="runs/math_verifier_agreement.json", help="where to write the JSON result")
    args = parser.parse_args(argv)
    cases = load_jsonl(args.cases)
    resolve_verifier("math_verify")  # raises naming `pip install math-verify` when it is missing
    verdicts, seconds = {}, {}
    for name in VERIFIER_NAMES:
        verdicts[name], seconds[name] = judge(cases, name)
    rows = agreement(cases, verdicts)
    print(format_table(rows))
    print("mean ms per check: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in seconds.items()))
    disagreements = [{**c, **{v: verdicts[v][i] for v in VERIFIER_NAMES}} for i, c in enumerate(cases)
                     if any(verdicts[v][i] != bool(c["expected"]) for v in VERIFIER_NAMES)]
    result = {"cases": os.path.abspath(args.cases), "agreement": rows, "seconds_per_check": seconds,
              "disagreements": disagreements}
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
