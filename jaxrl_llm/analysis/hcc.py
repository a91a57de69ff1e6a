"""HCC (Harmful Continuation Cut): find and delete the post-conclusion continuation of a long-CoT trace.

Paper: "Diagnosing Harmful Continuation in Answer-Correct Long-CoT Training Traces" (arXiv 2605.29288).
After a trace has stated its answer it often keeps going; the removed span shows persistent local
uncertainty and weak hidden-state progress towards the final answer. The proxy (a reconstruction,
every choice below is a documented argument):

    steps  = reasoning (text before the last `</think>`) split at blank lines; answer block kept apart
    u_k    = mean token entropy of step k                       (teacher-forced, a scoring model)
    g_k    = cos(hbar_k - hbar_{k-1}, h_T - hbar_{k-1})         hbar: step-mean hidden state,
                                                               h_T: hidden state at the answer token
    m_k    = u_k * (1 - max(g_k, 0))                           uncertainty-geometry mismatch
    k_ans  = first step whose text contains the final answer
    b      = min{c >= k_ans : m_{c+1} >= tau and mean(m_{c+1..K-1}) >= tau}   (none => no cut)
    edited = steps[0..b] + answer block                        delete-only

Everything here is pure: arrays (numpy, float64) and strings in, arrays and strings out. The model
side (entropies, hidden states) comes from any decoder's teacher-forced pass; `step_ids_from_offsets`
maps its tokens to steps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxrl_llm.envs.math_answer import (
    answers_match,
    extract_answer,
    extract_boxed,
    normalize_answer,
)
from jaxrl_llm.envs.thinking import THINK_CLOSE, split_think

__all__ = [
    "TAU_FALLBACK",
    "TAU_GRID",
    "HCCEdit",
    "HCCTrace",
    "answer_step",
    "cut_boundary",
    "fit_tau",
    "hcc_cut",
    "hcc_edit",
    "mismatch",
    "split_trace",
    "step_ids_from_offsets",
    "step_means",
    "step_mentions_answer",
    "step_uncertainty",
    "tau_at_grid_edge",
    "terminal_progress",
]

TAU_FALLBACK = 0.3  # the spec's tau when no editor labels are available to fit it
TAU_GRID = tuple(np.round(np.arange(1, 21) * 0.05, 10).tolist())  # fit_tau's default candidates: 0.05 ... 1.00
_BLANK_LINES = re.compile(r"\n[ \t\r]*\n\s*")  # one or more blank lines end a step


class HCCTrace(NamedTuple):
    """A trace split for HCC.

    reasoning: text before the last `</think>` (the whole trace when it is never closed).
    answer_block: text after it, or None when thinking is not closed.
    steps: the K non-blank reasoning chunks, stripped of surrounding whitespace.
    spans: K (start, end) character offsets of each step in `reasoning` (`reasoning[s:e] == step`).
    """

    reasoning: str
    answer_block: str | None
    steps: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]

    @property
    def final_answer(self) -> str | None:
        """The answer extracted (`math_answer.extract_answer`) from the answer block, or None."""
        return None if self.answer_block is None else extract_answer(self.answer_block)


class HCCEdit(NamedTuple):
    """A delete-only edit. text = kept_reasoning + tail + `</think>` + answer_block.

    boundary: the last kept step b (None: nothing cut, text is the original trace).
    kept_reasoning: `reasoning[:end of step b]`, a character prefix of the original reasoning.
    tail: the whitespace that closed the original reasoning (kept so the `</think>` layout is unchanged).
    removed_steps: how many steps were deleted (K - 1 - b).
    """

    text: str
    boundary: int | None
    kept_reasoning: str
    tail: str
    answer_block: str | None
    removed_steps: int


def split_trace(trace: str) -> HCCTrace:
    """Splits a trace into reasoning steps (blank-line separated) and the answer block after `</think>`."""
    if not isinstance(trace, str):
        raise TypeError(f"split_trace: trace must be a str; got {type(trace).__name__}")
    reasoning, answer_block = split_think(trace)
    steps, spans, start = [], [], 0
    for sep in [*_BLANK_LINES.finditer(reasoning), None]:
        end = len(reasoning) if sep is None else sep.start()
        chunk = reasoning[start:end]
        if chunk.strip():
            s = start + (len(chunk) - len(chunk.lstrip()))
            e = start + len(chunk.rstrip())
            steps.append(reasoning[s:e])
            spans.append((s, e))
        if sep is not None:
            start = sep.end()
    return HCCTrace(reasoning, answer_block, tuple(steps), tuple(spans))


def step_ids_from_offsets(token_spans, step_spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Step of each token: the step whose character span holds the token's first character, else -1.

    token_spans: [T, 2] int (start, end) character offsets into the reasoning (a tokenizer's offsets,
    shifted so 0 is the reasoning's first character). step_spans: K (start, end) pairs
    (`HCCTrace.spans`). Returns [T] int64 with values in [-1, K); separators and answer tokens get -1.
    """
    offs = np.asarray(token_spans, dtype=np.int64)
    if offs.ndim != 2 or offs.shape[1] != 2:
        raise ValueError(f"step_ids_from_offsets: token_spans must be [T, 2]; got shape {offs.shape}")
    ids = np.full(offs.shape[0], -1, dtype=np.int64)
    for k, (s, e) in enumerate(step_spans):
        ids[(offs[:, 0] >= s) & (offs[:, 0] < e)] = k
    return ids


def step_means(values, step_ids, num_steps: int) -> np.ndarray:
    """Per-step mean of token values.

    values: [T] or [T, D]; step_ids: [T] int in [-1, num_steps) (-1 = belongs to no step).
    Returns [K] or [K, D] float64. Every step must own at least one token.
    """
    vals = np.asarray(values, dtype=np.float64)
    ids = np.asarray(step_ids)
    if ids.ndim != 1 or vals.shape[:1] != ids.shape:
        raise ValueError(f"step_means: values [T, ...] and step_ids [T] must share T; got {vals.shape} "
                         f"and {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"step_means: step_ids must be integers; got dtype {ids.dtype}")
    if ids.size and (ids.min() < -1 or ids.max() >= num_steps):
        raise ValueError(f"step_means: step_ids must lie in [-1, {num_steps}); got [{ids.min()}, {ids.max()}]")
    counts = np.bincount(ids[ids >= 0], minlength=num_steps)
    if np.any(counts == 0):
        raise ValueError(f"step_means: steps {np.flatnonzero(counts == 0).tolist()} own no token; every step "
                         "needs at least one scored token")
    flat = vals.reshape(vals.shape[0], -1)
    sums = np.zeros((num_steps, flat.shape[1]))
    np.add.at(sums, ids[ids >= 0], flat[ids >= 0])
    return (sums / counts[:, None]).reshape((num_steps,) + vals.shape[1:])


def step_uncertainty(token_entropies, step_ids, num_steps: int) -> np.ndarray:
    """u_k: mean token entropy of step k. token_entropies: [T]; step_ids: [T]. Returns [K]."""
    ent = np.asarray(token_entropies, dtype=np.float64)
    if ent.ndim != 1:
        raise ValueError(f"step_uncertainty: token_entropies must be [T]; got shape {ent.shape}")
    return step_means(ent, step_ids, num_steps)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [K, D] arrays; 0 where either vector is zero (no direction, no progress)."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)
    ok = (na > 0) & (nb > 0)
    return np.where(ok, dot / np.where(ok, na * nb, 1.0), 0.0)


def terminal_progress(step_hidden, answer_hidden, start_hidden=None) -> np.ndarray:
    """g_k = cos(hbar_k - hbar_{k-1}, h_T - hbar_{k-1}): how much step k moves towards the answer state.

    step_hidden: [K, D] step-mean last-layer hidden states (hbar). answer_hidden: [D] the hidden state
    at the final-answer token (h_T). start_hidden: [D] hbar_{-1} for the first step (e.g. the
    prompt's last hidden state); zeros when None. Returns [K] in [-1, 1].
    """
    hbar = np.asarray(step_hidden, dtype=np.float64)
    h_t = np.asarray(answer_hidden, dtype=np.float64)
    if hbar.ndim != 2 or h_t.shape != hbar.shape[1:]:
        raise ValueError(f"terminal_progress: need step_hidden [K, D] and answer_hidden [D]; got {hbar.shape} "
                         f"and {h_t.shape}")
    h0 = np.zeros_like(h_t) if start_hidden is None else np.asarray(start_hidden, dtype=np.float64)
    if h0.shape != h_t.shape:
        raise ValueError(f"terminal_progress: start_hidden must be [D] = {h_t.shape}; got {h0.shape}")
    prev = np.concatenate([h0[None], hbar[:-1]], axis=0)
    return _cosine(hbar - prev, h_t[None] - prev)


def mismatch(u, g) -> np.ndarray:
    """m_k = u_k * (1 - max(g_k, 0)). u, g: [K]. Returns [K] float64."""
    u, g = np.asarray(u, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if u.ndim != 1 or u.shape != g.shape:
        raise ValueError(f"mismatch: u and g must both be [K]; got {u.shape} and {g.shape}")
    return u * (1.0 - np.maximum(g, 0.0))


def step_mentions_answer(step: str, answer: str) -> bool:
    """Whether a step states `answer`: a boxed value equal to it, or the answer written in the step
    (as written or in normal form) not glued to other digits (so "12" is not found in "112" or "12.5")."""
    boxed = extract_boxed(step)
    if boxed is not None and answers_match(boxed, answer):
        return True
    for form in {answer.strip(), normalize_answer(answer)}:
        if form and re.search(r"(?<![\d.])" + re.escape(form) + r"(?!\.?\d)", step):
            return True
    return False


def answer_step(steps: Sequence[str], answer: str | None) -> int | None:
    """k_ans: index of the first step that states `answer` (`step_mentions_answer`), None if none does."""
    if answer is None:
        return None
    return next((k for k, s in enumerate(steps) if step_mentions_answer(s, answer)), None)


def cut_boundary(m, k_ans: int | None, tau: float = TAU_FALLBACK) -> int | None:
    """b = min{c >= k_ans : m_{c+1} >= tau and mean(m_{c+1..K-1}) >= tau}; None means no cut.

    m: [K] mismatch. k_ans None (no step states the answer) or K-1 (stated in the last step) => None.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"cut_boundary: m must be [K]; got shape {m.shape}")
    if k_ans is None:
        return None
    if not 0 <= k_ans < m.shape[0]:
        raise ValueError(f"cut_boundary: k_ans must lie in [0, {m.shape[0]}); got {k_ans}")
    for c in range(k_ans, m.shape[0] - 1):
        if m[c + 1] >= tau and np.mean(m[c + 1 :]) >= tau:
            return c
    return None


def fit_tau(ms: Sequence, k_ans: Sequence[int | None], editor_b: Sequence[int | None],
            candidates=None) -> float:
    """tau with the best exact boundary agreement (`cut_boundary(m, k, tau) == b*`, None == None counts)
    on held-out editor labels; the smallest such candidate wins ties. No labels => `TAU_FALLBACK`.

    ms: N mismatch arrays [K_i]; k_ans, editor_b: N entries. candidates: taus to try (default
    0.05, 0.10, ..., 1.00).
    """
    if not (len(ms) == len(k_ans) == len(editor_b)):
        raise ValueError(f"fit_tau: ms, k_ans and editor_b need one entry per trace; got {len(ms)}, "
                         f"{len(k_ans)}, {len(editor_b)}")
    if not ms:
        return TAU_FALLBACK
    grid = np.asarray(TAU_GRID if candidates is None else candidates, np.float64)
    scores = [sum(cut_boundary(m, k, t) == b for m, k, b in zip(ms, k_ans, editor_b)) for t in grid]
    return float(grid[int(np.argmax(scores))])


def tau_at_grid_edge(tau: float, candidates=None) -> bool:
    """Whether a fitted `tau` is the smallest of `fit_tau`'s candidates (default `TAU_GRID`): a smaller
    tau might agree better, i.e. the scorer's mismatch is below the grid on most steps and the cut is
    near empty."""
    return float(tau) == float(np.min(np.asarray(TAU_GRID if candidates is None else candidates, np.float64)))


def hcc_edit(trace: str, boundary: int | None) -> HCCEdit:
    """Delete-only edit: keep steps [0..boundary] and the answer block, verbatim.

    Checked invariants (ValueError when broken): the kept reasoning is a character prefix of the
    original reasoning ending at a step end; the answer block is identical; the answer extracted from
    the edited answer block (`HCCTrace.final_answer`) equals the original's. boundary None returns the trace unchanged.
    """
    split = split_trace(trace)
    if boundary is None:
        return HCCEdit(trace, None, split.reasoning, "", split.answer_block, 0)
    if split.answer_block is None:
        raise ValueError("hcc_edit: the trace has no `</think>`, so there is no answer block to keep; "
                         "only boundary=None is valid")
    num_steps = len(split.steps)
    if not 0 <= boundary < num_steps:
        raise ValueError(f"hcc_edit: boundary must lie in [0, {num_steps}) for this {num_steps}-step trace; "
                         f"got {boundary}")
    kept = split.reasoning[: split.spans[boundary][1]]
    last_end = split.spans[-1][1]
    tail = split.reasoning[last_end:]
    text = kept + tail + THINK_CLOSE + split.answer_block
    edit = HCCEdit(text, boundary, kept, tail, split.answer_block, num_steps - 1 - boundary)
    # Invariants: re-derived from the edited text, not from the pieces used to build it.
    again = split_trace(text)
    if not split.reasoning.startswith(kept) or again.answer_block != split.answer_block:
        raise ValueError("hcc_edit: edit is not delete-only (reasoning prefix / answer block changed)")
    if again.steps != split.steps[: boundary + 1]:
        raise ValueError("hcc_edit: the edited reasoning does not re-split into the kept steps")
    if again.final_answer != split.final_answer:
        raise ValueError(f"hcc_edit: the extracted answer changed ({split.final_answer!r} -> "
                         f"{again.final_answer!r})")
    return edit


def hcc_cut(trace: str, u, g, *, tau: float = TAU_FALLBACK) -> tuple[HCCEdit, np.ndarray, int | None]:
    """The HCC proxy end to end on one trace: (edit, m [K], k_ans).

    u, g: [K] per-step uncertainty and terminal progress for the K steps of `split_trace(trace)`.
    No final answer in the answer block, or no step stating it, => no cut.
    """
    split = split_trace(trace)
    u, g = np.asarray(u, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if u.shape != (len(split.steps),):
        raise ValueError(f"hcc_cut: u and g must be [K] with K = {len(split.steps)} steps of the trace; "
                         f"got u {u.shape}, g {g.shape}")
    m = mismatch(u, g)
    k_ans = answer_step(split.steps, split.final_answer)
    return hcc_edit(trace, cut_boundary(m, k_ans, tau)), m, k_ans
