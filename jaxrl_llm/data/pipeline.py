"""Grain input pipeline for supervised fine-tuning: records -> token batches.

A record is `{"prompt": str, "completion": str}` (JSONL file or in-memory list). Each becomes
`[bos] + prompt + completion + [eos]` with `loss_mask` 1 on completion and eos tokens only.
Examples are then either padded to `seq_len` one per row, or packed several per row (first-fit),
and batched into a `TokenBatch`-shaped dict of `[B, T] int32` arrays:

- `tokens`: token ids, `pad_id` after the last segment;
- `positions`: 0-based position within each segment (0 on padding);
- `segment_ids`: 1, 2, ... per packed example, 0 on padding;
- `loss_mask`: 1 where the token is supervised (a completion token), else 0.

The iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` make it checkpointable,
so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxrl_llm.data.tokenizer import Tokenizer

BATCH_KEYS: tuple[str, ...] = ("tokens", "positions", "segment_ids", "loss_mask")


def load_jsonl(path: str) -> list[dict[str, Any]]:
    """Read one JSON object per non-empty line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{i + 1} must hold a JSON object; got {type(record).__name__}")
                records.append(record)
    return records


def tokenize_record(
    record: Mapping[str, Any],
    tokenizer: Tokenizer,
    *,
    max_len: int,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
) -> dict[str, np.ndarray]:
    """`{"tokens": [L], "loss_mask": [L]}` (int32) for one record; `L <= max_len` or `ValueError`."""
    for key in (prompt_key, completion_key):
        if key not in record or not isinstance(record[key], str):
            raise ValueError(f"record must have a string field {key!r}; got keys {sorted(record)}")
    prompt = tokenizer.encode(record[prompt_key])
    if tokenizer.bos_id is not None:
        prompt = [tokenizer.bos_id] + prompt
    completion = tokenizer.encode(record[completion_key]) + [tokenizer.eos_id]
    tokens = np.asarray(prompt + completion, dtype=np.int32)
    if tokens.shape[0] > max_len:
        raise ValueError(
            f"record of {tokens.shape[0]} tokens exceeds data.seq_len={max_len}; raise seq_len or "
            f"filter long records (prompt {record[prompt_key]!r})"
        )
    loss_mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(completion), np.int32)])
    return {"tokens": tokens, "loss_mask": loss_mask}


def pad_example(example: Mapping[str, np.ndarray], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pad one tokenized example to `[seq_len]` with a single segment (id 1)."""
    n = example["tokens"].shape[0]
    if n > seq_len:
        raise ValueError(f"example of {n} tokens exceeds seq_len={seq_len}")
    pad = seq_len - n
    return {
        "tokens": np.pad(example["tokens"], (0, pad), constant_values=pad_id).astype(np.int32),
        "positions": np.pad(np.arange(n, dtype=np.int32), (0, pad)),
        "segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
        "loss_mask": np.pad(example["loss_mask"].astype(np.int32), (0, pad)),
    }


def _from_packed(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Grain's packer emits `<feature>_segment_ids` / `<feature>_positions` per packed feature.
    return {
        "tokens": example["tokens"].astype(np.int32),
        "positions": example["tokens_positions"].astype(np.int32),
        "segment_ids": example["tokens_segment_ids"].astype(np.int32),
        "loss_mask": example["loss_mask"].astype(np.int32),
    }


def build_sft_dataset(
    records: Sequence[Mapping[str, Any]] | str,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    packing: bool = False,
    num_epochs: int | None = None,
    shuffle: bool = True,
    num_packing_bins: int | None = None,
) -> grain.IterDataset:
    """A grain `IterDataset` of `{tokens, positions, segment_ids, loss_mask}: [batch_size, seq_len]`.

    `records`: list of `{"prompt", "completion"}` dicts or a JSONL path. `num_epochs=None` repeats
    forever (reshuffled each epoch). Incomplete final batches are dropped so shapes stay static.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"data.seq_len must be >= 2 and batch_size >= 1; got {seq_len}, {batch_size}")
    if isinstance(records, str):
        records = load_jsonl(records)
    if len(records) == 0:
        raise ValueError("records must not be empty")
    ds = grain.MapDataset.source(list(records))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map(lambda r: tokenize_record(r, tokenizer, max_len=seq_len))
    if packing:
        iter_ds = grain.experimental.FirstFitPackIterDataset(
            ds.to_iter_dataset(),
            length_struct={"tokens": seq_len, "loss_mask": seq_len},
            num_packing_bins=num_packing_bins or batch_size,
            seed=seed,
            shuffle_bins=False,
            padding_struct={"tokens": tokenizer.pad_id, "loss_mask": 0},
        ).map(_from_packed)
    else:
        iter_ds = ds.map(lambda ex: pad_example(ex, seq_len, tokenizer.pad_id)).to_iter_dataset()
    return iter_ds.batch(batch_size, drop_remainder=True)
