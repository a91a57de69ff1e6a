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
from jax.sharding import Mesh, NamedSharding

from jaxrl_llm.data.pipeline import BATCH_KEYS
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.rules import logical_to_sharding, replicated
from jaxrl_llm.train.loss import masked_next_token_loss, next_token_weights
from jaxrl_llm.train.state import TrainState

Batch = Mapping[str, Any]


def batch_sharding(mesh: Mesh, shape: tuple[int, int]) -> NamedSharding:
    """`[B, T]` arrays split over the `batch` rule (data x fsdp), T replicated."""
    return logical_to_sharding(("batch", None), mesh, shape=shape)


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's rows of a host batch (`{key: [B, T]}`) on `mesh` as global arrays."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}; expected {BATCH_KEYS}")
    out = {}
    for key in BATCH_KEYS:
        local = np.asarray(batch[key], np.int32)
        if local.ndim != 2:
            raise ValueError(f"batch[{key!r}] must be [B, T]; got {local.shape}")
        global_shape = (local.shape[0] * jax.process_count(), local.shape[1])
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, global_shape), local, global_shape)
    return out


def split_micro_batches(batch: Batch, num_micro_batches: int) -> dict[str, jax.Array]:
    """`{key: [B, T]}` -> `{key: [M, B / M, T]}`; micro-batch m holds rows m, m + M, m + 2M, ...

    Strided rows keep each micro-batch spread over the batch-sharded devices.
    """
    b = batch["tokens"].shape[0]
    if num_micro_batches < 1 or b % num_micro_batches:
        raise ValueError(f"train.micro_batches={num_micro_batches} must divide the batch size {b}")
    return {
        k: jnp.swapaxes(v.reshape(b // num_micro_batches, num_micro_batches, *v.shape[1:]), 0, 1)
        for k, v in batch.items()
    }


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
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    rest = {} if rest is None else rest
    rep = replicated(mesh)

    def step(state: TrainState, rest: Any, batch: Batch):
        denom = jnp.maximum(jnp.sum(next_token_weights(batch["loss_mask"], batch["segment_ids"])), 1.0)
        micro = split_micro_batches(batch, num_micro_batches)
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

        def accumulate(carry, mb):
            grads, loss, count, correct = carry
            # Slicing the scanned axis can lose the batch layout; pin it back to the batch rule.
            mb = {k: jax.lax.with_sharding_constraint(v, batch_sharding(mesh, v.shape)) for k, v in mb.items()}
            with activation_mesh(mesh):
                (l, (c, k)), g = grad_fn(state.params, rest, mb, denom)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, loss + l, count + c, correct + k), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, loss, count, correct), _ = jax.lax.scan(accumulate, init, micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            step=state.step + 1,
        )
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

