"""DGG, Dynamic Gradient Gating (arXiv 2605.19425): stop reusing a rollout batch when lm_head spikes.

Reusing a batch for K > 1 optimizer passes can collapse RLVR training; the collapse shows first as a
jump in the lm_head gradient energy g = ||grad W_lm_head||_F^2. DGG keeps a sliding window of the
statistic (the step increment dg by default), and at reuse index k > 1 with a full window gates the
step when z = (x - mean) / (std + 1e-12) > tau: the update is skipped (optimizer state untouched)
and the rest of the batch's reuse passes are skipped too.

RECONSTRUCTED (flags): energy = squared Frobenius norm; statistic "delta" (dg) or "energy" (g);
window 20 with population std; the increment is taken between consecutive accepted steps of the
same batch. `reuse_index` is 1-based: the first, on-policy pass of a batch is k = 1 and never gated.

Everything is a fixed-shape pytree and branch-free, so it runs inside a jitted `lax.scan`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
LeafRule = Callable[[str], bool] | Sequence[str] | None


class DGGState(NamedTuple):
    """Gate statistics: a ring buffer of the last N accepted statistics and the running context."""

    window: Array  # [N] float32 ring buffer
    count: Array  # int32, statistics pushed so far (window full once count >= N)
    prev_energy: Array  # float32, lm_head energy at the previous accepted step of this batch
    stopped: Array  # bool, this batch's reuse was stopped by a gate
    steps_used: Array  # int32, accepted updates on the current batch
    last_energy: Array  # float32, for logging
    last_z: Array  # float32, for logging
    last_gated: Array  # bool, for logging


def dgg_init(window: int = 20) -> DGGState:
    """Empty gate state with a ring buffer of `window` entries."""
    if window < 2:
        raise ValueError(f"window must be >= 2; got {window}")
    # A fresh buffer per field: a donated state must not alias one scalar across fields.
    f32, i32 = jnp.float32, jnp.int32
    return DGGState(window=jnp.zeros(window, f32), count=jnp.zeros((), i32), prev_energy=jnp.zeros((), f32),
                    stopped=jnp.zeros((), bool), steps_used=jnp.zeros((), i32), last_energy=jnp.zeros((), f32),
                    last_z=jnp.zeros((), f32), last_gated=jnp.zeros((), bool))


def _leaf_matcher(rule: LeafRule) -> list[Callable[[str], bool]]:
    """Matchers tried in order; the first that matches any leaf wins."""
    if rule is None:
        return [lambda p: "lm_head" in p, lambda p: "embed" in p]
    if callable(rule):
        return [rule]
    names = [rule] if isinstance(rule, str) else list(rule)
    return [lambda p, names=names: any(n in p for n in names)]


def head_gradient_leaves(grads: Any, leaf_rule: LeafRule = None) -> list[Array]:
    """The gradient leaves of the output head: paths containing `lm_head`, else `embed` (tied head).

    `leaf_rule` overrides the choice: a predicate on the path string (`jax.tree_util.keystr`) or
    key names to look for. Raises if nothing matches.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    paths = [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]
    for match in _leaf_matcher(leaf_rule):
        leaves = [leaf for p, leaf in paths if match(p)]
        if leaves:
            return leaves
    raise ValueError(f"grads has no leaf matching the head rule {leaf_rule!r}; paths: {[p for p, _ in paths][:8]}")


def head_gradient_energy(grads: Any, leaf_rule: LeafRule = None) -> Array:
    """g = sum of squared entries of the head's gradient leaves (squared Frobenius norm), fp32."""
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in head_gradient_leaves(grads, leaf_rule))


def dgg_gate(grads: Any, gate_state: DGGState, reuse_index: Array | int, *, tau: float = 0.5,
             window: int | None = None, statistic: str = "delta",
             leaf_rule: LeafRule = None) -> tuple[Array, DGGState, dict[str, Array]]:
    """Decide whether to skip this update. Returns `(gated bool, new_state, metrics)`.

    grads: the gradient pytree; reuse_index: 1-based pass over the current rollout batch (traced
    values are fine); `window` (optional) must equal the state's buffer length. `gated` is True when
    the z-score gate fires now or fired earlier on this batch (reuse stopped). On a gated step the
    window and previous energy are kept; otherwise the statistic is pushed into the window.
    Metrics: dgg/lmhead_energy, dgg/delta, dgg/z, dgg/gated, dgg/window_full, dgg/reuse_steps_used.
    """
    n = gate_state.window.shape[0]
    if window is not None and window != n:
        raise ValueError(f"window={window} does not match gate_state.window of length {n}")
    if statistic not in ("delta", "energy"):
        raise ValueError(f"statistic must be 'delta' or 'energy'; got {statistic!r}")
    k = jnp.asarray(reuse_index, jnp.int32)
    new_batch = k <= 1
    energy = head_gradient_energy(grads, leaf_rule)
    delta = energy - gate_state.prev_energy
    if statistic == "delta":
        x, has_stat = delta, ~new_batch  # no increment on the first pass of a batch
    else:
        x, has_stat = energy, jnp.bool_(True)
    mean = jnp.mean(gate_state.window)
    std = jnp.sqrt(jnp.mean(jnp.square(gate_state.window - mean)))
    z = (x - mean) / (std + 1e-12)
    full = gate_state.count >= n
    stopped = jnp.where(new_batch, False, gate_state.stopped)
    fires = full & ~new_batch & has_stat & (z > tau)
    gated = stopped | fires
    push = has_stat & ~gated
    slot = jnp.mod(gate_state.count, n)
    window_buf = jnp.where(push, gate_state.window.at[slot].set(x.astype(jnp.float32)), gate_state.window)
    steps_before = jnp.where(new_batch, 0, gate_state.steps_used)
    new_state = DGGState(
        window=window_buf,
        count=gate_state.count + push.astype(jnp.int32),
        prev_energy=jnp.where(gated, gate_state.prev_energy, energy).astype(jnp.float32),
        stopped=gated,
        steps_used=steps_before + (~gated).astype(jnp.int32),
        last_energy=energy.astype(jnp.float32),
        last_z=jnp.where(full & has_stat, z, 0.0).astype(jnp.float32),
        last_gated=gated,
    )
    metrics = {"dgg/lmhead_energy": new_state.last_energy, "dgg/delta": jnp.where(new_batch, 0.0, delta),
               "dgg/z": new_state.last_z, "dgg/gated": gated.astype(jnp.float32),
               "dgg/window_full": full.astype(jnp.float32),
               "dgg/reuse_steps_used": new_state.steps_used.astype(jnp.float32)}
    return gated, new_state, metrics


class GatedTransformation(NamedTuple):
    """An optax-compatible `(init, update)` pair whose `update` takes extra keyword arguments."""

    init: Callable[..., Any]
    update: Callable[..., Any]


def _select(gated: Array, old: Any, new: Any) -> Any:
    return jax.tree.map(lambda o, n: jnp.where(gated, o, n), old, new)


def gated_update(optimizer: Any) -> GatedTransformation:
    """Wrap an optax-style optimizer: `update(grads, state, params=None, *, gated)`.

    When `gated` is True the returned updates are zeros and the returned state is the input state,
    bit for bit (Adam moments and step count untouched), like `optax.apply_if_finite`.
    """

    def update(updates, state, params=None, *, gated):
        gated = jnp.asarray(gated, bool)
        new_updates, new_state = optimizer.update(updates, state, params)
        zeros = jax.tree.map(jnp.zeros_like, new_updates)
        return _select(gated, zeros, new_updates), _select(gated, state, new_state)

    return GatedTransformation(optimizer.init, update)


class DGGWrappedState(NamedTuple):
    """State of `dgg_wrapped`: the inner optimizer state and the gate statistics.

    inner: the wrapped optimizer's state (bit-identical across a skipped step).
    gate: the window and running context (`DGGState`).
    prev_energy: `[M]` head-gradient energy at the last accepted pass over each of the M minibatches,
      so the increment at pass k compares minibatch m with itself at pass k - 1.
    skipped: bool, the last update was skipped (gate fired, reuse stopped, or `skip` was set).
    """

    inner: Any
    gate: DGGState
    prev_energy: Array
    skipped: Array


def dgg_wrapped(optimizer: Any, *, tau: float = 0.5, window: int = 20, statistic: str = "delta",
                num_minibatches: int = 1, leaf_rule: LeafRule = None):
    """An optax-shaped `(init, update)` pair with the DGG gate inside, like `optax.apply_if_finite`.

    `update(grads, state, params=None, *, reuse_index, minibatch_index=0, skip=False)`: the gate
    reads the head gradient from `grads`; when it fires (or reuse of this batch was already
    stopped, or `skip` is True, e.g. for a non-finite gradient) the updates are zeros and
    `state.inner` is returned bit for bit. All statistics live in the returned state
    (`state.gate.last_z`, `.last_gated`, `.stopped`; `state.skipped`), so the gate runs inside a
    jitted scan over reuse passes and minibatches with no host round-trip.

    `optax.GradientTransformationExtraArgs(*dgg_wrapped(...))` makes it an optax transformation
    (`jaxrl_llm.train.optim.dgg_optimizer` does); this module imports only JAX.

    Example:
        tx = dgg_wrapped(optax.adamw(1e-4), tau=1.0, window=20, num_minibatches=4)
        state = tx.init(params)
        updates, state = tx.update(grads, state, params, reuse_index=k, minibatch_index=m)
    """
    if num_minibatches < 1:
        raise ValueError(f"num_minibatches must be >= 1; got {num_minibatches}")

    def init(params):
        return DGGWrappedState(optimizer.init(params), dgg_init(window), jnp.zeros((num_minibatches,), jnp.float32),
                               jnp.zeros((), bool))

    def update(updates, state, params=None, *, reuse_index, minibatch_index=0, skip=False, **extra_args):
        del extra_args
        m = jnp.asarray(minibatch_index, jnp.int32)
        gate_in = state.gate._replace(prev_energy=state.prev_energy[m])
        gated, gate, _ = dgg_gate(updates, gate_in, reuse_index, tau=tau, statistic=statistic, leaf_rule=leaf_rule)
        skipped = gated | jnp.asarray(skip, bool)
        new_updates, inner = gated_update(optimizer).update(updates, state.inner, params, gated=skipped)
        prev = state.prev_energy.at[m].set(gate.prev_energy)
        return new_updates, DGGWrappedState(inner, gate, prev, skipped)

    return GatedTransformation(init, update)
