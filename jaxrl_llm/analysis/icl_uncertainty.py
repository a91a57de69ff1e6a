"""ICL uncertainty decomposition over demonstration sets (Uncertainty Unveiled, arXiv 2505.21003).

For one query, L demonstration sets each give a label distribution; stacked they form `A [L, Y]`.

- TU = H(normalise(sum_j A_j)): entropy of the demo-set-averaged label distribution;
- EU = (1/L) sum_j H(A_j): the entropy left once the demo set is fixed;
- AU = TU - EU: the mutual information between the label and the demo set.

The names follow the paper and are the REVERSE of the usual ensemble convention (where the mean
per-member entropy is called aleatoric and the mutual information epistemic): here EU is the
expected conditional entropy and AU the mutual information. All values are in nats.

Label distributions come from a model's logits restricted to the label tokens (`label_probs`);
`logit_lens_label_probs` reads them off every layer's hidden state (the logit lens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "entropy",
    "first_winning_layer",
    "icl_uncertainty",
    "icl_uncertainty_batched",
    "label_probs",
    "logit_lens_label_probs",
]


def entropy(p: jax.Array) -> jax.Array:
    """`p [..., Y]` -> `[...]` Shannon entropy in nats, with 0 log 0 = 0."""
    p = jnp.asarray(p)
    return -jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1)


def _check_probs(probs, ndim: int | None, name: str) -> jax.Array:
    probs = jnp.asarray(probs)
    if (ndim is not None and probs.ndim != ndim) or probs.ndim < 2:
        want = f"{ndim}-d" if ndim is not None else "at least 2-d"
        raise ValueError(f"{name}: probs must be {want} [..., L, Y]; got shape {probs.shape}")
    if probs.shape[-2] < 1 or probs.shape[-1] < 2:
        raise ValueError(f"{name}: need L >= 1 demo sets and Y >= 2 labels; got shape {probs.shape}")
    if not isinstance(probs, jax.core.Tracer):
        # Concrete input: reject rows that are not distributions (a traced one is the caller's job).
        host = np.asarray(probs, np.float64)
        if (host < 0).any() or not np.allclose(host.sum(-1), 1.0, atol=1e-4):
            raise ValueError(f"{name}: every row of probs must be a distribution (>= 0, summing to 1)")
    return probs


def _decompose(probs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean = jnp.sum(probs, axis=-2)
    mean = mean / jnp.sum(mean, axis=-1, keepdims=True)
    tu = entropy(mean)
    eu = jnp.mean(entropy(probs), axis=-1)
    # Clamp float round-off: the mutual information is >= 0 by Jensen.
    return tu, eu, jnp.maximum(tu - eu, 0.0)


def icl_uncertainty(probs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`probs [L, Y]` (one label distribution per demonstration set) -> scalars `(TU, EU, AU)` in nats.

    Paper naming (reverse of the ensemble convention): EU is the mean entropy given a demo set,
    AU = TU - EU the mutual information of label and demo set.
    E.g. `[[.9, .1], [.5, .5]]` -> (0.610864, 0.509115, 0.101749).
    """
    return _decompose(_check_probs(probs, 2, "icl_uncertainty"))


def icl_uncertainty_batched(probs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`probs [N, L, Y]` (N queries) -> `(TU [N], EU [N], AU [N])` in nats; row i equals
    `icl_uncertainty(probs[i])`."""
    return _decompose(_check_probs(probs, 3, "icl_uncertainty_batched"))


def _label_index(label_ids: Sequence[int] | jax.Array, vocab: int) -> np.ndarray:
    ids = np.asarray(label_ids)
    if ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"label_ids must be a 1-d list of >= 2 integer token ids; got {label_ids!r}")
    if ids.min() < 0 or ids.max() >= vocab or len(set(ids.tolist())) != ids.size:
        raise ValueError(f"label_ids must be distinct token ids in [0, {vocab}); got {ids.tolist()}")
    return ids


def label_probs(logits, label_ids: Sequence[int]) -> jax.Array:
    """`logits [..., V]` -> `[..., Y]` float32: softmax over the label tokens' logits only (the
    probability mass on other tokens is dropped, as in the paper's label-restricted readout)."""
    logits = jnp.asarray(logits)
    ids = _label_index(label_ids, logits.shape[-1])
    return jax.nn.softmax(logits[..., ids].astype(jnp.float32), axis=-1)


def logit_lens_label_probs(hidden, final_norm: Callable[[jax.Array], jax.Array],
                           unembed: Callable[[jax.Array], jax.Array], label_ids: Sequence[int]) -> jax.Array:
    """Logit lens: `hidden [Lyr, D]` (the residual stream after each layer at one position, before
    the final norm) -> `[Lyr, Y]` label distribution read off each layer.

    Each layer's state goes through the model's own readout, `unembed(final_norm(h))`, exactly as
    the last layer's does. For `jaxrl_llm.models.decoder.Decoder`: `final_norm=model.final_norm`,
    `unembed=model.logits` (lm_head, or the tied embedding). `Decoder.hidden` / `return_hidden`
    give the LAST layer's state already normed: pass it with `final_norm=lambda h: h`.
    """
    hidden = jnp.asarray(hidden)
    if hidden.ndim != 2:
        raise ValueError(f"logit_lens_label_probs: hidden must be [Lyr, D]; got shape {hidden.shape}")
    return label_probs(unembed(final_norm(hidden)), label_ids)


def first_winning_layer(layer_probs, target: int) -> int:
    """`layer_probs [Lyr, Y]` -> the first layer from which `target` is the argmax label at every
    later layer too (when the right label wins for good); -1 if it does not win at the last layer."""
    layer_probs = np.asarray(layer_probs)
    if layer_probs.ndim != 2 or not 0 <= target < layer_probs.shape[1]:
        raise ValueError(f"first_winning_layer: need layer_probs [Lyr, Y] and 0 <= target < Y; "
                         f"got shape {layer_probs.shape}, target {target}")
    wins = layer_probs.argmax(-1) == target
    if not wins[-1]:
        return -1
    losing = np.flatnonzero(~wins)
    return int(losing[-1] + 1) if losing.size else 0
