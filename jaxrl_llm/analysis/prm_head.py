"""A scalar process-reward head on the decoder: one score per step, read at the step's last token
(Beyond the First Error, arXiv 2505.14391; the PRM half of BCPG-NSA's step judge, arXiv 2505.14403).

    score_k = sigmoid(w . h_{t_k} + b)

`h [B, T, D]` is the decoder's final-norm hidden state over `prompt + response` and `t_k` the last
token of step k. Steps are the task's own (`task.step_labels`, e.g. ArithChain's, ending at `;`);
`step_end_tokens` only maps their character spans onto tokens. Training is per-step binary
cross-entropy (`step_bce`) on labels from `analysis/prm.py`: error propagation / cessation
(`label_steps`, the default), first-error, or Monte-Carlo.

Training data without a policy: ArithChain traces with one injected error (`injected_error_trace`):
a worked solution whose step k writes a wrong result; later steps either carry the wrong value
("prop") or, with `fix_prob`, the next step restarts from the true value ("fix").

This module holds the model-side pieces (pure functions over arrays and text); the trainer, the
`prm` command and the registered BCPG-NSA scorer are in `train/prm_run.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_llm.analysis.prm import arith_chain_truth, first_error_labels, label_steps
from jaxrl_llm.envs.arith_chain import ANSWER_MARK, STEP_END

__all__ = [
    "LABEL_KINDS",
    "StepExample",
    "encode_steps",
    "init_head",
    "injected_error_trace",
    "pack_examples",
    "prm_step_logits",
    "step_auc",
    "step_bce",
    "step_end_tokens",
    "step_logits",
    "truth_labels",
]

LABEL_KINDS = ("propagation", "first_error", "monte_carlo")


class StepExample(NamedTuple):
    """One scored response: `tokens` (prompt + response ids), `end_idx [K]` (the token index of each
    step's last token, into `tokens`) and `labels [K]` (0/1; all 0 when only scoring)."""

    tokens: list[int]
    end_idx: list[int]
    labels: list[int]


def init_head(hidden_size: int) -> dict[str, jax.Array]:
    """`{"w": [D] zeros, "b": [] zeros}` float32: every step starts at score 0.5."""
    return {"w": jnp.zeros((int(hidden_size),), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def step_end_tokens(piece_texts: Sequence[str], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """`[K]` int32: per step span `[start, end)`, the index of the last token that starts before
    `end` (the token holding the step's last character, e.g. its `;`); -1 when no token does.

    piece_texts: the text of each response token, in order (their concatenation is the response).
    """
    starts = np.cumsum([0] + [len(p) for p in piece_texts])[:-1]
    out = np.full((len(spans),), -1, np.int32)
    for k, (_, end) in enumerate(spans):
        before = np.nonzero(starts < end)[0]
        if before.size:
            out[k] = before[-1]
    return out


def encode_steps(tokenizer: Any, prompt: str, response: str, spans: Sequence[tuple[int, int]]
                 ) -> tuple[list[int], np.ndarray]:
    """`(tokens, end_idx [K])`: `encode_prompt(prompt) + encode(response)` (the policy's layout,
    without eos) and each step's last-token index into `tokens` (`step_end_tokens`)."""
    head = list(tokenizer.encode_prompt(prompt))
    ids = list(tokenizer.encode(response))
    pieces = [tokenizer.decode([t]) for t in ids]
    if "".join(pieces) != response:
        raise ValueError(f"the tokenizer's pieces of the response do not spell it back ({response[:40]!r}...); "
                         "step spans cannot be mapped onto its tokens")
    end = step_end_tokens(pieces, spans)
    if (end < 0).any():
        raise ValueError(f"steps {np.nonzero(end < 0)[0].tolist()} of {response[:40]!r} hold no token")
    return head + ids, end + len(head)


def pack_examples(examples: Sequence[StepExample], *, seq_len: int, max_steps: int, pad_id: int = 0
                  ) -> dict[str, np.ndarray]:
    """Right-padded host batch: `tokens`, `positions`, `segment_ids` `[B, seq_len]` int32 (segment 0
    on padding), `end_idx [B, max_steps]` int32, `labels` and `step_mask` `[B, max_steps]` float32.

    Tokens past `seq_len` are cut; a step whose last token is cut (or past `max_steps`) gets mask 0.
    """
    b = len(examples)
    tokens = np.full((b, seq_len), pad_id, np.int32)
    segment_ids = np.zeros((b, seq_len), np.int32)
    end_idx = np.zeros((b, max_steps), np.int32)
    labels = np.zeros((b, max_steps), np.float32)
    step_mask = np.zeros((b, max_steps), np.float32)
    for i, ex in enumerate(examples):
        n = min(len(ex.tokens), seq_len)
        tokens[i, :n] = ex.tokens[:n]
        segment_ids[i, :n] = 1
        k = min(len(ex.end_idx), max_steps)
        ends = np.asarray(ex.end_idx[:k], np.int32)
        keep = ends < n
        end_idx[i, :k] = np.where(keep, ends, 0)
        labels[i, :k] = np.asarray(ex.labels[:k], np.float32)
        step_mask[i, :k] = keep
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (b, seq_len)).copy()
    return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids, "end_idx": end_idx,
            "labels": labels, "step_mask": step_mask}


def step_logits(hidden: jax.Array, end_idx: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
    """`hidden [B, T, D]`, `end_idx [B, K]` int -> `[B, K]` float32 logits `w . h[b, end_idx[b, k]] + b`."""
    h = jnp.take_along_axis(hidden, end_idx[..., None].astype(jnp.int32), axis=1)  # [B, K, D]
    return jnp.einsum("bkd,d->bk", h.astype(jnp.float32), head["w"].astype(jnp.float32)) + head["b"]


def prm_step_logits(model: Any, head: dict[str, jax.Array], tokens: jax.Array, positions: jax.Array,
                    segment_ids: jax.Array, end_idx: jax.Array) -> jax.Array:
    """`[B, K]` step logits of `Decoder` `model` over `tokens [B, T]` (no lm_head is computed)."""
    hidden, _ = model.hidden(tokens, positions, segment_ids=segment_ids)
    return step_logits(hidden, end_idx, head)


def step_bce(logits: jax.Array, labels: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy over the valid steps.

    Args:
      logits: `[B, K]` float, the head's logits.
      labels: `[B, K]` 0/1 step labels.
      where: `[B, K]` 0/1, the steps that count (default all); the mean is over them.
    Returns:
      scalar `sum_k where * (softplus(z) - y z) / max(sum where, 1)`.

    Example: logits `[0, 2]`, labels `[1, 0]` -> `(log 2 + log(1 + e^2)) / 2`.
    """
    per = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
    w = jnp.ones_like(per) if where is None else where.astype(jnp.float32)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def step_auc(scores, gold, mask=None, *, positive: int = 0) -> float:
    """ROC AUC of `scores [...]` at telling steps of class `positive` from the others (`gold [...]` 0/1,
    `mask [...]` optional): with `positive=0` a lower score should mean an erroneous step. Ties count
    one half (the Mann-Whitney statistic); 0.5 when a class is absent."""
    scores, gold = np.asarray(scores, np.float64), np.asarray(gold).astype(int)
    keep = np.ones(gold.shape, bool) if mask is None else np.asarray(mask, bool)
    s = scores[keep] if positive == 1 else -scores[keep]
    pos, neg = s[gold[keep] == positive], s[gold[keep] != positive]
    if not pos.size or not neg.size:
        return 0.5
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def truth_labels(operands: Sequence[int], ops: Sequence[str], response: str, kind: str = "propagation"
                 ) -> np.ndarray:
    """`[K]` int32 labels of an ArithChain response's steps (`arith_chain_truth` tags):
    "propagation" = `label_steps` (error propagation and cessation), "first_error" = `first_error_labels`."""
    truth = arith_chain_truth(operands, ops, response)
    if kind == "propagation":
        return label_steps(truth)
    if kind == "first_error":
        return first_error_labels(truth)
    raise ValueError(f"truth_labels: kind must be 'propagation' or 'first_error' (Monte-Carlo labels need a "
                     f"policy's completions: analysis.prm.monte_carlo_labels); got {kind!r}")


def injected_error_trace(operands: Sequence[int], ops: Sequence[str], rng: np.random.Generator, *,
                         error_prob: float = 0.6, fix_prob: float = 0.3, max_delta: int = 9) -> str:
    """An ArithChain response `"a op x=w;...;#A"`: the worked solution, or (with `error_prob`) one
    whose step k (uniform) writes `w_k + d`, `d` a non-zero integer in `[-max_delta, max_delta]`.

    After the error each step is arithmetically right on the value the previous step wrote (it
    propagates the error), except that with `fix_prob` the step right after the error restarts
    from the true running value (a fix: it and every later step are right). `#A` repeats the last
    written value, so a fixed trace ends with the right answer.
    """
    if not 0.0 <= error_prob <= 1.0 or not 0.0 <= fix_prob <= 1.0:
        raise ValueError(f"error_prob and fix_prob must be in [0, 1]; got {error_prob}, {fix_prob}")
    if int(max_delta) < 1:
        raise ValueError(f"max_delta must be >= 1; got {max_delta}")
    n = len(ops)
    bad = int(rng.integers(n)) if rng.random() < error_prob else -1
    fix = bad >= 0 and bad + 1 < n and rng.random() < fix_prob
    true_v, written, steps = int(operands[0]), int(operands[0]), []
    for k, (op, x) in enumerate(zip(ops, operands[1:])):
        x = int(x)
        if fix and k == bad + 1:
            written = true_v  # restart from the true running value
        w = written + x if op == "+" else written - x
        true_next = true_v + x if op == "+" else true_v - x
        if k == bad:
            d = int(rng.integers(1, int(max_delta) + 1)) * (1 if rng.random() < 0.5 else -1)
            w += d
        steps.append(f"{written}{op}{x}={w}")
        true_v, written = true_next, w
    return STEP_END.join(steps) + STEP_END + ANSWER_MARK + str(written)
