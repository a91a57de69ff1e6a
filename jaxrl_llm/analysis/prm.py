"""PRM step labels with Error Propagation / Error Cessation, baselines and metrics
(Beyond the First Error: Process Reward Models for Reflective Mathematical Reasoning, arXiv 2505.14391).

Each step of a solution carries a truth tag:
- "ok":   the step itself is right (label 1 only while no error is unresolved);
- "err":  the step is wrong (label 0; leaves an unresolved error);
- "prop": the step builds on an unresolved error without fixing it (label 0, propagation);
- "fix":  after an error, the step corrects it or restarts error-free (label 1; clears it, cessation).

Baselines: first-error labels (every step from the first error on is 0) and Monte-Carlo labels
(a step is 1 iff any completion sampled from its prefix reaches a correct answer). Metrics: step
precision/recall/F1 against gold labels and PRM@N (best-of-N by final-step score).

Plain NumPy: labels are built on the host from text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrl_llm.envs.arith_chain import parse_steps

__all__ = [
    "TRUTH_TAGS",
    "arith_chain_truth",
    "final_step_scores",
    "first_error_labels",
    "label_steps",
    "monte_carlo_labels",
    "prm_at_n",
    "step_prf",
]

TRUTH_TAGS = ("ok", "err", "prop", "fix")


def _check_truth(truth: Sequence[str]) -> list[str]:
    truth = list(truth)
    bad = [t for t in truth if t not in TRUTH_TAGS]
    if bad:
        raise ValueError(f"truth tags must be one of {TRUTH_TAGS}; got {bad}")
    return truth


def label_steps(truth: Sequence[str]) -> np.ndarray:
    """`truth [K]` tags -> `[K]` int32 labels with propagation and cessation.

    ok -> 1 if no error is unresolved else 0; err -> 0 (error unresolved); prop -> 0; fix -> 1
    (resolves it). E.g. [ok, err, prop, fix, ok] -> [1, 0, 0, 1, 1].
    """
    unresolved, out = False, []
    for tag in _check_truth(truth):
        if tag == "err":
            unresolved = True
        elif tag == "fix":
            unresolved = False
        out.append(int(tag in ("ok", "fix") and not unresolved))
    return np.asarray(out, np.int32)


def first_error_labels(truth: Sequence[str]) -> np.ndarray:
    """`truth [K]` -> `[K]` int32: 1 before the first non-"ok" step, 0 from it on (no cessation).
    E.g. [ok, err, prop, fix, ok] -> [1, 0, 0, 0, 0]."""
    truth = _check_truth(truth)
    first = next((k for k, t in enumerate(truth) if t != "ok"), len(truth))
    return (np.arange(len(truth)) < first).astype(np.int32)


def monte_carlo_labels(correct) -> np.ndarray:
    """`correct [K, M]` (completion m sampled from the prefix ending at step k reaches a correct
    answer) -> `[K]` int32: 1 iff any of the M completions is correct (the paper uses M = 8)."""
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[1] < 1:
        raise ValueError(f"monte_carlo_labels: correct must be [K, M] with M >= 1; got shape {correct.shape}")
    return correct.astype(bool).any(axis=1).astype(np.int32)


def step_prf(pred, gold, *, mask=None, positive: int = 0) -> tuple[float, float, float]:
    """`(precision, recall, F1)` of predicted step labels `pred [...]` against `gold [...]` (0/1).

    `positive` is the class counted as a hit: 0 (default) scores how well erroneous steps are
    found, 1 how well correct ones are. `mask [...]` (optional) drops padded steps. A ratio with a
    zero denominator is 0.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"step_prf: pred {pred.shape} and gold {gold.shape} must have the same shape")
    if positive not in (0, 1):
        raise ValueError(f"step_prf: positive must be 0 or 1; got {positive}")
    keep = np.ones(gold.shape, bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != gold.shape:
        raise ValueError(f"step_prf: mask {keep.shape} must match gold {gold.shape}")
    p = (pred.astype(int) == positive) & keep
    g = (gold.astype(int) == positive) & keep
    tp = float((p & g).sum())
    precision = tp / p.sum() if p.sum() else 0.0
    recall = tp / g.sum() if g.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def final_step_scores(step_scores, mask) -> np.ndarray:
    """`step_scores [..., K]`, `mask [..., K]` (valid steps, a prefix per solution) -> `[...]`:
    the score of each solution's last valid step (the PRM's solution score)."""
    step_scores, mask = np.asarray(step_scores, np.float64), np.asarray(mask, bool)
    if step_scores.shape != mask.shape:
        raise ValueError(f"final_step_scores: step_scores {step_scores.shape} and mask {mask.shape} must match")
    n = mask.sum(-1)
    if (n == 0).any():
        raise ValueError("final_step_scores: every solution needs at least one valid step in mask")
    return np.take_along_axis(step_scores, (n - 1)[..., None], axis=-1)[..., 0]


def prm_at_n(scores, correct) -> float:
    """PRM@N: `scores [P, N]` (solution scores, e.g. `final_step_scores`), `correct [P, N]` (0/1)
    for N sampled solutions of each of P problems -> accuracy of the highest-scored pick per
    problem (ties go to the first solution)."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct)
    if scores.ndim != 2 or scores.shape != correct.shape:
        raise ValueError(f"prm_at_n: scores and correct must both be [P, N]; got {scores.shape}, {correct.shape}")
    pick = scores.argmax(axis=1)
    return float(correct[np.arange(scores.shape[0]), pick].astype(bool).mean())


def arith_chain_truth(operands: Sequence[int], ops: Sequence[str], response: str) -> list[str]:
    """Truth tags for an ArithChain response (`problem.metadata["operands"]`, `["ops"]`), one per
    step of `envs.arith_chain.parse_steps`.

    Without an unresolved error a step is "ok" when it is right (the task's checker accepts it),
    else "err". After one, a step is "fix" when it is right against the true running value (it
    restarts from the correct value), else "prop" (it carries or adds to the error). The task's own checker
    labels equal `first_error_labels` of these tags; `label_steps` adds cessation.
    """
    steps = parse_steps(operands, ops, response)
    values = [int(operands[0])]
    for op, x in zip(ops, operands[1:]):
        values.append(values[-1] + int(x) if op == "+" else values[-1] - int(x))
    tags, unresolved = [], False
    for k, step in enumerate(steps):
        # Re-check each step on its own against the true running value (the task's checker stops
        # accepting anything after the first error, so it cannot see a fix).
        right = k < len(ops) and parse_steps([values[k], operands[k + 1]], [ops[k]], step.text)[0].ok
        tag = ("fix" if right else "prop") if unresolved else ("ok" if right else "err")
        unresolved = tag in ("err", "prop")
        tags.append(tag)
    return tags
