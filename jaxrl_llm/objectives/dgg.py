"""DGG, Dynamic Gradient Gating (arXiv 2605.19425): stop reusing a rollout batch when lm_head spikes.

Reusing a batch for K > 1 optimizer passes can collapse RLVR training; the collapse shows first as a
jump in the lm_head gradient energy g = ||grad W_lm_head||_F^2. DGG keeps a sliding window of the
statistic (the step increment dg by default), and at reuse index k > 1 with a full window gates the
step when z = (x - mean) / (std + 1e-12) > tau: the update is skipped (optimizer state untouched)
and the rest of the batch's reuse passes are skipped too.

RECONSTRUCTED (flags): energy = squared Frobenius norm; statistic "delta" (dg) or "energy" (g);
window 20 with population std; the increment is taken between consecutive accepted steps of the
same batch. `reuse_index` is 1-based: the first, on-policy pass of a batch is k = 1 and never gated.

Ratio statistics (ours, from the head-gradient bound on the divergence; `first_pass_ratio`):
"energy_ratio" g_k / g_1 and "dwd" (the disproportionate weight divergence of the proposed step,
`dwd_ratio`, at pass k over pass 1), both relative to the same batch's on-policy pass and z-scored
around 1 with the window's spread. `relative_update_norms` / `dwd_ratio` also serve as diagnostics.

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
    first_value: Array  # float32, the ratio statistics' raw value at this batch's first (on-policy) pass
    last_stat: Array  # float32, the statistic at the last pass, for logging


def dgg_init(window: int = 20) -> DGGState:
    """Empty gate state with a ring buffer of `window` entries."""
    if window < 2:
        raise ValueError(f"window must be >= 2; got {window}")
    # A fresh buffer per field: a donated state must not alias one scalar across fields.
    f32, i32 = jnp.float32, jnp.int32
    return DGGState(window=jnp.zeros(window, f32), count=jnp.zeros((), i32), prev_energy=jnp.zeros((), f32),
                    stopped=jnp.zeros((), bool), steps_used=jnp.zeros((), i32), last_energy=jnp.zeros((), f32),
                    last_z=jnp.zeros((), f32), last_gated=jnp.zeros((), bool), first_value=jnp.zeros((), f32),
                    last_stat=jnp.zeros((), f32))


def _leaf_matcher(rule: LeafRule) -> list[Callable[[str], bool]]:
    """Matchers tried in order; the first that matches any leaf wins."""
    if rule is None:
        return [lambda p: "lm_head" in p, lambda p: "embed" in p]
    if callable(rule):
        return [rule]
    names = [rule] if isinstance(rule, str) else list(rule)
    return [lambda p, names=names: any(n in p for n in names)]


def split_head_leaves(tree: Any, leaf_rule: LeafRule = None) -> tuple[list[Array], list[Array]]:
    """`(head leaves, other leaves)` of a params-shaped pytree: the head is the leaves whose path
    contains `lm_head`, else `embed` (tied head). `leaf_rule` overrides the choice: a predicate on
    the path string (`jax.tree_util.keystr`) or key names to look for. Raises if nothing matches."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]
    for match in _leaf_matcher(leaf_rule):
        head = [leaf for p, leaf in paths if match(p)]
        if head:
            return head, [leaf for p, leaf in paths if not match(p)]
    raise ValueError(f"grads has no leaf matching the head rule {leaf_rule!r}; paths: {[p for p, _ in paths][:8]}")


def head_gradient_leaves(grads: Any, leaf_rule: LeafRule = None) -> list[Array]:
    """The gradient leaves of the output head (see `split_head_leaves`)."""
    return split_head_leaves(grads, leaf_rule)[0]


def _frobenius(leaves: list[Array]) -> Array:
    return jnp.sqrt(sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves), jnp.float32(0.0)))


def relative_update_norms(updates: Any, params: Any, leaf_rule: LeafRule = None) -> tuple[Array, Array]:
    """`(head, inner)` relative weight change of one optimizer step, fp32 scalars.

    head = ||u_head||_F / ||W_head||_F; inner = the same over the other matrices (leaves with
    ndim >= 2: norm gains and biases are left out, their scale says nothing about a layer's
    change). `updates` and `params` have the same structure (an optax update and its params).
    """
    u_head, u_rest = split_head_leaves(updates, leaf_rule)
    w_head, w_rest = split_head_leaves(params, leaf_rule)
    u_inner = [u for u, w in zip(u_rest, w_rest) if w.ndim >= 2]
    w_inner = [w for w in w_rest if w.ndim >= 2]
    head = _frobenius(u_head) / (_frobenius(w_head) + 1e-12)
    inner = _frobenius(u_inner) / (_frobenius(w_inner) + 1e-12)
    return head, inner


def dwd_ratio(updates: Any, params: Any, leaf_rule: LeafRule = None) -> Array:
    """Disproportionate weight divergence of one step: head relative change / inner relative change."""
    head, inner = relative_update_norms(updates, params, leaf_rule)
    return head / (inner + 1e-12)


def head_gradient_energy(grads: Any, leaf_rule: LeafRule = None) -> Array:
    """g = sum of squared entries of the head's gradient leaves (squared Frobenius norm), fp32."""
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in head_gradient_leaves(grads, leaf_rule))


# Statistics: "delta" (g_k - g_{k-1}) and "energy" (g_k), z-scored against a window of their
# accepted values across batches (energy: every pass, delta: k > 1), and two ratios to the batch's
# own first, on-policy pass (reset every batch): "energy_ratio" g_k / g_1 and "dwd" (head / inner
# relative weight change at k over k = 1). A ratio's z is (x - 1) / std(window): centred on the
# on-policy value, scaled by the spread of accepted ratios at k > 1 across batches.
STATISTICS = ("delta", "energy", "energy_ratio", "dwd")
RATIO_STATISTICS = ("energy_ratio", "dwd")


def first_pass_ratio(value: Array, first_value: Array) -> Array:
    """value / first_value, the statistic relative to the batch's on-policy pass (1 when equal).

    Why "energy_ratio" tracks the divergence: the head gradient of a PPO-clip token is
    A r (e_y - pi) h^T with r = pi / pi_old; at pass 1 r = 1. Tokens the clip lets through are
    weighted by r, so g_k / g_1 ~ E_w[r^2] = 1 + chi^2_w (a gradient-weighted Pearson divergence
    from the rollout policy). Healthy reuse consumes the gradient (clipped tokens drop out, the
    ratio falls below 1); a ratio above 1 means unclipped tokens (negative advantage, r > 1) grow.
    A zero first value (no gradient, or a zero step at learning rate 0) gives the neutral ratio 1.
    """
    safe = jnp.where(first_value > 0, first_value, 1.0)
    return jnp.where(first_value > 0, value / safe, 1.0)


def raw_statistic(statistic: str, energy: Array, *, proposed: Any = None, params: Any = None,
                  leaf_rule: LeafRule = None) -> Array:
    """The per-pass quantity a statistic is built from: the head energy, or for "dwd" the
    `dwd_ratio` of the `proposed` update at `params` (both required then)."""
    if statistic != "dwd":
        return energy
    if proposed is None or params is None:
        raise ValueError("statistic 'dwd' reads the proposed update and the params: pass proposed= and params=")
    return dwd_ratio(proposed, params, leaf_rule)


def dgg_gate(grads: Any, gate_state: DGGState, reuse_index: Array | int, *, tau: float = 0.5,
             window: int | None = None, statistic: str = "delta", leaf_rule: LeafRule = None,
             proposed: Any = None, params: Any = None) -> tuple[Array, DGGState, dict[str, Array]]:
    """Decide whether to skip this update. Returns `(gated bool, new_state, metrics)`.

    grads: the gradient pytree; reuse_index: 1-based pass over the current rollout batch (traced
    values are fine); `window` (optional) must equal the state's buffer length. `gated` is True when
    the z-score gate fires now or fired earlier on this batch (reuse stopped). On a gated step the
    window and previous energy are kept; otherwise the statistic is pushed into the window (every pass
    for "energy", passes k > 1 for the others).

    statistic: one of `STATISTICS`; the ratios ("energy_ratio", "dwd") divide by the value at
    this batch's first pass (`first_pass_ratio`); "dwd" needs the `proposed` update and `params`.
    Metrics: dgg/lmhead_energy, dgg/delta, dgg/stat, dgg/z, dgg/gated, dgg/window_full,
    dgg/reuse_steps_used.
    """
    n = gate_state.window.shape[0]
    if window is not None and window != n:
        raise ValueError(f"window={window} does not match gate_state.window of length {n}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {list(STATISTICS)}; got {statistic!r}")
    k = jnp.asarray(reuse_index, jnp.int32)
    new_batch = k <= 1
    energy = head_gradient_energy(grads, leaf_rule)
    delta = energy - gate_state.prev_energy
    raw = raw_statistic(statistic, energy, proposed=proposed, params=params, leaf_rule=leaf_rule)
    first_value = jnp.where(new_batch, raw, gate_state.first_value)
    if statistic == "energy":
        x, feeds = energy, jnp.bool_(True)
    elif statistic == "delta":
        x, feeds = delta, ~new_batch  # no increment on the first pass of a batch
    else:
        x, feeds = jnp.where(new_batch, 1.0, first_pass_ratio(raw, first_value)), ~new_batch
    mean = jnp.mean(gate_state.window)
    std = jnp.sqrt(jnp.mean(jnp.square(gate_state.window - mean)))
    # A ratio is centred on its on-policy value 1, not on the window's mean: a window of accepted
    # ratios follows a run that degrades step by step (and a mean-centred z fires at a fixed rate
    # whatever happens); the window only sets the scale of the batch-to-batch noise.
    centre = 1.0 if statistic in RATIO_STATISTICS else mean
    z = (x - centre) / (std + 1e-12)
    full = gate_state.count >= n
    stopped = jnp.where(new_batch, False, gate_state.stopped)
    fires = full & ~new_batch & (z > tau)
    gated = stopped | fires
    push = feeds & ~gated
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
        last_z=jnp.where(full & (feeds | ~new_batch), z, 0.0).astype(jnp.float32),
        last_gated=gated,
        first_value=first_value.astype(jnp.float32),
        last_stat=x.astype(jnp.float32),
    )
    metrics = {"dgg/lmhead_energy": new_state.last_energy, "dgg/delta": jnp.where(new_batch, 0.0, delta),
               "dgg/stat": new_state.last_stat, "dgg/z": new_state.last_z, "dgg/gated": gated.astype(jnp.float32),
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
    first_value: `[M]` the ratio statistics' raw value at the first pass over each minibatch of this
      batch ("energy_ratio", "dwd" compare minibatch m at pass k with itself at pass 1).
    """

    inner: Any
    gate: DGGState
    prev_energy: Array
    skipped: Array
    first_value: Array


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
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {list(STATISTICS)}; got {statistic!r}")

    def init(params):
        return DGGWrappedState(optimizer.init(params), dgg_init(window), jnp.zeros((num_minibatches,), jnp.float32),
                               jnp.zeros((), bool), jnp.zeros((num_minibatches,), jnp.float32))

    def update(updates, state, params=None, *, reuse_index, minibatch_index=0, skip=False, **extra_args):
        del extra_args
        m = jnp.asarray(minibatch_index, jnp.int32)
        gate_in = state.gate._replace(prev_energy=state.prev_energy[m], first_value=state.first_value[m])
        # The inner step is computed first: "dwd" tests the update it proposes, before it is applied.
        proposed, proposed_inner = optimizer.update(updates, state.inner, params)
        gated, gate, _ = dgg_gate(updates, gate_in, reuse_index, tau=tau, statistic=statistic, leaf_rule=leaf_rule,
                                  proposed=proposed, params=params)
        skipped = gated | jnp.asarray(skip, bool)
        new_updates = _select(skipped, jax.tree.map(jnp.zeros_like, proposed), proposed)
        inner = _select(skipped, state.inner, proposed_inner)
        prev = state.prev_energy.at[m].set(gate.prev_energy)
        first = state.first_value.at[m].set(gate.first_value)
        return new_updates, DGGWrappedState(inner, gate, prev, skipped, first)

    return GatedTransformation(init, update)
