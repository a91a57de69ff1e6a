"""Learner-side log-probs of a rollout, QaRL alignment, and sampler-vs-learner mismatch metrics.

A quantized rollout samples from the policy of the *quantized* weights, while a learner that
recomputes log-probs with its full-precision master weights scores a slightly different policy;
the importance ratios then carry that gap as noise. QaRL aligns the two: the learner's forward
uses `fake_quant_params(master_params, fmt)`, whose values are exactly the rollout's quantized
weights and whose gradient is the identity (straight-through), so the update still reaches the
master weights. `learner_logprobs(..., quant_format=fmt)` is that aligned forward; with
`quant_format=None` it is the plain full-precision one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.lora import merge_lora
from jaxrl_llm.objectives.token_stats import hidden_token_stats, hidden_topk_logprobs
from jaxrl_llm.quant import fake_quant_params
from jaxrl_llm.rollout.prompts import span_layout
from jaxrl_llm.rollout.sampler import Rollout


def rollout_layout(rollout: Rollout) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(positions, segment_ids, loss_mask)`, each `[R, P + N]` int32, of `rollout.tokens`.

    Left padding gets segment 0; prompt and generated tokens segment 1 and consecutive positions
    from 0; `loss_mask` is 1 on generated tokens only.
    """
    width = rollout.prompt_width
    positions, segment_ids = span_layout(width - rollout.prompt_lengths, width + rollout.lengths,
                                         rollout.tokens.shape[1])
    loss_mask = jnp.pad(rollout.response_mask, ((0, 0), (width, 0)))
    return positions, segment_ids, loss_mask.astype(jnp.int32)


def token_batch(rollout: Rollout) -> dict[str, jax.Array]:
    """The rollout as `[R, T]` training arrays (`T = P + N`).

    Keys: `tokens`, `positions`, `segment_ids`, `loss_mask` and `old_logprobs` (the sampler's
    temperature-1 log-prob of each generated token, placed at that token's column; 0 elsewhere).
    """
    positions, segment_ids, loss_mask = rollout_layout(rollout)
    old = jnp.pad(rollout.logprobs, ((0, 0), (rollout.prompt_width, 0)))
    return dict(tokens=rollout.tokens, positions=positions, segment_ids=segment_ids, loss_mask=loss_mask,
                old_logprobs=old)


def learner_params(params: Any, quant_format: str | None, **quantize_kwargs: Any) -> Any:
    """`params` as the learner's forward sees them: fake-quantized to `quant_format` (QaRL) or as is.

    Call it inside the loss function so gradients flow to the master `params` (straight-through).
    `quantize_kwargs` must match those given to `quantize_params` for the rollout.
    """
    if quant_format is None:
        return params
    # LoRA adapters are merged first: the quantized rollout samples with the merged weights.
    return fake_quant_params(merge_lora(params), quant_format, **quantize_kwargs)


def model_token_stats(model: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, *,
                      chunk_size: int = 8192, temperature: float = 1.0, logits: bool = False, values: bool = False,
                      topk: int = 0) -> dict[str, jax.Array]:
    """The one learner forward: per-token policy statistics of `tokens [B, T]` under `model`.

    Entry t describes the prediction of `tokens[:, t]` from `tokens[:, :t]` (entry 0 is 0: nothing
    predicts it) under pi = softmax(logits / temperature). Always `logp [B, T]` and `entropy [B, T]`
    fp32, chunked over the vocabulary (`hidden_token_stats`: no `[B, T, V]`); with `logits`,
    `student_logits [B, T, V]` (/ temperature); with `values`, the value head's `values [B, T]`
    (the value of the state before token t); with `topk > 0`, `topk_idx` / `topk_logp [B, T, k]`
    (chunked). The RL update, its proximal / reference / teacher / critic passes, DPO and
    `learner_logprobs` all call this.
    """
    _, _, hidden = model(tokens, positions, segment_ids=segment_ids, return_hidden=True, return_logits=False)
    head = model.lm_head_weight()
    logp, entropy = hidden_token_stats(hidden[:, :-1], head, tokens[:, 1:], chunk_size=chunk_size,
                                       temperature=temperature)

    def shift(x):  # prepend the empty entry 0
        return jnp.concatenate([jnp.zeros((x.shape[0], 1, *x.shape[2:]), x.dtype), x], axis=1)

    out = {"logp": shift(logp), "entropy": shift(entropy)}
    if logits:
        out["student_logits"] = shift(model.logits(hidden[:, :-1]).astype(jnp.float32) / temperature)
    if values:
        out["values"] = shift(model.value(hidden[:, :-1]))
    if topk:
        idx, top = hidden_topk_logprobs(hidden[:, :-1], head, topk, chunk_size=chunk_size, temperature=temperature)
        out["topk_idx"], out["topk_logp"] = shift(idx), shift(top)
    return out


def learner_logprobs(graphdef: nnx.GraphDef, params: Any, rollout: Rollout, *, quant_format: str | None = None,
                     chunk_size: int = 8192, **quantize_kwargs: Any) -> jax.Array:
    """`[R, N]` float32 log-probs of `rollout.response` under one full (no-cache) forward.

    With `quant_format` (e.g. "int4"), the forward uses `fake_quant_params(params, quant_format)`:
    the rollout's quantized weights in value, identity in gradient. Differentiable in `params`.
    Entries off `rollout.response_mask` are 0.
    """
    positions, segment_ids, _ = rollout_layout(rollout)
    model = nnx.merge(graphdef, learner_params(params, quant_format, **quantize_kwargs))
    width, n_new = rollout.prompt_width, rollout.response.shape[1]
    logp = model_token_stats(model, rollout.tokens, positions, segment_ids, chunk_size=chunk_size)["logp"]
    return jnp.where(rollout.response_mask > 0, logp[:, width:width + n_new], 0.0)


def logprob_mismatch_metrics(sampler_logprobs: jax.Array, learner_logprobs: jax.Array,
                             mask: jax.Array) -> dict[str, jax.Array]:
    """How far the learner's policy is from the sampler's on the sampled tokens.

    Args:
      sampler_logprobs, learner_logprobs, mask: `[R, N]`; mask is 1 on response tokens.
    Returns:
      `mismatch/mean_abs_logp_diff`: mean of `|logp_learner - logp_sampler|` over masked tokens.
      `mismatch/kl_k3`: the k3 estimate of KL(sampler || learner), mean of `r - 1 - log r` with
      `r = exp(logp_learner - logp_sampler)` (non-negative per token, unbiased under sampling).
    """
    if not sampler_logprobs.shape == learner_logprobs.shape == mask.shape or mask.ndim != 2:
        raise ValueError(f"sampler_logprobs, learner_logprobs and mask must be equal [R, N]; got "
                         f"{sampler_logprobs.shape}, {learner_logprobs.shape}, {mask.shape}")
    weight = (mask > 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    log_ratio = (learner_logprobs - sampler_logprobs).astype(jnp.float32) * weight
    k3 = jnp.expm1(log_ratio) - log_ratio
    return {
        "mismatch/mean_abs_logp_diff": jnp.sum(jnp.abs(log_ratio)) / count,
        "mismatch/kl_k3": jnp.sum(k3 * weight) / count,
    }
