"""Verifier selection in `check_answer` and both verifiers' agreement with hand labels."""

import json
import os
import sys

import pytest

from jaxrl_llm.data.datasets import load_jsonl
from jaxrl_llm.envs import math_answer
from jaxrl_llm.envs.math_answer import check_answer, resolve_verifier

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "math_answers.jsonl")
CASES = load_jsonl(FIXTURE)
# Measured on the fixture (docs/envs.md has the table): builtin 53/67, math-verify 0.9.0 65/67.
MIN_AGREEMENT = {"builtin": 0.78, "math_verify": 0.95}


def test_fixture_covers_the_answer_kinds():
    categories = {c["category"] for c in CASES}
    assert {"integer", "commas", "fraction", "decimal", "sqrt", "set", "interval", "units", "percent", "negative",
            "boxed_nested", "gsm8k"} <= categories
    assert len(CASES) >= 60 and sum(not c["expected"] for c in CASES) >= 15


@pytest.mark.parametrize("verifier", ["builtin", "math_verify"])
def test_agreement_with_the_labels(verifier):
    if verifier == "math_verify":
        pytest.importorskip("math_verify")
    verdicts = [check_answer(c["response"], c["reference"], verifier=verifier) for c in CASES]
    agree = sum(v == c["expected"] for v, c in zip(verdicts, CASES)) / len(CASES)
    assert agree >= MIN_AGREEMENT[verifier], f"{verifier}: {agree:.1%}"
    # Both err only by missing equal answers, never by accepting a wrong one (a false reward).
    false_accepts = [c for v, c in zip(verdicts, CASES) if v and not c["expected"]]
    assert false_accepts == []


def test_auto_is_math_verify_when_installed_else_builtin(monkeypatch):
    pytest.importorskip("math_verify")
    assert resolve_verifier("auto") == "math_verify"
    sqrt = ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # equal, but only math-verify sees it
    assert check_answer(*sqrt) and check_answer(*sqrt, verifier="math_verify")
    assert not check_answer(*sqrt, verifier="builtin")
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if it were not installed
    assert resolve_verifier("auto") == "builtin" and not check_answer(*sqrt)
    with pytest.raises(ImportError, match=r"verifier='math_verify' needs the math-verify package: pip install "
                                          r"math-verify"):
        check_answer(*sqrt, verifier="math_verify")
    with pytest.raises(ValueError, match=r"verifier must be one of \('auto', 'math_verify', 'builtin'\)"):
        check_answer(*sqrt, verifier="sympy")


def test_math_verify_errors_and_timeouts_count_as_wrong(monkeypatch):
    mv = pytest.importorskip("math_verify")
    from math_verify.errors import TimeoutException

    math_answer._parsed_reference.cache_clear()
    assert check_answer("\\boxed{12}", "12", verifier="math_verify")
    for error in (TimeoutException("slow"), RuntimeError("broken")):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(mv, "verify", fail)
        assert check_answer("\\boxed{12}", "12", verifier="math_verify") is False
        monkeypatch.undo()
        math_answer._parsed_reference.cache_clear()
        monkeypatch.setattr(mv, "parse", fail)
        assert check_answer("\\boxed{12}", "12", verifier="math_verify") is False
        monkeypatch.undo()
        math_answer._parsed_reference.cache_clear()


def test_agreement_tool_writes_the_table(tmp_path, capsys):
    pytest.importorskip("math_verify")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    try:
        import math_verifier_agreement as tool
    finally:
        sys.path.pop(0)
    out = tmp_path / "agreement.json"
    result = tool.main(["--out", str(out)])
    total = result["agreement"]["total"]
    assert total["n"] == len(CASES) == json.loads(out.read_text())["agreement"]["total"]["n"]
    for verifier, rate in MIN_AGREEMENT.items():
        assert total[f"{verifier}_vs_labels"] >= rate * len(CASES)
    errors = [len(CASES) - total[f"{v}_vs_labels"] for v in MIN_AGREEMENT]
    assert max(errors) <= len(result["disagreements"]) <= sum(errors)  # cases where either verifier errs
    assert f"| total | {len(CASES)} |" in capsys.readouterr().out
