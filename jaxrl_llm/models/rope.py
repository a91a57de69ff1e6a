"""Rotary position embeddings (the half-split layout of Llama/Qwen checkpoints), with the llama3
frequency rescaling.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: Mapping[str, float] | None = None) -> np.ndarray:
    """`[Dh/2]` float64 inverse frequencies `theta^(-2i/Dh)`, llama3-rescaled when `scaling` is given.

    llama3 scaling divides low frequencies (wavelength above `original / low_freq_factor`) by
    `factor`, keeps high frequencies (wavelength below `original / high_freq_factor`), and
    interpolates linearly in `original / wavelength` between the two bands.
    """
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv
    smooth = (original / wavelength - low) / (high - low)
    interpolated = (1 - smooth) * inv / factor + smooth * inv
    scaled = np.where(wavelength > original / low, inv / factor, inv)
    is_medium = (wavelength >= original / high) & (wavelength <= original / low)
    return np.where(is_medium, interpolated, scaled)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """`positions [B, T]` -> `(cos, sin)`, each `[B, T, Dh]` float32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates `x [B, T, N, Dh]` by `cos/sin [B, T, R]` (in float32), returning `x.dtype`.

    With `R < Dh` (partial rotary, as in Qwen3-Next) only the first `R` channels rotate (half-split
    within them) and the other `Dh - R` pass through unchanged.
    """
    rotary = cos.shape[-1]
    if rotary > x.shape[-1] or rotary % 2:
        raise ValueError(f"apply_rope: cos/sin must be [B, T, R] with R even and R <= Dh = {x.shape[-1]}; "
                         f"got {tuple(cos.shape)}")
    if rotary < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]], axis=-1)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
