"""Optimizer schedule/clipping/decay mask and the masked next-token loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.train.loss import masked_next_token_loss, next_token_weights
from jaxrl_llm.train.optim import make_optimizer, make_schedule

OPT = {"learning_rate": 1e-2, "warmup_steps": 10, "decay_steps": 110, "end_learning_rate_ratio": 0.1}


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_the_end_ratio():
    sched = make_schedule(OPT, total_steps=999)
    assert float(sched(0)) == 0.0
    assert math.isclose(float(sched(5)), 5e-3, rel_tol=1e-6)
    assert math.isclose(float(sched(10)), 1e-2, rel_tol=1e-6)
    # Halfway through the 100 cosine steps: end + (peak - end) * (1 + cos(pi/2)) / 2.
    assert math.isclose(float(sched(60)), 1e-3 + 9e-3 * 0.5, rel_tol=1e-5)
    assert math.isclose(float(sched(110)), 1e-3, rel_tol=1e-5)


def test_decay_steps_zero_means_the_run_length():
    sched = make_schedule({**OPT, "decay_steps": 0}, total_steps=50)
    assert math.isclose(float(sched(50)), 1e-3, rel_tol=1e-5)


def test_bad_learning_rate_is_named():
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        make_schedule({**OPT, "learning_rate": 0.0}, 10)


def test_gradients_are_clipped_to_the_global_norm_before_adam():
    # eps=1 makes Adam's first step depend on the gradient scale: update = -lr * g / (|g| + 1).
    cfg = {**OPT, "warmup_steps": 0, "learning_rate": 1.0, "eps": 1.0, "weight_decay": 0.0}
    params = {"w": jnp.zeros((2, 2))}
    grads = {"w": jnp.full((2, 2), 10.0)}  # global norm 20 -> clipped to 1: each entry 0.5
    clipped_tx = make_optimizer({**cfg, "grad_clip_norm": 1.0}, 100)
    updates, _ = clipped_tx.update(grads, clipped_tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.5 / 1.5, rtol=1e-5)
    raw_tx = make_optimizer({**cfg, "grad_clip_norm": 0.0}, 100)
    updates, _ = raw_tx.update(grads, raw_tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -10.0 / 11.0, rtol=1e-5)


def test_weight_decay_skips_vectors():
    # Zero gradients: AdamW's update is then only -lr * wd * param, on matrices only.
    cfg = {"learning_rate": 1.0, "warmup_steps": 0, "decay_steps": 10, "end_learning_rate_ratio": 1.0,
           "weight_decay": 0.5, "grad_clip_norm": 0.0}
    tx = make_optimizer(cfg, 10)
    params = {"matrix": jnp.ones((2, 3)), "scale": jnp.ones((3,))}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["matrix"]), -0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["scale"]), 0.0)


def reference_loss(logits, tokens, mask, seg):
    """float64 loop: sum of -log softmax(logits[b, t-1])[tokens[b, t]] over counted targets."""
    logits = np.asarray(logits, np.float64)
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[b, t] and seg[b, t] == seg[b, t - 1] and seg[b, t] > 0:
                row = logits[b, t - 1]
                lse = np.log(np.exp(row - row.max()).sum()) + row.max()
                total += lse - row[tokens[b, t]]
                count += 1
    return total, count


def test_masked_loss_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, size=(3, 6)).astype(np.int32)
    mask = (rng.random((3, 6)) < 0.7).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 1, 2, 2, 2, 2]], np.int32)
    loss, count, _ = masked_next_token_loss(jnp.asarray(logits), tokens, mask, seg)
    ref, ref_count = reference_loss(logits, tokens, mask, seg)
    assert float(count) == ref_count
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_unsupervised_tokens_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], np.int32)
    seg = np.ones((2, 5), np.int32)
    base = masked_next_token_loss(jnp.asarray(logits), tokens, mask, seg)
    logits2 = logits.copy()
    logits2[0, 3:] += 100.0  # predicts tokens[0, 4], which is unsupervised
    tokens2 = tokens.copy()
    tokens2[1, 4] = (tokens[1, 4] + 1) % 7
    changed = masked_next_token_loss(jnp.asarray(logits2), tokens2, mask, seg)
    np.testing.assert_allclose(float(changed[0]), float(base[0]), rtol=1e-6)


def test_no_target_crosses_a_segment_boundary_or_enters_padding():
    w = next_token_weights(np.ones((1, 6), np.int32), np.array([[1, 1, 2, 2, 0, 0]], np.int32))
    np.testing.assert_array_equal(np.asarray(w), [[1, 0, 1, 0, 0]])


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\]"):
        masked_next_token_loss(jnp.zeros((2, 5)), np.zeros((2, 5), np.int32), np.ones((2, 5)), np.ones((2, 5)))
