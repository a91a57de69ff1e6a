"""AutoThink reward shaping (arXiv 2505.10832): rewards that teach an R1-style model when to think.

Stage 1 balances think / no-think modes over the batch, stage 2 plain accuracy, stage 3 prunes
length within each prompt group. The degenerate-repetition check works on text and runs on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.core import check_per_sequence
from jaxrl_llm.objectives.groups import check_groups, check_rewards_1d

Array = jax.Array


def autothink_base_reward(correct: Array, think: Array, format_ok: Array) -> Array:
    """think & correct +1, think & wrong 0, no-think & correct +2, no-think & wrong -1, format error 0. [B]."""
    b = check_rewards_1d(correct, "correct")
    check_per_sequence("think", think, b)
    check_per_sequence("format_ok", format_ok, b)
    correct, think, format_ok = (jnp.asarray(x, bool) for x in (correct, think, format_ok))
    reward = jnp.where(think, jnp.where(correct, 1.0, 0.0), jnp.where(correct, 2.0, -1.0))
    return jnp.where(format_ok, reward, 0.0)


def has_degenerate_repetition(text: str, *, min_repeats: int = 10, max_ngram: int = 30,
                              max_word_chars: int = 120) -> bool:
    """True if `text` repeats some n-word chunk >= min_repeats times in a row or has a huge word.

    Chunks are fixed, non-overlapping n-word windows starting at the first word (n <= max_ngram).
    """
    words = text.split()
    if any(len(word) >= max_word_chars for word in words):
        return True
    for n in range(1, max_ngram + 1):
        chunks = [tuple(words[i:i + n]) for i in range(0, len(words) - n + 1, n)]
        run = 1
        for prev, cur in zip(chunks, chunks[1:]):
            run = run + 1 if cur == prev else 1
            if run >= min_repeats:
                return True
    return False


def autothink_degeneration_penalty(rewards: Array, degenerate: Array, *, penalty: float = -2.0) -> Array:
    """Replace negative rewards of degenerate (repetitive) responses by `penalty`. [B] -> [B]."""
    b = check_rewards_1d(rewards)
    check_per_sequence("degenerate", degenerate, b)
    return jnp.where((rewards < 0) & jnp.asarray(degenerate, bool), penalty, rewards)


def autothink_batch_balance(rewards: Array, correct: Array, think: Array, *,
                            balance_rate: float = 0.5) -> tuple[Array, dict[str, Array]]:
    """Stage 1: pull the over-represented mode's rewards toward penalising targets.

    p = think rate over the batch. If p > b: lam = clip(2 (p - b), 0, 1) and think samples move to
    (1 - lam) r + lam target with target 0 (correct) / -1 (wrong). If the no-think rate > b the
    same with targets +1 / -2 for no-think samples. rewards, correct, think: [B].
    Returns `(shaped [B], metrics)`: think_rate, balance_lambda.
    """
    b = check_rewards_1d(rewards)
    check_per_sequence("correct", correct, b)
    check_per_sequence("think", think, b)
    correct, think = jnp.asarray(correct, bool), jnp.asarray(think, bool)
    p_think = jnp.mean(think.astype(jnp.float32))
    lam_think = jnp.clip(2.0 * (p_think - balance_rate), 0.0, 1.0)
    lam_free = jnp.clip(2.0 * ((1.0 - p_think) - balance_rate), 0.0, 1.0)
    lam = jnp.where(think, lam_think, lam_free)
    target = jnp.where(think, jnp.where(correct, 0.0, -1.0), jnp.where(correct, 1.0, -2.0))
    shaped = (1.0 - lam) * rewards + lam * target
    return shaped, {"think_rate": p_think, "balance_lambda": jnp.maximum(lam_think, lam_free)}


def autothink_length_bonus(lengths: Array, correct: Array, group_ids: Array, *, num_groups: int,
                           alpha: float = 0.05, beta: float = 0.05) -> Array:
    """Stage 3 length shaping within each (prompt, correctness) subgroup of >= 2 samples. -> [B].

    z = (L - mean L) / max(std_unbiased L, 1e-6); correct: exp(-alpha z) - 1 (shorter is better);
    wrong: 1 - exp(-beta z). Add the result to the reward.
    """
    b = check_rewards_1d(lengths, "lengths")
    check_per_sequence("correct", correct, b)
    check_groups(group_ids, b, num_groups, allow_singleton=True)
    correct = jnp.asarray(correct, bool)
    sub = group_ids * 2 + correct.astype(jnp.int32)
    lengths = jnp.asarray(lengths, jnp.float32)
    ones = jnp.ones_like(lengths)
    count = jax.ops.segment_sum(ones, sub, num_segments=2 * num_groups)[sub]
    mean = (jax.ops.segment_sum(lengths, sub, num_segments=2 * num_groups) / jnp.maximum(
        jax.ops.segment_sum(ones, sub, num_segments=2 * num_groups), 1))[sub]
    var = jax.ops.segment_sum((lengths - mean) ** 2, sub, num_segments=2 * num_groups)[sub] / jnp.maximum(count - 1, 1)
    z = (lengths - mean) / jnp.maximum(jnp.sqrt(var), 1e-6)
    bonus = jnp.where(correct, jnp.exp(-alpha * z) - 1.0, 1.0 - jnp.exp(-beta * z))
    return jnp.where(count >= 2, bonus, 0.0)
