"""Weight quantization: `QuantArray` leaves, quantized matmuls and straight-through fake-quant.

- `array`: `QuantArray`, `quantize`, `dequantize` (int8 / int4 / fp8 e4m3, symmetric RTN).
- `matmul`: `qmatmul`, `qeinsum` accept a plain or a quantized weight.
- `fake`: `fake_quant` (forward = quantized weight, backward = identity).
- `params`: `quantize_params`, `fake_quant_params`, `dequantize_params` over whole pytrees.

This package imports nothing from `train`, `rollout`, `envs` or `agents`.
"""

from jaxrl_llm.quant.array import FORMATS, QuantArray, QuantFormat, dequantize, quantize
from jaxrl_llm.quant.fake import fake_quant
from jaxrl_llm.quant.matmul import qeinsum, qmatmul
from jaxrl_llm.quant.params import (
    dequantize_params,
    fake_quant_params,
    is_linear_weight,
    path_names,
    quantize_params,
)

__all__ = [
    "FORMATS",
    "QuantArray",
    "QuantFormat",
    "dequantize",
    "dequantize_params",
    "fake_quant",
    "fake_quant_params",
    "is_linear_weight",
    "path_names",
    "qeinsum",
    "qmatmul",
    "quantize",
    "quantize_params",
]
