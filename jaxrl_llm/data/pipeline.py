"""Grain input pipeline for supervised fine-tuning: records -> token batches.

A record is `{"prompt": str, "completion": str}` (JSONL file or in-memory list). Each becomes
`tokenizer.encode_prompt(prompt) + tokenizer.encode_response(completion)` (plain layout:
`[bos] + prompt + completion + [eos]`; chat layout: the chat template's turns) with `loss_mask` 1 on
the response tokens only. A record `{"messages": [{"role", "content"}, ...]}` is a whole conversation
(`tokenizer.encode_messages`), supervised on its assistant turns only.
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

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxrl_llm.data.datasets import load_jsonl, read_sft_records  # noqa: F401  (load_jsonl: re-exported)
from jaxrl_llm.data.tokenizer import Tokenizer

BATCH_KEYS: tuple[str, ...] = ("tokens", "positions", "segment_ids", "loss_mask")


def tokenize_records(records: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, *, max_len: int,
                     long_records: str = "fail", source: str = "records") -> list[dict[str, np.ndarray]]:
    """Every record tokenized up front (`tokenize_record`), so a bad one fails before step 1.

    long_records: "fail" (default) raises naming the first record longer than `max_len` and how many
    are; "drop" leaves them out and warns with the count. Errors name `source` and the record index.
    """
    if long_records not in ("fail", "drop"):
        raise ValueError(f"data.long_records must be 'fail' or 'drop'; got {long_records!r}")
    out, too_long = [], []
    for i, record in enumerate(records):
        try:
            example = tokenize_record(record, tokenizer, max_len=None)
        except ValueError as e:
            raise ValueError(f"{source}, record {i + 1}: {e}") from None
        if example["tokens"].shape[0] > max_len:
            too_long.append(i)
        else:
            out.append(example)
    if too_long and long_records == "fail":
        first = too_long[0]
        raise ValueError(f"{source}: {len(too_long)} of {len(records)} records exceed data.seq_len={max_len} tokens "
                         f"(first: record {first + 1}); raise data.seq_len or set data.long_records='drop'")
    if too_long:
        warnings.warn(f"{source}: dropped {len(too_long)} of {len(records)} records longer than data.seq_len="
                      f"{max_len} tokens (data.long_records='drop')", stacklevel=2)
    if not out:
        raise ValueError(f"{source}: no record fits data.seq_len={max_len}")
    return out


def tokenize_record(
    record: Mapping[str, Any],
    tokenizer: Tokenizer,
    *,
    max_len: int | None,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
) -> dict[str, np.ndarray]:
    """`{"tokens": [L], "loss_mask": [L]}` (int32) for one record; `L <= max_len` (None: any) or `ValueError`.

    A `{prompt, completion}` record: `encode_prompt(prompt)` (mask 0) + `encode_response(completion)`
    (mask 1). A `{"messages": [...]}` record: `encode_messages`, mask 1 on assistant turns.
    """
    if "messages" in record and prompt_key not in record:
        if not isinstance(record["messages"], list):
            raise ValueError(f"record field 'messages' must be a list of {{role, content}} dicts; "
                             f"got {type(record['messages']).__name__}")
        ids, mask = tokenizer.encode_messages(record["messages"])
        if not any(mask):
            raise ValueError("a 'messages' record must hold an assistant turn with content (nothing to supervise)")
        tokens, loss_mask = np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.int32)
        what = f"messages {record['messages'][0].get('content', '')!r:.60}"
    else:
        for key in (prompt_key, completion_key):
            if key not in record or not isinstance(record[key], str):
                raise ValueError(f"record must have a string field {key!r} (or a 'messages' list); "
                                 f"got keys {sorted(record)}")
        prompt = tokenizer.encode_prompt(record[prompt_key])
        completion = tokenizer.encode_response(record[completion_key])
        tokens = np.asarray(prompt + completion, dtype=np.int32)
        loss_mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(completion), np.int32)])
        what = f"prompt {record[prompt_key]!r}"
    if max_len is not None and tokens.shape[0] > max_len:
        raise ValueError(
            f"record of {tokens.shape[0]} tokens exceeds data.seq_len={max_len}; raise seq_len or "
            f"filter long records ({what})"
        )
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
    long_records: str = "fail",
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """A grain `IterDataset` of `{tokens, positions, segment_ids, loss_mask}: [batch_size, seq_len]`.

    `records`: list of `{"prompt", "completion"}` dicts or a file path (any format of
    `data/datasets.py: read_sft_records`). `num_epochs=None` repeats forever (reshuffled each
    epoch). Incomplete final batches are dropped so shapes stay static.
    Every record is tokenized and checked before the first batch (`tokenize_records`: records longer
    than `seq_len` fail or, with `long_records="drop"`, are dropped with a warning).

    Several processes: `batch_size` is this process's share. Every process builds the same global
    order (same `seed`) in batches of `batch_size * process_count` rows and keeps its own slice, rows
    `[process_index * batch_size, (process_index + 1) * batch_size)`, so the global batch the processes
    stack in process order equals the one-process batch, and no row is read twice.
    """
    if seq_len < 2:
        raise ValueError(f"data.seq_len must be >= 2; got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"the per-process batch size (train.batch_size / processes) must be >= 1; got {batch_size}")
    source = records if isinstance(records, str) else "records"
    if isinstance(records, str):
        records = read_sft_records(records)  # JSONL / Parquet / save_to_disk, usual field names
    if len(records) == 0:
        raise ValueError("records must not be empty")
    examples = tokenize_records(records, tokenizer, max_len=seq_len, long_records=long_records, source=source)
    ds = grain.MapDataset.source(examples)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if packing:
        iter_ds = grain.experimental.FirstFitPackIterDataset(
            ds.to_iter_dataset(),
            length_struct={"tokens": seq_len, "loss_mask": seq_len},
            num_packing_bins=num_packing_bins or batch_size * process_count,
            seed=seed,
            shuffle_bins=False,
            padding_struct={"tokens": tokenizer.pad_id, "loss_mask": 0},
        ).map(_from_packed)
    else:
        iter_ds = ds.map(lambda ex: pad_example(ex, seq_len, tokenizer.pad_id)).to_iter_dataset()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}); got {process_index}")
    if process_count == 1:
        return iter_ds.batch(batch_size, drop_remainder=True)
    lo, hi = process_index * batch_size, (process_index + 1) * batch_size
    return iter_ds.batch(batch_size * process_count, drop_remainder=True).map(
        lambda b: {k: v[lo:hi] for k, v in b.items()})
