"""ArithChain reasoning traces with exact ground truth: injected errors, propagation, self-correction
and post-conclusion continuation (spec `agents-analysis.md` section 0 item 4).

A trace solves a left-to-right +/- chain (`envs/arith_chain.py`) one operation per step, each step in
the ArithChain step format `"v op x=w;"`. Four things can happen, each with its own rate:

- an injected error: a step writes a wrong result `w` (the true result plus a non-zero offset);
- error propagation: every later step computes from the wrong running value (`"prop"`);
- self-correction: after a step that leaves an error unresolved, a step
  `"Wait, recheck: v op x=w;"` redoes the first wrong operation from its true input (`"fix"`), and
  the chain resumes from the restored value;
- post-conclusion continuation: after the step that derives the final value, re-checks
  `"Wait, recheck: ...;"` of steps on the final path are appended.

The completion text lays the steps out as HCC reads traces (`analysis/hcc.py`): steps separated by
blank lines, `</think>`, then the ArithChain answer `#A`. Ground truth per trace: the truth tags of
`analysis/prm.py` (labels = `prm.label_steps`, with propagation and cessation), the editor
boundary b* of spec section 4 (the step that derives the last needed result, stating the answer;
everything after it is continuation; `K - 1` = nothing to cut) and the final answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxrl_llm.analysis import hcc
from jaxrl_llm.analysis.prm import TRUTH_TAGS, label_steps
from jaxrl_llm.envs.arith_chain import ANSWER_MARK, STEP_END
from jaxrl_llm.envs.thinking import THINK_CLOSE

__all__ = [
    "RECHECK",
    "STEP_KINDS",
    "ArithTrace",
    "chain_prompt",
    "editor_edit",
    "export_traces_jsonl",
    "make_trace",
    "read_traces_jsonl",
    "trace_text",
]

RECHECK = "Wait, recheck: "
STEP_SEP = "\n\n"  # HCC's step separator (a blank line)
# "step": the next operation; "fix": a self-correction; "recheck": a re-check after the answer.
STEP_KINDS = ("step", "fix", "recheck")
_MAX_OFFSET = 9  # an injected error is off by 1..9 (either sign)


class ArithTrace(NamedTuple):
    """One trace with its ground truth.

    steps: K step texts, each ending with `;`. tags: K truth tags (`prm.TRUTH_TAGS`). kinds: K
    entries of `STEP_KINDS`. boundary: b*, the step after which everything is continuation (K - 1
    when there is none). answer: the value the trace concludes (`#answer`); reference: the chain's
    true value (they differ only when an error is left unresolved).
    """

    prompt: str
    operands: tuple[int, ...]
    ops: tuple[str, ...]
    steps: tuple[str, ...]
    tags: tuple[str, ...]
    kinds: tuple[str, ...]
    boundary: int
    answer: int
    reference: int

    @property
    def labels(self) -> np.ndarray:
        """[K] int32 step labels of spec section 5 (`prm.label_steps(tags)`)."""
        return label_steps(self.tags)

    @property
    def completion(self) -> str:
        """The trace text (`trace_text(steps, answer)`)."""
        return trace_text(self.steps, self.answer)

    @property
    def correct(self) -> bool:
        return self.answer == self.reference


def chain_prompt(operands: Sequence[int], ops: Sequence[str]) -> str:
    """`"12+7-30="`: the ArithChain prompt of a chain (as `ArithChainTask.draw` writes it)."""
    if len(ops) != len(operands) - 1:
        raise ValueError(f"ops must have len(operands) - 1 = {len(operands) - 1} entries; got {len(ops)}")
    return "".join(f"{int(x)}{op}" for x, op in zip(operands, ops)) + f"{int(operands[-1])}="


def trace_text(steps: Sequence[str], answer: int) -> str:
    """Steps separated by blank lines, then `</think>` and `#answer`: `"12+7=19;\\n\\n19-4=15;\\n</think>\\n#15"`."""
    if not steps:
        raise ValueError("trace_text: steps must hold at least one step")
    bad = [s for s in steps if not s.endswith(STEP_END) or s != s.strip() or STEP_SEP in s]
    if bad:
        raise ValueError(f"trace_text: every step must end with {STEP_END!r}, hold no blank line and no "
                         f"surrounding whitespace; got {bad[:3]}")
    return STEP_SEP.join(steps) + "\n" + THINK_CLOSE + "\n" + ANSWER_MARK + str(int(answer))


def _apply(value: int, op: str, x: int) -> int:
    return value + x if op == "+" else value - x


def _rate(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"make_trace: {name} must be in [0, 1]; got {value}")
    return value


def make_trace(rng: np.random.Generator, *, num_ops: int, error_rate: float = 0.0, correction_rate: float = 0.0,
               continuation_rate: float = 0.0, num_digits: int = 2, max_continuation: int = 3,
               operands: Sequence[int] | None = None, ops: Sequence[str] | None = None) -> ArithTrace:
    """A trace of a `num_ops`-operation chain drawn from `rng` (or of the given `operands` / `ops`).

    error_rate: chance that a step's written result is wrong. correction_rate: chance, after each
    step that leaves an error unresolved, of a `"Wait, recheck: ..."` step redoing the first wrong
    operation from its true input. continuation_rate: chance of re-checks after the final step;
    their number is uniform in 1..max_continuation, each restating a step of the final path.
    The same generator state always gives the same trace.
    """
    if isinstance(num_ops, bool) or not isinstance(num_ops, (int, np.integer)) or num_ops < 1:
        raise ValueError(f"make_trace: num_ops must be an integer >= 1; got {num_ops!r}")
    error_rate, correction_rate = _rate(error_rate, "error_rate"), _rate(correction_rate, "correction_rate")
    continuation_rate = _rate(continuation_rate, "continuation_rate")
    if error_rate == 1.0 and correction_rate < 1.0:
        raise ValueError("make_trace: error_rate=1 needs correction_rate=1 (else no step is ever right)")
    if int(max_continuation) < 1:
        raise ValueError(f"make_trace: max_continuation must be >= 1; got {max_continuation}")
    if operands is None or ops is None:
        operands = rng.integers(0, 10 ** int(num_digits), size=int(num_ops) + 1).tolist()
        ops = ["+-"[i] for i in rng.integers(0, 2, size=int(num_ops))]
    operands, ops = tuple(int(x) for x in operands), tuple(ops)
    if len(ops) != int(num_ops) or len(operands) != len(ops) + 1 or any(op not in "+-" for op in ops):
        raise ValueError(f"make_trace: need num_ops={num_ops} ops from '+-' and num_ops + 1 operands; got "
                         f"ops={ops!r}, operands={operands!r}")
    truth = [operands[0]]
    for op, x in zip(ops, operands[1:]):
        truth.append(_apply(truth[-1], op, x))

    steps, tags, kinds = [], [], []
    path: dict[int, tuple[str, bool]] = {}  # op index -> (equation on the final path, right vs truth)
    j, value, first_wrong = 0, operands[0], None  # first_wrong: the first op whose result diverged
    while j < len(ops):
        result = _apply(value, ops[j], operands[j + 1])
        if rng.random() < error_rate:
            offsets = [d for d in range(-_MAX_OFFSET, _MAX_OFFSET + 1)
                       if d and result + d != truth[j + 1]]  # an error never lands back on the truth
            result += int(rng.choice(offsets))
        eq = f"{value}{ops[j]}{operands[j + 1]}={result}"
        if first_wrong is None:
            tags.append("ok" if result == truth[j + 1] else "err")
            first_wrong = None if result == truth[j + 1] else j
        else:
            tags.append("prop")
        steps.append(eq + STEP_END)
        kinds.append("step")
        path[j] = (eq, result == truth[j + 1] and first_wrong is None)
        value, j = result, j + 1
        if first_wrong is not None and rng.random() < correction_rate:
            i = first_wrong
            eq = f"{truth[i]}{ops[i]}{operands[i + 1]}={truth[i + 1]}"
            steps.append(RECHECK + eq + STEP_END)
            tags.append("fix")
            kinds.append("fix")
            path = {k: v for k, v in path.items() if k < i}
            path[i] = (eq, True)
            value, j, first_wrong = truth[i + 1], i + 1, None
    boundary = len(steps) - 1
    if rng.random() < continuation_rate:
        for _ in range(int(rng.integers(1, int(max_continuation) + 1))):
            eq, right = path[int(rng.integers(0, len(ops)))]
            steps.append(RECHECK + eq + STEP_END)
            tags.append("ok" if right else "prop")
            kinds.append("recheck")
    return ArithTrace(chain_prompt(operands, ops), operands, ops, tuple(steps), tuple(tags), tuple(kinds),
                      boundary, int(value), int(truth[-1]))


def editor_edit(trace: ArithTrace) -> hcc.HCCEdit:
    """The ground-truth delete-only edit: `hcc.hcc_edit` of the completion at b* (no cut when b* = K - 1)."""
    last = len(trace.steps) - 1
    return hcc.hcc_edit(trace.completion, None if trace.boundary == last else trace.boundary)


def _record(trace: ArithTrace) -> dict[str, Any]:
    return {"prompt": trace.prompt, "completion": trace.completion, "steps": list(trace.steps),
            "labels": trace.labels.tolist(), "boundary": trace.boundary, "answer": str(trace.answer),
            "reference": str(trace.reference), "tags": list(trace.tags), "kinds": list(trace.kinds),
            "operands": list(trace.operands), "ops": list(trace.ops)}


def export_traces_jsonl(path: str | os.PathLike, traces: Iterable[ArithTrace]) -> int:
    """Writes one JSON line per trace: {prompt, completion, steps, labels, boundary, answer} plus
    reference, tags, kinds, operands and ops (so `read_traces_jsonl` restores the trace). Returns the count."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for trace in traces:
            f.write(json.dumps(_record(trace)) + "\n")
            n += 1
    return n


_KEYS = ("prompt", "completion", "steps", "labels", "boundary", "answer", "reference", "tags", "kinds",
         "operands", "ops")


def _from_record(rec: Any, where: str) -> ArithTrace:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object; got {type(rec).__name__}")
    missing = [k for k in _KEYS if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing fields {missing} (an ArithChain trace export holds {list(_KEYS)})")
    tags = tuple(rec["tags"])
    if any(t not in TRUTH_TAGS for t in tags) or any(k not in STEP_KINDS for k in rec["kinds"]):
        raise ValueError(f"{where}: tags must be from {TRUTH_TAGS} and kinds from {STEP_KINDS}")
    trace = ArithTrace(str(rec["prompt"]), tuple(int(x) for x in rec["operands"]), tuple(rec["ops"]),
                       tuple(rec["steps"]), tags, tuple(rec["kinds"]), int(rec["boundary"]), int(rec["answer"]),
                       int(rec["reference"]))
    if trace.completion != rec["completion"] or trace.labels.tolist() != list(rec["labels"]):
        raise ValueError(f"{where}: completion or labels disagree with the steps and tags")
    if not (len(trace.steps) == len(trace.tags) == len(trace.kinds)) or not 0 <= trace.boundary < len(trace.steps):
        raise ValueError(f"{where}: steps, tags and kinds need one entry per step and 0 <= boundary < K")
    return trace


def read_traces_jsonl(path: str | os.PathLike) -> list[ArithTrace]:
    """The traces `export_traces_jsonl` wrote (each record checked against its own steps and tags)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_traces_jsonl: {os.fspath(path)!r}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                out.append(_from_record(json.loads(line), f"{os.fspath(path)}, line {i}"))
    return out
