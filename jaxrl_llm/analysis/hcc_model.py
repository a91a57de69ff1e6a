"""HCC scored by a decoder: the per-step inputs of `analysis/hcc.py` from one teacher-forced pass.

For a record (prompt, completion) the scoring model reads `encode_prompt(prompt) +
encode_response(completion)` (the SFT layout) once. Per completion token t it gives

    uncertainty_t = entropy of the predictive distribution of token t (or its NLL, -log p(token t))
    h_t           = the last-layer (final-norm) hidden state at token t

and per step k of `hcc.split_trace(completion)` (a token belongs to the step its first character is in):

    u_k    = mean uncertainty_t over the step's tokens                 (`hcc.step_uncertainty`)
    hbar_k = mean h_t over the step's tokens                           (`hcc.step_means`)
    g_k    = cos(hbar_k - hbar_{k-1}, h_T - hbar_{k-1})                (`hcc.terminal_progress`)

with h_T the hidden state at the last token of the final answer in the answer block (the last
completion token when the answer is not written verbatim there) and hbar_{-1} the hidden state of the
last prompt token. `hcc.mismatch`, `hcc.answer_step`, `hcc.cut_boundary` and `hcc.hcc_edit` then do the
rest. Log-probs and entropies come from `objectives.token_stats.logits_token_stats`.

Works with any `models.decoder.Decoder` (a preset, a run's checkpoint, `models.hf.load_pretrained`);
records are right-padded into batches and scored under one jitted forward per padded length.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.analysis import hcc
from jaxrl_llm.envs.thinking import THINK_CLOSE
from jaxrl_llm.objectives.token_stats import logits_token_stats

__all__ = [
    "UNCERTAINTIES",
    "EncodedTrace",
    "ScoredTrace",
    "answer_token",
    "completion_token_spans",
    "encode_trace",
    "removed_tokens",
    "score_traces",
    "scored_cut",
    "step_inputs",
    "step_token_ids",
    "teacher_forced_stats",
    "token_uncertainty",
]

UNCERTAINTIES = ("entropy", "nll")
_LENGTH_BUCKET = 64  # padded lengths are multiples of this: few distinct compiled shapes


class EncodedTrace(NamedTuple):
    """ids: [L] int32, prompt then response (stop token included); prompt_len: P >= 1; token_spans:
    [N, 2] character spans in the completion of response tokens P..P+N-1 (N excludes the stop
    token); split: `hcc.split_trace(completion)`."""

    ids: np.ndarray
    prompt_len: int
    token_spans: np.ndarray
    split: hcc.HCCTrace
    completion: str


class ScoredTrace(NamedTuple):
    """One scored record: u, g, m [K] float64, k_ans (None: no step states the answer), step_ids [N]
    (the step of each completion token, -1 outside every step) and the encoding it was scored on."""

    encoded: EncodedTrace
    u: np.ndarray
    g: np.ndarray
    m: np.ndarray
    k_ans: int | None
    step_ids: np.ndarray


def completion_token_spans(tokenizer: Any, ids: Sequence[int], completion: str) -> np.ndarray:
    """`[N, 2]` (start, end) character spans of `ids` (the tokens of `completion`) in `completion`.

    Decodes token by token; when the pieces do not concatenate to the text (byte-level pieces of a
    multi-byte character), decodes growing prefixes instead. Raises when the ids do not decode to
    `completion`.
    """
    ids = [int(i) for i in ids]
    pieces = [tokenizer.decode([i]) for i in ids]
    if "".join(pieces) == completion:
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    else:
        if tokenizer.decode(ids) != completion:
            raise ValueError(f"completion_token_spans: the tokens do not decode back to the completion "
                             f"{completion[:60]!r}...; the tokenizer does not round-trip this text")
        ends = np.asarray([len(tokenizer.decode(ids[: t + 1])) for t in range(len(ids))], np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return np.stack([starts, ends], axis=1) if ids else np.zeros((0, 2), np.int64)


def encode_trace(tokenizer: Any, prompt: str, completion: str) -> EncodedTrace:
    """The SFT layout of one record plus the character span of each completion token."""
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise TypeError(f"encode_trace: prompt and completion must be str; got {type(prompt).__name__} and "
                        f"{type(completion).__name__}")
    prompt_ids = list(tokenizer.encode_prompt(prompt))
    if not prompt_ids:
        raise ValueError("encode_trace: the prompt encodes to no token (nothing to predict the first "
                         "completion token from); use a tokenizer with a bos token or a non-empty prompt")
    response = list(tokenizer.encode_response(completion))
    body = list(tokenizer.encode(completion))
    if response[: len(body)] != body:
        raise ValueError("encode_trace: encode_response(completion) does not start with encode(completion); "
                         "cannot map response tokens to the completion's characters")
    spans = completion_token_spans(tokenizer, body, completion)
    ids = np.asarray(prompt_ids + response, np.int32)
    return EncodedTrace(ids, len(prompt_ids), spans, hcc.split_trace(completion), completion)


def step_token_ids(token_spans, step_spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """`[N]` int64 step of each token: `hcc.step_ids_from_offsets`, then a step no token starts in
    takes the unassigned tokens that overlap it (a piece merged with the blank line before it).
    Raises when a step still owns no token."""
    offs = np.asarray(token_spans, np.int64).reshape(-1, 2)
    ids = hcc.step_ids_from_offsets(offs, step_spans)
    for k, (s, e) in enumerate(step_spans):
        if not np.any(ids == k):
            ids[(ids == -1) & (offs[:, 1] > s) & (offs[:, 0] < e)] = k
    empty = [k for k in range(len(step_spans)) if not np.any(ids == k)]
    if empty:
        raise ValueError(f"step_token_ids: steps {empty} own no token (every step needs one to be scored)")
    return ids


def answer_token(encoded: EncodedTrace) -> int:
    """Index (into the N completion tokens) of the last token of the final answer in the answer block;
    the last completion token when there is no answer block or the answer is not written verbatim."""
    n = encoded.token_spans.shape[0]
    if n == 0:
        raise ValueError("answer_token: the completion has no token")
    split = encoded.split
    answer = split.final_answer
    if split.answer_block is None or answer is None:
        return n - 1
    pos = split.answer_block.rfind(answer)
    if pos < 0:
        return n - 1
    start = len(split.reasoning) + len(THINK_CLOSE) + pos
    end = start + len(answer)
    spans = encoded.token_spans
    hit = np.flatnonzero((spans[:, 1] > start) & (spans[:, 0] < end))
    return int(hit[-1]) if hit.size else n - 1


def token_uncertainty(logits, ids, *, kind: str = "entropy") -> np.ndarray:
    """`[..., L]` float64 uncertainty of each token from teacher-forced `logits [..., L, V]` over `ids
    [..., L]`: the entropy of the distribution token t was predicted from (position t - 1), or its NLL.
    Position 0 (predicted from nothing) is 0."""
    if kind not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}; got {kind!r}")
    logits, ids = jnp.asarray(logits), jnp.asarray(ids, jnp.int32)
    if logits.ndim < 2 or logits.shape[:-1] != ids.shape:
        raise ValueError(f"token_uncertainty: need logits [..., L, V] and ids [..., L]; got {logits.shape} "
                         f"and {ids.shape}")
    logp, ent = logits_token_stats(logits[..., :-1, :], ids[..., 1:])
    value = np.asarray(ent if kind == "entropy" else -logp, np.float64)
    return np.concatenate([np.zeros(value.shape[:-1] + (1,)), value], axis=-1)


def step_inputs(uncertainty, hidden, encoded: EncodedTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(u [K], g [K], step_ids [N])` of one record from its per-position `uncertainty [L']` and
    `hidden [L', D]` (`L' >= L`, padding after position L - 1 ignored; `token_uncertainty`'s layout)."""
    unc = np.asarray(uncertainty, np.float64)
    hid = np.asarray(hidden, np.float64)
    p, n = encoded.prompt_len, encoded.token_spans.shape[0]
    if unc.ndim != 1 or hid.ndim != 2 or unc.shape[0] < p + n or hid.shape[0] < p + n:
        raise ValueError(f"step_inputs: need uncertainty [L] and hidden [L, D] with L >= {p + n} (prompt + "
                         f"completion tokens); got {unc.shape} and {hid.shape}")
    steps = encoded.split
    step_ids = step_token_ids(encoded.token_spans, steps.spans)
    k = len(steps.steps)
    u = hcc.step_uncertainty(unc[p:p + n], step_ids, k)
    hbar = hcc.step_means(hid[p:p + n], step_ids, k)
    g = hcc.terminal_progress(hbar, hid[p + answer_token(encoded)], hid[p - 1])
    return u, g, step_ids


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _forward(graphdef, state, tokens, segment_ids, *, kind: str):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, _, hidden = model(tokens, positions, segment_ids=segment_ids, return_hidden=True)
    logp, ent = logits_token_stats(logits[:, :-1], tokens[:, 1:])
    value = ent if kind == "entropy" else -logp
    return jnp.pad(value, ((0, 0), (1, 0))), hidden.astype(jnp.float32)


def teacher_forced_stats(model: Any, tokens, lengths, *, kind: str = "entropy") -> tuple[np.ndarray, np.ndarray]:
    """`(uncertainty [B, T], hidden [B, T, D])` of right-padded `tokens [B, T]` with `lengths [B]`
    valid tokens each (one jitted forward; `token_uncertainty`'s layout, fp32 values as float64)."""
    if kind not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}; got {kind!r}")
    tokens, lengths = np.asarray(tokens, np.int32), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or np.any(lengths < 1) or np.any(lengths > tokens.shape[1]):
        raise ValueError(f"teacher_forced_stats: need tokens [B, T] and lengths [B] in [1, T]; got {tokens.shape} "
                         f"and {lengths.tolist()}")
    segment_ids = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int32)
    graphdef, state = nnx.split(model)
    value, hidden = _forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(segment_ids), kind=kind)
    return np.asarray(value, np.float64), np.asarray(hidden, np.float64)


def score_traces(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *,
                 batch_size: int = 8, uncertainty: str = "entropy") -> list[ScoredTrace]:
    """u, g, m and k_ans of every (prompt, completion) under `model`, `batch_size` records per forward.

    Every completion must have at least one reasoning step. Batching does not change the values
    (each row attends only to its own tokens).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"score_traces: need one prompt per completion; got {len(prompts)} and {len(completions)}")
    if int(batch_size) < 1:
        raise ValueError(f"score_traces: batch_size must be >= 1; got {batch_size}")
    encoded = [encode_trace(tokenizer, p, c) for p, c in zip(prompts, completions)]
    for i, e in enumerate(encoded):
        if not e.split.steps:
            raise ValueError(f"score_traces: completion {i} has no reasoning step to score")
    pad = int(getattr(tokenizer, "pad_id", 0) or 0)
    out: list[ScoredTrace] = []
    for start in range(0, len(encoded), int(batch_size)):
        chunk = encoded[start:start + int(batch_size)]
        lengths = np.asarray([e.ids.size for e in chunk])
        width = -(-int(lengths.max()) // _LENGTH_BUCKET) * _LENGTH_BUCKET
        tokens = np.full((len(chunk), width), pad, np.int32)
        for row, e in enumerate(chunk):
            tokens[row, : e.ids.size] = e.ids
        value, hidden = teacher_forced_stats(model, tokens, lengths, kind=uncertainty)
        for row, e in enumerate(chunk):
            u, g, step_ids = step_inputs(value[row], hidden[row], e)
            out.append(ScoredTrace(e, u, g, hcc.mismatch(u, g), hcc.answer_step(e.split.steps, e.split.final_answer),
                                   step_ids))
    return out


def scored_cut(scored: ScoredTrace, tau: float = hcc.TAU_FALLBACK) -> hcc.HCCEdit:
    """The delete-only edit of a scored record at `hcc.cut_boundary(m, k_ans, tau)` (`hcc.hcc_edit`)."""
    return hcc.hcc_edit(scored.encoded.completion, hcc.cut_boundary(scored.m, scored.k_ans, tau))


def removed_tokens(scored: ScoredTrace, edit: hcc.HCCEdit) -> int:
    """Completion tokens the edit deletes: those starting between the kept reasoning and the end of the
    last step (the whitespace before `</think>` stays)."""
    if edit.boundary is None:
        return 0
    split = scored.encoded.split
    lo, hi = len(edit.kept_reasoning), split.spans[-1][1]
    starts = scored.encoded.token_spans[:, 0]
    return int(np.count_nonzero((starts >= lo) & (starts < hi)))
