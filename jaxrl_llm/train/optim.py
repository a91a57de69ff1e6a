"""Optimizer from config: AdamW with linear warmup + cosine decay and global-norm clipping.

Config fields (`optimizer` section): `learning_rate`, `warmup_steps`, `decay_steps` (0: use
`train.steps`), `end_learning_rate_ratio`, `b1`, `b2`, `eps`, `weight_decay`, `grad_clip_norm`
(0 disables clipping). Weight decay skips vectors and scalars (norm scales, biases): decaying a
norm gain towards zero only fights the normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
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


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """`clip_by_global_norm` (if `grad_clip_norm > 0`) followed by AdamW on `make_schedule`."""
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
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


def dgg_optimizer(optimizer: optax.GradientTransformation, *, tau: float, window: int, statistic: str = "delta",
                  num_minibatches: int = 1) -> optax.GradientTransformationExtraArgs:
    """`optimizer` behind the DGG gate (`objectives.dgg.dgg_wrapped`): `update(grads, state, params, *,
    reuse_index, minibatch_index=0, skip=False)`; the gate statistics live in the optimizer state."""
    return optax.GradientTransformationExtraArgs(*dgg_wrapped(optimizer, tau=tau, window=window, statistic=statistic,
                                                              num_minibatches=num_minibatches))
