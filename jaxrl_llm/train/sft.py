"""The jitted SFT update: micro-batch gradient accumulation and a guarded optimizer step.

`make_sft_step(...)` returns `sft_step(state, batch) -> (state, metrics)`, compiled once with the
state's shardings and donated input state. The batch `[B, T]` is split into `M` micro-batches of
`B / M` rows that a `lax.scan` visits in turn, summing token-loss gradients; every micro-batch is
normalised by the supervised-token count of the *whole* batch, so the accumulated gradient equals
the full-batch gradient. If the loss or the gradient norm is not finite the parameters and
optimizer state are kept unchanged (the trainer then stops with the step number).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxrl_llm.data.batch import TokenBatch
from jaxrl_llm.models.lora import join_trainable, split_trainable, trainable_value_and_grad
from jaxrl_llm.objectives.dgg import gated_update
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.batch import constrain_rows, place_rows, split_strided
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.rules import replicated
from jaxrl_llm.train.loss import masked_next_token_loss, next_token_weights
from jaxrl_llm.train.state import TrainState

Batch = Mapping[str, Any]


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's rows of a host batch (`{key: [B, T]}`) on `mesh` as global arrays."""
    tokens = TokenBatch.from_mapping(batch)
    for key, value in tokens.token_arrays().items():
        if np.ndim(value) != 2:
            raise ValueError(f"batch[{key!r}] must be [B, T]; got {np.shape(value)}")
    local = {k: np.asarray(v, np.int32) for k, v in tokens.token_arrays().items()}
    return place_rows(local, mesh, process_local=True)


def split_micro_batches(batch: Batch, num_micro_batches: int) -> dict[str, jax.Array]:
    """`{key: [B, T]}` -> `{key: [M, B / M, T]}`; micro-batch m holds rows m, m + M, m + 2M, ..."""
    return split_strided(dict(batch), num_micro_batches, field="train.micro_batches")


def make_sft_loss(parts: ModelParts) -> Callable[..., tuple[jax.Array, tuple[jax.Array, jax.Array]]]:
    """`loss(params, rest, micro_batch, denom) -> (loss_sum / denom, (num_tokens, num_correct))`."""

    def loss_fn(params, rest, mb, denom):
        model = parts.merge(params, rest)
        logits, _ = model(mb["tokens"], mb["positions"], segment_ids=mb["segment_ids"])
        loss_sum, count, correct = masked_next_token_loss(logits, mb["tokens"], mb["loss_mask"], mb["segment_ids"])
        return loss_sum / denom, (count, correct)

    return loss_fn


def make_sft_step(
    parts: ModelParts,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_shardings: TrainState,
    mesh: Mesh,
    *,
    rest: Any = None,
    num_micro_batches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the jitted `sft_step(state, batch) -> (new_state, metrics)`; `state` is donated.

    `batch`: `{tokens, positions, segment_ids, loss_mask}` each `[B, T]` int32 (host numpy or
    global device arrays). `metrics`: scalars `loss` (mean per supervised token), `token_accuracy`,
    `grad_norm`, `learning_rate`, `supervised_tokens`, `finite` (1.0 when the update was applied).
    """
    loss_fn = make_sft_loss(parts)
    # Gradients of the trainable view only (with LoRA the adapters; models/lora.py): the frozen rest
    # gets no gradient, accumulator or optimizer state.
    grad_fn = trainable_value_and_grad(loss_fn)
    guarded = gated_update(optimizer)
    rest = {} if rest is None else rest
    rep = replicated(mesh)

    def step(state: TrainState, rest: Any, batch: Batch):
        denom = jnp.maximum(jnp.sum(next_token_weights(batch["loss_mask"], batch["segment_ids"])), 1.0)
        micro = split_micro_batches(batch, num_micro_batches)
        params, frozen = split_trainable(state.params)
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

        def accumulate(carry, mb):
            grads, loss, count, correct = carry
            # Slicing the scanned axis can lose the batch layout; pin it back to the batch rule.
            mb = constrain_rows(mb, mesh)
            with activation_mesh(mesh):
                (l, (c, k)), g = grad_fn(state.params, rest, mb, denom)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, loss + l, count + c, correct + k), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, loss, count, correct), _ = jax.lax.scan(accumulate, init, micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # The one non-finite guard (objectives/dgg.py): zero updates and the old optimizer state.
        updates, new_opt = guarded.update(grads, state.opt_state, params, gated=~finite)
        new_params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), optax.apply_updates(params, updates), params)
        new_params = join_trainable(new_params, frozen)
        new_state = state.replace(params=new_params, opt_state=new_opt, step=state.step + 1)
        metrics = {
            "loss": loss,
            "token_accuracy": correct / jnp.maximum(count, 1.0),
            "grad_norm": grad_norm,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "supervised_tokens": count,
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, rest_shardings, None),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )

    def sft_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if not isinstance(next(iter(batch.values())), jax.Array):
            batch = shard_batch(batch, mesh)
        return jitted(state, rest, batch)

    sft_step.jitted = jitted  # type: ignore[attr-defined]
    return sft_step

