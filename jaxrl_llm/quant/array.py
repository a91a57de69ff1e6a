"""`QuantArray`: a quantized weight as one pytree leaf, with `quantize` / `dequantize`.

Layout. A weight is `[..., in, out]` (used as `x @ w`); leading axes are batch axes (for example
stacked layers). The input axis is cut into `G` groups of `group_size` rows and every
(group, output column) pair has one scale:

  values: `[..., G * group_size, out]`  int8 (int8 format), int8 or int4 (int4), float8_e4m3fn (fp8)
  scale:  `[..., G, out]`               float32

Per-output-channel formats (int8, fp8 by default) are the case `G = 1`. When `in` is not a
multiple of `group_size`, the input axis is zero-padded up to `G * group_size` (zeros quantize to
exactly 0, so they add nothing to a matmul); `dequantize` drops the padding again.

Formats (symmetric round-to-nearest, ties to even as `jnp.round`):
  int8: s = max|w| / 127, q = clip(round(w / s), -128, 127), per output channel.
  int4: s = max|w| / 7,   q = clip(round(w / s), -8, 7), groups of 128 along the input axis.
  fp8:  s = max|w| / 448, q = float8_e4m3fn(w / s) (the cast rounds to nearest even), per channel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["QuantArray", "QuantFormat", "FORMATS", "quantize", "dequantize"]


class QuantFormat(NamedTuple):
    """Static facts about one weight format."""

    name: str
    qmax: float  # the code that max|w| maps to
    qmin: float  # smallest integer code (unused for float formats)
    is_int: bool
    default_group_size: int | None  # None: one group over the whole input axis (per channel)
    storage_dtypes: tuple[Any, ...]  # allowed dtypes for `values`; the first is the default


FORMATS: dict[str, QuantFormat] = {
    "int8": QuantFormat("int8", 127.0, -128.0, True, None, (jnp.int8,)),
    # int4 codes are held in int8 by default: every backend and checkpoint format handles int8,
    # while native int4 arrays are an opt-in (`storage_dtype=jnp.int4`).
    "int4": QuantFormat("int4", 7.0, -8.0, True, 128, (jnp.int8, jnp.int4)),
    "fp8": QuantFormat("fp8", 448.0, -448.0, False, None, (jnp.float8_e4m3fn,)),
}

_DEFAULT = object()


def get_format(fmt: str) -> QuantFormat:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {tuple(FORMATS)}; got {fmt!r}")
    return FORMATS[fmt]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantArray:
    """A quantized `[..., in, out]` weight (see the module docstring for the layout).

    values: `[..., G * group_size, out]` integer or float8 codes.
    scale:  `[..., G, out]` float32 scales; `w ~= values * scale` group by group.
    fmt, group_size, in_features, orig_dtype: static metadata (part of the tree structure, so
    `jit` specialises on them and `lax.scan` over leading axes keeps them valid).
    """

    values: jax.Array
    scale: jax.Array
    fmt: str = dataclasses.field(metadata=dict(static=True))
    group_size: int = dataclasses.field(metadata=dict(static=True))
    in_features: int = dataclasses.field(metadata=dict(static=True))
    orig_dtype: str = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the original weight, `[..., in, out]`."""
        return (*self.values.shape[:-2], self.in_features, self.values.shape[-1])

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the original weight (what `dequantize` returns by default)."""
        return jnp.dtype(self.orig_dtype)

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def num_groups(self) -> int:
        return self.scale.shape[-2]


def quantize(
    w: jax.Array,
    fmt: str = "int4",
    *,
    group_size: int | None | object = _DEFAULT,
    storage_dtype: Any = None,
) -> QuantArray:
    """Quantizes a `[..., in, out]` floating weight.

    Args:
      w: `[..., in, out]` float weight (ndim >= 2).
      fmt: "int8", "int4" or "fp8".
      group_size: rows of the input axis per scale; None means one group over the whole input
        axis (per output channel). Defaults: 128 for int4, None for int8 and fp8.
      storage_dtype: dtype of `values`; int4 accepts `jnp.int8` (default) or `jnp.int4`.

    Returns:
      A `QuantArray`; `dequantize` of it is within half a step (`s / 2`) of `w` for int formats.
    """
    spec = get_format(fmt)
    w = jnp.asarray(w)
    if w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"w must be a floating [..., in, out] array; got {w.dtype}{w.shape}")
    in_features = w.shape[-2]
    gs = spec.default_group_size if group_size is _DEFAULT else group_size
    gs = in_features if gs is None else int(gs)
    if gs < 1:
        raise ValueError(f"group_size must be a positive int or None; got {group_size}")
    storage = spec.storage_dtypes[0] if storage_dtype is None else storage_dtype
    if jnp.dtype(storage) not in [jnp.dtype(d) for d in spec.storage_dtypes]:
        allowed = [jnp.dtype(d).name for d in spec.storage_dtypes]
        raise ValueError(f"storage_dtype for {fmt} must be one of {allowed}; got {storage}")

    values, scale = _quantize_codes(w, fmt, gs, jnp.dtype(storage))
    return QuantArray(
        values=values,
        scale=scale,
        fmt=fmt,
        group_size=gs,
        in_features=in_features,
        orig_dtype=jnp.dtype(w.dtype).name,
    )


@functools.partial(jax.jit, static_argnames=("fmt", "gs", "storage"))
def _quantize_codes(w: jax.Array, fmt: str, gs: int, storage: np.dtype):
    """(values `[..., G * gs, out]`, scale `[..., G, out]` float32) of a validated weight."""
    spec = FORMATS[fmt]
    *lead, in_features, out_features = w.shape
    num_groups = math.ceil(in_features / gs)
    pad = num_groups * gs - in_features
    wf = w.astype(jnp.float32)
    if pad:
        wf = jnp.pad(wf, [(0, 0)] * len(lead) + [(0, pad), (0, 0)])
    wg = wf.reshape(*lead, num_groups, gs, out_features)
    amax = jnp.max(jnp.abs(wg), axis=-2, keepdims=True)  # [..., G, 1, out]
    safe_amax = jnp.where(amax > 0, amax, 1.0)
    # w / amax * qmax rather than w / (amax / qmax): the first keeps exact ties (e.g. -3.5) exact.
    scaled = wg / safe_amax * spec.qmax
    if spec.is_int:
        codes = jnp.clip(jnp.round(scaled), spec.qmin, spec.qmax)
    else:
        codes = scaled
    values = codes.astype(storage).reshape(*lead, num_groups * gs, out_features)
    scale = (amax / spec.qmax)[..., 0, :]  # [..., G, out]
    return values, scale.astype(jnp.float32)


def dequantize(q: QuantArray, dtype: Any = None) -> jax.Array:
    """`[..., in, out]` weight `values * scale` in `dtype` (default: the original dtype)."""
    if not isinstance(q, QuantArray):
        raise TypeError(f"q must be a QuantArray; got {type(q).__name__}")
    *lead, padded_in, out_features = q.values.shape
    num_groups = q.scale.shape[-2]
    if padded_in != num_groups * q.group_size:
        raise ValueError(
            f"q.values must be [..., G * group_size, out] = [..., {num_groups * q.group_size}, "
            f"{out_features}] for scale {q.scale.shape}; got {q.values.shape}"
        )
    out_dtype = jnp.dtype(q.dtype if dtype is None else dtype)
    return _dequantize_codes(q.values, q.scale, q.group_size, q.in_features, out_dtype)


@functools.partial(jax.jit, static_argnames=("group_size", "in_features", "dtype"))
def _dequantize_codes(values, scale, group_size: int, in_features: int, dtype: np.dtype):
    *lead, padded_in, out_features = values.shape
    num_groups = scale.shape[-2]
    grouped = values.astype(jnp.float32).reshape(*lead, num_groups, group_size, out_features)
    w = (grouped * scale[..., :, None, :]).reshape(*lead, padded_in, out_features)
    return w[..., :in_features, :].astype(dtype)
