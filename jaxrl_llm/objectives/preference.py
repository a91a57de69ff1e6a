"""Preference and offline objectives: DPO (sigmoid), DPO-VP verifiable pair construction, BCPG-NSA.

DPO-VP pair building runs on the host (it chooses indices from verifier scores) and uses numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.objectives.advantages import grpo_advantages
from jaxrl_llm.objectives.aggregation import token_mean
from jaxrl_llm.objectives.core import (LossOutput, broadcast_advantages, check_per_sequence, check_shape,
                                       check_token_inputs, clamped_ratio, masked_mean)
from jaxrl_llm.objectives.policy_losses import clipped_token_loss

Array = jax.Array


def sequence_logp(logp: Array, mask: Array) -> Array:
    """Sum of token log-probs over the response (DPO's sequence log-prob). [B, T] -> [B]."""
    check_token_inputs(logp=logp, mask=mask)
    return jnp.sum(logp * mask.astype(logp.dtype), axis=-1)


def dpo_loss(policy_chosen_logp: Array, policy_rejected_logp: Array, ref_chosen_logp: Array,
             ref_rejected_logp: Array, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO (arXiv 2305.18290), sigmoid form with optional label smoothing (conservative DPO).

    Inputs: [N] summed sequence log-probs per pair. z = (pi_w - pi_l) - (ref_w - ref_l);
    L = mean(-(1 - s) log sigmoid(beta z) - s log sigmoid(-beta z)).
    Metrics: chosen_reward, rejected_reward (beta (pi - ref), means), reward_accuracy.
    """
    check_shape("policy_chosen_logp", policy_chosen_logp, (None,), "[N]")
    n = policy_chosen_logp.shape[0]
    for name, x in (("policy_rejected_logp", policy_rejected_logp), ("ref_chosen_logp", ref_chosen_logp),
                    ("ref_rejected_logp", ref_rejected_logp)):
        check_shape(name, x, (n,), f"[N] with N={n}")
    ref_chosen_logp = jax.lax.stop_gradient(ref_chosen_logp)
    ref_rejected_logp = jax.lax.stop_gradient(ref_rejected_logp)
    z = (policy_chosen_logp - policy_rejected_logp) - (ref_chosen_logp - ref_rejected_logp)
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * z) - label_smoothing * jax.nn.log_sigmoid(-beta * z)
    chosen = jax.lax.stop_gradient(beta * (policy_chosen_logp - ref_chosen_logp))
    rejected = jax.lax.stop_gradient(beta * (policy_rejected_logp - ref_rejected_logp))
    metrics = {"chosen_reward": jnp.mean(chosen), "rejected_reward": jnp.mean(rejected),
               "reward_accuracy": jnp.mean((chosen > rejected).astype(losses.dtype))}
    return LossOutput(jnp.mean(losses), metrics)


def dpo_vp_pair(scores, lengths, *, rng: np.random.Generator, max_chosen_length: int = 2048):
    """Choose a (chosen, rejected) pair among one prompt's samples, or None to skip the prompt (DPO-VP).

    scores: [n] verifier scores in {1 correct+boxed, 0 boxed but wrong, -1 no box}; lengths: [n]
    token lengths. Chosen: the longest score-1 sample shorter than `max_chosen_length` (else the
    longest score-1), else the longest score-0. Rejected: a random score -1 sample, else a random
    score-0 sample (other than the chosen one when no score-1 exists). Host-side numpy.
    """
    scores, lengths = np.asarray(scores), np.asarray(lengths)
    if scores.ndim != 1 or lengths.shape != scores.shape:
        raise ValueError(f"scores and lengths must be [n] of equal shape; got {scores.shape} and {lengths.shape}")
    correct, wrong, no_box = (np.nonzero(scores == v)[0] for v in (1, 0, -1))
    if correct.size:
        by_len = correct[np.argsort(-lengths[correct], kind="stable")]
        short = by_len[lengths[by_len] < max_chosen_length]
        chosen = int(short[0] if short.size else by_len[0])
    elif wrong.size:
        chosen = int(wrong[np.argsort(-lengths[wrong], kind="stable")][0])
    else:
        return None
    if no_box.size:
        return chosen, int(rng.choice(no_box))
    if correct.size and wrong.size:
        return chosen, int(rng.choice(wrong))
    others = wrong[wrong != chosen]
    if not correct.size and others.size:
        return chosen, int(rng.choice(others))
    return None


def dpo_vp_pairs(scores, lengths, *, seed: int = 0, max_chosen_length: int = 2048) -> np.ndarray:
    """Build pairs for a batch of prompts. scores, lengths: [P, n]. Returns int [M, 3] rows (prompt, chosen, rejected)."""
    scores, lengths = np.asarray(scores), np.asarray(lengths)
    if scores.ndim != 2 or lengths.shape != scores.shape:
        raise ValueError(f"scores and lengths must be [P, n] of equal shape; got {scores.shape} and {lengths.shape}")
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(scores.shape[0]):
        pair = dpo_vp_pair(scores[p], lengths[p], rng=rng, max_chosen_length=max_chosen_length)
        if pair is not None:
            rows.append((p, *pair))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def nsa_step_consensus(llm_ok: Array, prm_scores: Array, *, prm_threshold: float = 0.5) -> Array:
    """Consensus step correctness I = LLM-judge ok AND PRM >= threshold. [B, K] -> [B, K] bool.

    RECONSTRUCTED: threshold 0.5.
    """
    check_shape("llm_ok", llm_ok, (None, None), "[B, K]")
    check_shape("prm_scores", prm_scores, tuple(llm_ok.shape), "[B, K] like llm_ok")
    return jnp.asarray(llm_ok, bool) & (prm_scores >= prm_threshold)


def nsa_token_advantages(advantages: Array, step_id: Array, step_ok: Array, *, mu: float = 1.0) -> Array:
    """NSA: in negative responses, tokens of steps judged correct get +mu |A_i|; others keep A_i.

    advantages: [B]; step_id: [B, T] int (-1 outside any step); step_ok: [B, K] bool. -> [B, T].
    RECONSTRUCTED: the flipped value mu |A_i| with mu = 1.
    """
    b = advantages.shape[0]
    check_per_sequence("advantages", advantages, b)
    check_shape("step_id", step_id, (b, None), f"[B, T] with B={b}")
    check_shape("step_ok", step_ok, (b, None), f"[B, K] with B={b}")
    k = step_ok.shape[1]
    ok = jnp.take_along_axis(jnp.asarray(step_ok, bool), jnp.clip(step_id, 0, k - 1), axis=1) & (step_id >= 0)
    adv = jnp.broadcast_to(advantages[:, None], step_id.shape)
    flip = ok & (adv < 0)
    return jax.lax.stop_gradient(jnp.where(flip, mu * jnp.abs(adv), adv))


def bcpg_nsa_loss(logp: Array, behavior_logp: Array, mask: Array, rewards: Array, group_ids: Array,
                  step_id: Array, step_ok: Array, *, num_groups: int, clip: float = 0.2,
                  mu: float = 1.0) -> LossOutput:
    """BCPG-NSA (arXiv 2505.14403): offline clipped PG with negative-sample step augmentation.

    rho_t = exp(logp - behavior_logp) against the fixed data-generating policy (the clip keeps
    pi_theta near the data); A_i = GRPO advantage of rewards [B] within group_ids [B]; steps of
    negative responses judged correct get +mu |A_i| (see `nsa_token_advantages`); token-mean.
    logp, behavior_logp, mask, step_id: [B, T]; step_ok: [B, K]. RECONSTRUCTED objective.
    Metric: frac_flipped (share of negative-response tokens turned positive).
    """
    b, t = check_token_inputs(logp=logp, behavior_logp=behavior_logp, mask=mask, step_id=step_id)
    adv = grpo_advantages(rewards, group_ids, num_groups=num_groups)
    adv_t = nsa_token_advantages(adv, step_id, step_ok, mu=mu)
    ratio, _ = clamped_ratio(logp, jax.lax.stop_gradient(behavior_logp))
    loss, _, _ = clipped_token_loss(ratio, adv_t.astype(logp.dtype), clip_low=clip, clip_high=clip)
    maskf = mask.astype(logp.dtype)
    neg_tokens = maskf * (broadcast_advantages(adv, b, t) < 0)
    metrics = {"frac_flipped": masked_mean((adv_t > 0).astype(logp.dtype), neg_tokens)}
    return LossOutput(token_mean(loss, maskf), metrics)
