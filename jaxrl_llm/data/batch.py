"""`TokenBatch`: the token arrays every trainer consumes (SFT, preference and RL rows alike).

tokens, positions: `[B, T]` int32; segment_ids: `[B, T]` int32 (0 = padding, never attended; packed
rows number their documents 1, 2, ...); loss_mask: `[B, T]` (1 on supervised / generated tokens
only). `jaxrl_llm.train.rl_batch.RolloutBatch` extends it with per-token RL arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import struct

TOKEN_BATCH_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask")


@struct.dataclass
class TokenBatch:
    """Token rows `[B, T]` (see the module docstring)."""

    tokens: Any
    positions: Any
    segment_ids: Any
    loss_mask: Any

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.tokens))  # type: ignore[return-value]

    @classmethod
    def from_mapping(cls, batch: Mapping[str, Any]) -> "TokenBatch":
        """From a `{tokens, positions, segment_ids, loss_mask}` mapping (e.g. a data-pipeline batch)."""
        missing = [k for k in TOKEN_BATCH_FIELDS if k not in batch]
        if missing:
            raise ValueError(f"batch is missing keys {missing}; expected {TOKEN_BATCH_FIELDS}")
        return cls(**{k: batch[k] for k in TOKEN_BATCH_FIELDS})

    def token_arrays(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TOKEN_BATCH_FIELDS}
