"""Optimizer from config: AdamW with linear warmup + cosine decay and global-norm clipping.

Config fields (`optimizer` section): `learning_rate`, `warmup_steps`, `decay_steps` (0: use
`train.steps`), `end_learning_rate_ratio`, `b1`, `b2`, `eps`, `weight_decay`, `grad_clip_norm`
(0 disables clipping). Weight decay skips vectors and scalars (norm scales, biases): decaying a
norm gain towards zero only fights the normalisation.

Dtypes: `state_dtype` ("" = the parameters' dtype; "float32") is the dtype the moments are kept
and computed in (`upcast_state`); `master_weights` (bool) keeps a float32 copy of the parameters
in the optimizer state that the updates are applied to, the stored parameters being its rounding
(`master_weights`): with bfloat16 parameters an update below half a bfloat16 spacing is otherwise
lost. Master weights imply float32 moments (the optimizer steps the float32 copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrl_llm.objectives.dgg import dgg_wrapped


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine to the end ratio."""
    peak = float(cfg["learning_rate"])
    warmup = int(cfg.get("warmup_steps", 0))
    decay = int(cfg.get("decay_steps", 0)) or int(total_steps)
    if peak <= 0:
        raise ValueError(f"optimizer.learning_rate must be > 0; got {peak}")
    if warmup < 0 or decay < 1:
        raise ValueError(f"optimizer.warmup_steps must be >= 0 and decay steps >= 1; got {warmup}, {decay}")
    decay = max(decay, warmup + 1)
    end_ratio = float(cfg.get("end_learning_rate_ratio", 0.1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=decay,
        end_value=peak * end_ratio,
    )


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


STATE_DTYPES = ("", "float32")


def optimizer_dtypes(cfg: Mapping[str, Any], where: str = "optimizer") -> tuple[str, bool]:
    """`(state_dtype, master_weights)` of an optimizer section; `ValueError` naming `where.<field>` when invalid."""
    state_dtype = cfg.get("state_dtype", "") or ""
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"{where}.state_dtype must be one of {STATE_DTYPES} ('' = the parameters' dtype); "
                         f"got {state_dtype!r}")
    master = cfg.get("master_weights", False)
    if not isinstance(master, bool):
        raise ValueError(f"{where}.master_weights must be true or false; got {master!r}")
    return state_dtype, master


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def upcast_state(inner: optax.GradientTransformation, dtype: Any = jnp.float32) -> optax.GradientTransformationExtraArgs:
    """`inner` computed in `dtype`: its state is built from `dtype` copies of the params (Adam's
    moments in float32 for bfloat16 params), grads and params are cast to `dtype` before its update,
    and the updates are cast back to the incoming gradients' dtypes."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return inner.init(_cast_floats(params, dtype))

    def update(updates, state, params=None, **extra_args):
        params = None if params is None else _cast_floats(params, dtype)
        new, state = inner.update(_cast_floats(updates, dtype), state, params, **extra_args)
        return jax.tree.map(lambda n, u: n.astype(u.dtype), new, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class MasterWeightsState(NamedTuple):
    """State of `master_weights`: the inner optimizer's state (built on the copy) and the copy itself.

    inner: the wrapped optimizer's state, in the master dtype.
    master: a params-shaped master-dtype copy of the parameters (sharded like them).
    """

    inner: Any
    master: Any


def master_weights(inner: optax.GradientTransformation, dtype: Any = jnp.float32) -> optax.GradientTransformationExtraArgs:
    """`inner` stepping a `dtype` master copy of the parameters kept in the optimizer state.

    update(grads, state, params): `inner` sees the grads cast to `dtype` and the master copy as its
    params (weight decay reads the copy); the copy becomes `master + u`; the returned update of a
    lower-precision leaf is `round(master + u) - params` in `dtype`, so `optax.apply_updates` writes
    the parameter as the rounding of the new master value (small updates accumulate in the copy
    instead of being rounded away). A leaf already in `dtype` gets `u` itself, exactly as without a copy.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        master = _cast_floats(params, dtype)
        return MasterWeightsState(inner=inner.init(master), master=master)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("master_weights: update needs params (the stored parameters the updates apply to)")
        u, inner_state = inner.update(_cast_floats(updates, dtype), state.inner, state.master, **extra_args)
        master = jax.tree.map(lambda m, d: m + d, state.master, u)

        def out(p, m, d):
            if p.dtype == m.dtype:
                return d
            # Both terms are in `dtype`: p + out is exactly the rounded master value.
            return m.astype(p.dtype).astype(m.dtype) - p.astype(m.dtype)

        return jax.tree.map(out, params, master, u), MasterWeightsState(inner_state, master)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """`clip_by_global_norm` (if `grad_clip_norm > 0`) followed by AdamW on `make_schedule`, in the
    section's dtypes (`optimizer_dtypes`: `master_weights`, else `upcast_state` for `state_dtype`)."""
    state_dtype, master = optimizer_dtypes(cfg)
    clip = float(cfg.get("grad_clip_norm", 1.0))
    adamw = optax.adamw(
        learning_rate=make_schedule(cfg, total_steps),
        b1=float(cfg.get("b1", 0.9)),
        b2=float(cfg.get("b2", 0.95)),
        eps=float(cfg.get("eps", 1e-8)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        mask=_decay_mask,
    )
    if clip < 0:
        raise ValueError(f"optimizer.grad_clip_norm must be >= 0 (0 disables); got {clip}")
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
    if master:
        return master_weights(tx)
    return upcast_state(tx, jnp.dtype(state_dtype)) if state_dtype else tx


def dgg_optimizer(optimizer: optax.GradientTransformation, *, tau: float, window: int, statistic: str = "delta",
                  num_minibatches: int = 1) -> optax.GradientTransformationExtraArgs:
    """`optimizer` behind the DGG gate (`objectives.dgg.dgg_wrapped`): `update(grads, state, params, *,
    reuse_index, minibatch_index=0, skip=False)`; the gate statistics live in the optimizer state."""
    return optax.GradientTransformationExtraArgs(*dgg_wrapped(optimizer, tau=tau, window=window, statistic=statistic,
                                                              num_minibatches=num_minibatches))
