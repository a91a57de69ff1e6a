"""Knowledge neurons: integrated-gradients attribution of FFN activations and interventions on them.

Knowledge Neurons in Pretrained Transformers (arXiv 2104.08696) attributes the probability of an
answer token to each FFN intermediate activation `w_i^l` (for SwiGLU, `silu(gate(x)) * up(x)`)
at the answer position, scaling one layer's activation vector from 0 to its value `w_bar`:

    Attr_i^l = w_bar_i * int_0^1 dP(alpha w_bar) / dw_i dalpha
             ~ (w_bar_i / m) sum_{k=1..m} dP(k w_bar / m) / dw_i          (m = 20)

Knowledge neurons are those with `Attr > 0.2 * max Attr`, kept when at least 70 % of a fact's
paraphrases share them. Unveiling Factual Recall Behaviors (arXiv 2408.03247) reads each hop's
neurons on a 2-hop prompt: the KN score of hop j is the mean attribution of hop-j neurons on the
2-hop prompt over their mean on the hop's own single-hop prompt (our ratio; the paper's exact
normalisation is not given). Enhancing (x2) or suppressing (x0) those activations tests whether
recall causes the answer.

The attribution forward (`ffn_forward`) walks a `models.decoder.Decoder` layer by layer with the
model's own modules and `SwiGLU.activation` / `SwiGLU.project`, so it works for the tiny preset
and any HF-loaded decoder, and the model's own forward is untouched. Prompts are single
sequences `[T]`; the answer position is the last prompt token (the one predicting the answer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.models.attention import MixerContext
from jaxrl_llm.models.decoder import embedding_rows
from jaxrl_llm.models.rope import inverse_frequencies, rope_tables

__all__ = [
    "answer_prob",
    "enhance",
    "ffn_forward",
    "integrated_gradients",
    "intervene",
    "kn_score",
    "knowledge_neurons",
    "neuron_attributions",
    "neuron_scale",
    "shared_neurons",
    "suppress",
]

Neuron = tuple[int, int]  # (layer, index into the FFN intermediate)

# Prompts are right-padded to a multiple of this many tokens so that prompts of nearby lengths
# share one compiled forward; causal mixers make the padding invisible at the answer position.
_LENGTH_BUCKET = 32


def integrated_gradients(fn: Callable[[jax.Array], jax.Array], w_bar, *, steps: int = 20,
                         rule: str = "right", batched: bool = False) -> jax.Array:
    """Integrated gradients of `fn` from the zero baseline to `w_bar` (any shape `[...]`).

    `rule="right"` is the paper's Riemann sum `w_bar / m * sum_{k=1..m} grad fn(k w_bar / m)`;
    `rule="midpoint"` evaluates at `(k - 1/2) / m` (error O(1/m^2): a fine grid gives the exact
    integral). `fn` maps one point `[...]` to a scalar; with `batched=True` it maps all `m` points
    `[m, ...]` to `[m]` at once (rows independent, e.g. one model forward over a batch).
    Completeness: `sum(result) ~= fn(w_bar) - fn(0)`.
    E.g. `fn = sigmoid(2 w - 1)`, `w_bar = 1`: exact 0.462117, right rule with m = 20: 0.461966.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"integrated_gradients: steps must be an integer >= 1; got {steps!r}")
    if rule not in ("right", "midpoint"):
        raise ValueError(f"integrated_gradients: rule must be 'right' or 'midpoint'; got {rule!r}")
    w_bar = jnp.asarray(w_bar)
    if not jnp.issubdtype(w_bar.dtype, jnp.floating):
        w_bar = w_bar.astype(jnp.float32)
    k = jnp.arange(1, steps + 1, dtype=jnp.float32)
    alphas = (k - 0.5) / steps if rule == "midpoint" else k / steps
    points = alphas.reshape((steps,) + (1,) * w_bar.ndim).astype(w_bar.dtype) * w_bar[None]
    if batched:
        grads = jax.grad(lambda p: jnp.sum(fn(p)))(points)
    else:
        grads = jax.vmap(jax.grad(fn))(points)
    return w_bar * jnp.mean(grads.astype(jnp.float32), axis=0).astype(w_bar.dtype)


def ffn_forward(model, tokens: jax.Array, *, edit: Callable[[int, jax.Array], jax.Array] | None = None):
    """The decoder's forward with every layer's FFN intermediate exposed.

    `tokens [B, T]` int (one sequence per row, positions 0..T-1, no padding segments) ->
    `(logits [B, T, V] float32, acts [L, B, T, F])`, where `acts[l]` is layer l's
    `silu(gate(x)) * up(x)` as computed (before `edit`). `edit(l, w [B, T, F]) -> [B, T, F]`
    replaces layer l's activation before its down projection. Without `edit` the logits equal
    `model(tokens, positions)[0]`: this mirrors `Decoder.hidden` and `DecoderLayer.__call__`.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"ffn_forward: tokens must be [B, T] integers; got shape {tokens.shape} dtype {tokens.dtype}")
    b, t = tokens.shape
    c = model.config
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    segment_ids = jnp.ones((b, t), jnp.int32)
    slots = jnp.arange(t, dtype=jnp.int32)
    cos, sin = rope_tables(positions, inverse_frequencies(c.rotary_dim, c.rope_theta, c.rope_scaling))
    ctx = MixerContext(positions=positions, segment_ids=segment_ids, q_slots=slots, k_segment_ids=segment_ids,
                       k_slots=slots, cos=cos, sin=sin, cache_index=None)
    x = embedding_rows(model.embed.get_value(), tokens, c.jnp_dtype)
    acts = []
    for i, layer in enumerate(model.layers):
        mixed, _ = layer.mixer(layer.input_norm(x), ctx, None)
        x = x + mixed
        w = layer.mlp.activation(layer.post_mixer_norm(x))
        acts.append(w)
        x = x + layer.mlp.project(w if edit is None else edit(i, w).astype(w.dtype))
    return model.logits(model.final_norm(x)), jnp.stack(acts)


def _check_prompt(tokens, answer_id, vocab: int) -> tuple[np.ndarray, int]:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size < 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a non-empty 1-d [T] array of token ids; got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    if isinstance(answer_id, bool) or not isinstance(answer_id, (int, np.integer)) or not 0 <= answer_id < vocab:
        raise ValueError(f"answer_id must be a token id in [0, {vocab}); got {answer_id!r}")
    return tokens.astype(np.int32), int(answer_id)


def _padded(tokens: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """`[T]` -> (`[1, T']` right-padded to the length bucket, index of the answer position)."""
    t = tokens.size
    padded = np.zeros(-(-t // _LENGTH_BUCKET) * _LENGTH_BUCKET, np.int32)
    padded[:t] = tokens
    return jnp.asarray(padded[None]), jnp.asarray(t - 1, jnp.int32)


def _at(position, t: int) -> jax.Array:
    """`[1, T, 1]` bool: the answer position (an int) or every position (None)."""
    if position is None:
        return jnp.ones((1, t, 1), bool)
    return (jnp.arange(t) == position)[None, :, None]


def _last_probs(logits: jax.Array, position) -> jax.Array:
    """`logits [B, T, V]` -> `[B, V]` softmax at `position`."""
    return jax.nn.softmax(jnp.take(logits, position, axis=1).astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "rule"))
def _layer_attr(graphdef, state, tokens, position, answer_id, layer, *, steps: int, rule: str):
    model = nnx.merge(graphdef, state)
    _, acts = ffn_forward(model, tokens)
    w_bar = jnp.take(acts[layer, 0], position, axis=0)          # [F]
    at = _at(position, tokens.shape[1])
    rows = jnp.broadcast_to(tokens, (steps, tokens.shape[1]))

    def prob(points):                                           # [m, F] -> [m]
        def edit(i, w):
            return jnp.where(at & (i == layer), points[:, None, :].astype(w.dtype), w)

        logits, _ = ffn_forward(model, rows, edit=edit)
        return _last_probs(logits, position)[:, answer_id]

    return integrated_gradients(prob, w_bar, steps=steps, rule=rule, batched=True)


def neuron_attributions(model, tokens, answer_id: int, *, layers: Sequence[int] | None = None, steps: int = 20,
                        rule: str = "right") -> np.ndarray:
    """Attr `[L, F]` float32 of each FFN activation at the answer position (the last of `tokens [T]`)
    for the probability of `answer_id` as the next token.

    Layer by layer (as in the paper), the layer's activation vector at the answer position is scaled
    from 0 to its value in `steps` points, batched in one forward; other layers run unchanged. Rows
    of layers not in `layers` (default: all) are 0. `rule` as in `integrated_gradients`.
    """
    num_layers = len(model.layers)
    tokens, answer_id = _check_prompt(tokens, answer_id, model.config.vocab_size)
    layers = range(num_layers) if layers is None else layers
    layers = [int(x) for x in layers]
    if any(not 0 <= x < num_layers for x in layers):
        raise ValueError(f"layers must be layer indices in [0, {num_layers}); got {layers}")
    graphdef, state = nnx.split(model)
    padded, position = _padded(tokens)
    attr = np.zeros((num_layers, model.config.intermediate_size), np.float32)
    for layer in layers:
        attr[layer] = np.asarray(_layer_attr(graphdef, state, padded, position, answer_id, jnp.int32(layer),
                                             steps=steps, rule=rule), np.float32)
    return attr


def knowledge_neurons(attr, *, threshold: float = 0.2) -> frozenset[Neuron]:
    """`attr [L, F]` -> the `(layer, index)` pairs with `Attr > threshold * max(Attr)`; empty when no
    attribution is positive (a non-positive max would select neurons that work against the answer)."""
    attr = np.asarray(attr, np.float64)
    if attr.ndim != 2:
        raise ValueError(f"knowledge_neurons: attr must be [L, F]; got shape {attr.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"knowledge_neurons: threshold must be in [0, 1]; got {threshold}")
    top = attr.max() if attr.size else 0.0
    if not top > 0:
        return frozenset()
    return frozenset((int(l), int(i)) for l, i in zip(*np.nonzero(attr > threshold * top)))


def shared_neurons(neuron_sets: Sequence[Iterable[Neuron]], *, min_share: float = 0.7) -> frozenset[Neuron]:
    """The neurons found in at least `min_share` of the paraphrases' sets (`count / n >= min_share`)."""
    if len(neuron_sets) == 0:
        raise ValueError("shared_neurons: neuron_sets must hold at least one set (one per paraphrase)")
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"shared_neurons: min_share must be in (0, 1]; got {min_share}")
    counts: dict[Neuron, int] = {}
    for s in neuron_sets:
        for n in set(s):
            key = (int(n[0]), int(n[1]))
            counts[key] = counts.get(key, 0) + 1
    return frozenset(n for n, c in counts.items() if c / len(neuron_sets) >= min_share)


def _neuron_index(neurons: Iterable[Neuron], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted({(int(l), int(i)) for l, i in neurons})
    if not pairs:
        raise ValueError("neurons must be a non-empty set of (layer, index) pairs")
    layer, index = (np.array(x, np.int64) for x in zip(*pairs))
    if layer.min() < 0 or layer.max() >= shape[0] or index.min() < 0 or index.max() >= shape[1]:
        raise ValueError(f"neurons must be (layer, index) pairs inside [L, F] = {shape}; got {pairs[:8]}")
    return layer, index


def kn_score(attr_two_hop, attr_single_hop, neurons: Iterable[Neuron]) -> float:
    """Mean Attr of `neurons` on the 2-hop prompt (`attr_two_hop [L, F]`) over their mean on the
    single-hop prompt (`attr_single_hop [L, F]`): 1 means the hop's fact is recalled as strongly as
    when asked alone."""
    two, one = np.asarray(attr_two_hop, np.float64), np.asarray(attr_single_hop, np.float64)
    if two.ndim != 2 or two.shape != one.shape:
        raise ValueError(f"kn_score: attr_two_hop and attr_single_hop must be equal [L, F]; got {two.shape} "
                         f"and {one.shape}")
    layer, index = _neuron_index(neurons, two.shape)
    denom = one[layer, index].mean()
    if not denom > 0:
        raise ValueError(f"kn_score: the neurons' mean attribution on the single-hop prompt must be > 0; got {denom}")
    return float(two[layer, index].mean() / denom)


def neuron_scale(neurons: Iterable[Neuron], shape: tuple[int, int], factor: float) -> np.ndarray:
    """`[L, F]` float32 of ones with `factor` at `neurons` (the multiplicative FFN mask)."""
    scale = np.ones(shape, np.float32)
    layer, index = _neuron_index(neurons, shape)
    scale[layer, index] = factor
    return scale


@functools.partial(jax.jit, static_argnames=("graphdef", "everywhere"))
def _scaled_probs(graphdef, state, tokens, position, scale, *, everywhere: bool):
    model = nnx.merge(graphdef, state)
    at = _at(None if everywhere else position, tokens.shape[1])

    def edit(i, w):
        return jnp.where(at, w * scale[i].astype(w.dtype), w)

    logits, _ = ffn_forward(model, tokens, edit=None if scale is None else edit)
    return _last_probs(logits, position)[0]


def answer_prob(model, tokens, answer_id: int | None = None, *, scale: Any = None, where: str = "last"):
    """Probability of `answer_id` as the token after `tokens [T]` (a float), or the whole next-token
    distribution `[V]` when `answer_id` is None.

    `scale [L, F]` multiplies the FFN activations (`neuron_scale`) at the answer position
    (`where="last"`) or at every position (`where="all"`); None runs the plain forward.
    """
    if where not in ("last", "all"):
        raise ValueError(f"answer_prob: where must be 'last' or 'all'; got {where!r}")
    tokens, answer = _check_prompt(tokens, 0 if answer_id is None else answer_id, model.config.vocab_size)
    shape = (len(model.layers), model.config.intermediate_size)
    if scale is not None:
        scale = jnp.asarray(scale, jnp.float32)
        if scale.shape != shape:
            raise ValueError(f"answer_prob: scale must be [L, F] = {shape}; got {scale.shape}")
    graphdef, state = nnx.split(model)
    padded, position = _padded(tokens)
    probs = _scaled_probs(graphdef, state, padded, position, scale, everywhere=where == "all")
    return np.asarray(probs) if answer_id is None else float(probs[answer])


def intervene(model, tokens, answer_id: int, neurons: Iterable[Neuron], factor: float, *,
              where: str = "last") -> float:
    """P(answer) after multiplying the activations of `neurons` by `factor` (see `answer_prob`)."""
    shape = (len(model.layers), model.config.intermediate_size)
    return answer_prob(model, tokens, answer_id, scale=neuron_scale(neurons, shape, factor), where=where)


def enhance(model, tokens, answer_id: int, neurons: Iterable[Neuron], *, where: str = "last") -> float:
    """P(answer) with the neurons' activations doubled."""
    return intervene(model, tokens, answer_id, neurons, 2.0, where=where)


def suppress(model, tokens, answer_id: int, neurons: Iterable[Neuron], *, where: str = "last") -> float:
    """P(answer) with the neurons' activations set to 0."""
    return intervene(model, tokens, answer_id, neurons, 0.0, where=where)
