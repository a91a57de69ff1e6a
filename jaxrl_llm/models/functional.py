"""Functional view of a `Decoder` for jitted steps: `graphdef, params = nnx.split(model)`."""

from __future__ import annotations

from typing import Any

from flax import nnx


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """`(graphdef, params)`: the static structure and the parameter pytree."""
    return nnx.split(model)


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens, positions, **kwargs: Any):
    """`nnx.merge(graphdef, params)(tokens, positions, **kwargs)`; differentiable in `params`."""
    return nnx.merge(graphdef, params)(tokens, positions, **kwargs)


def hidden(graphdef: nnx.GraphDef, params: nnx.State, tokens, positions, **kwargs: Any):
    """Final-norm hidden states `[B, T, D]` and cache, skipping the lm_head."""
    return nnx.merge(graphdef, params).hidden(tokens, positions, **kwargs)


def lm_head_weight(graphdef: nnx.GraphDef, params: nnx.State):
    """`[D, V]` lm_head (the transposed embedding when tied)."""
    return nnx.merge(graphdef, params).lm_head_weight()
