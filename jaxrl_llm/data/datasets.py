"""Prompt and SFT records from files, their field mapping and answer formats, and grain record orders.

Formats (detected from the path; errors name the file):

- `.jsonl` / `.json`: one JSON object per line (a `.json` file holding one JSON array of objects
  is read too); any other file suffix is read as JSON lines;
- `.parquet` / `.pq`: a Parquet table (needs `pyarrow`), one record per row;
- a folder written by `datasets.Dataset.save_to_disk` (its `state.json` names Arrow files, read
  with `pyarrow`; `datasets` itself need not be installed), or by `DatasetDict.save_to_disk`
  (`dataset_dict.json`; pick one with `split`, or point at the split's subfolder).

Field mapping: `field_map` reads each record's prompt and answer; "auto" takes the first field
present of `PROMPT_FIELDS` and `ANSWER_FIELDS`. Answer formats (`reference_answer`): GSM8K's
`"... #### 42"` -> `"42"`, MATH's solution -> its last `\\boxed{...}`, or the plain text.

Order: `dataset_order` is one epoch's grain permutation of `range(n)` (optionally one process's
shard); `epoch_walk` reads any window of the endless sequence of such epochs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxrl_llm.envs.math_answer import extract_boxed
from jaxrl_llm.envs.task import stable_hash

__all__ = ["PROMPT_FIELDS", "ANSWER_FIELDS", "COMPLETION_FIELDS", "ANSWER_FORMATS", "detect_format", "load_jsonl",
           "read_records", "field_map", "reference_answer", "sft_records", "read_sft_records", "dataset_order",
           "epoch_walk"]

PROMPT_FIELDS: tuple[str, ...] = ("prompt", "question", "problem", "query")
ANSWER_FIELDS: tuple[str, ...] = ("answer", "solution", "target", "response")
COMPLETION_FIELDS: tuple[str, ...] = ("completion", "response", "answer", "solution", "target")
ANSWER_FORMATS: tuple[str, ...] = ("auto", "gsm8k", "boxed", "plain")

_JSON_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_GSM8K_MARK = "####"


def detect_format(path: str) -> str:
    """`"jsonl"`, `"parquet"` or `"saved_dataset"` for `path`; raises if it does not exist."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(
                os.path.join(path, "dataset_dict.json")):
            return "saved_dataset"
        raise ValueError(f"{path} is a folder but not one written by datasets' save_to_disk (no state.json or "
                         "dataset_dict.json in it); give a .jsonl, .json or .parquet file or such a folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} not found")
    return "parquet" if path.lower().endswith(_PARQUET_SUFFIXES) else "jsonl"


def read_records(path: str, *, split: str = "") -> list[dict[str, Any]]:
    """Every record of a JSONL / JSON / Parquet file or `save_to_disk` folder, as dicts, in file order.

    split: the split of a `DatasetDict` folder (ignored for files; a folder of one split needs none).
    """
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "parquet":
        records = _read_parquet(path)
    elif kind == "saved_dataset":
        records = _read_saved_dataset(path, split)
    else:
        records = _read_json(path)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def load_jsonl(path: str) -> list[dict[str, Any]]:
    """Read one JSON object per non-empty line; errors name the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} not found")
    records = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not a JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{i + 1} must hold a JSON object; got {type(record).__name__}")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records (an empty file, or only blank lines)")
    return records


def _read_json(path: str) -> list[dict[str, Any]]:
    if path.lower().endswith(".json"):
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):  # one JSON array of objects, not JSON lines
            try:
                with open(path, encoding="utf-8") as f:
                    records = json.load(f)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: not a JSON array of objects ({e})") from None
            bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ValueError(f"{path}: item {bad + 1} of the array must be a JSON object; got "
                                 f"{type(records[bad]).__name__}")
            return records
    return load_jsonl(path)


def _pyarrow(path: str) -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise ImportError(f"reading {path} needs the pyarrow package: pip install pyarrow") from None
    return pyarrow


def _read_parquet(path: str) -> list[dict[str, Any]]:
    pa = _pyarrow(path)
    try:
        table = pa.parquet.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    return table.to_pylist()


def _read_arrow(pa: Any, path: str) -> Any:
    # save_to_disk writes the Arrow IPC stream format; the file format is accepted as well.
    try:
        with pa.memory_map(path) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        try:
            with pa.memory_map(path) as source:
                return pa.ipc.open_file(source).read_all()
        except pa.ArrowException as e:
            raise ValueError(f"{path}: not an Arrow file ({e})") from None


def _read_saved_dataset(path: str, split: str) -> list[dict[str, Any]]:
    pa = _pyarrow(path)
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.isfile(dict_file):
        with open(dict_file, encoding="utf-8") as f:
            splits = list(json.load(f).get("splits", []))
        if not split and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            wanted = f"split {split!r} is not one of them" if split else "pass split=NAME"
            raise ValueError(f"{path} is a DatasetDict with splits {splits}: {wanted} (or point at the split's "
                             f"subfolder, e.g. {os.path.join(path, splits[0]) if splits else path})")
        return _read_saved_dataset(os.path.join(path, split), "")
    state_file = os.path.join(path, "state.json")
    try:
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
        files = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{state_file}: not a save_to_disk state file (expected a '_data_files' list; "
                         f"{e!r})") from None
    if state.get("_indices_data_files"):
        raise ValueError(f"{path} holds an indices mapping (an older datasets version's select/shuffle); save it "
                         "again after dataset.flatten_indices()")
    tables = []
    for name in files:
        arrow = os.path.join(path, name)
        if not os.path.isfile(arrow):
            raise FileNotFoundError(f"{state_file} names {name}, which is not in {path}")
        tables.append(_read_arrow(pa, arrow))
    if not tables:
        return []
    return pa.concat_tables(tables).to_pylist()


def _first_present(record: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    return next((key for key in candidates if key in record and record[key] is not None), None)


def _text(value: Any, where: str, key: str) -> str:
    # Numeric answers (a Parquet int column) become their text; anything else is an error.
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: field {key!r} must be text or a number; got {type(value).__name__}")


def _resolve(record: Mapping[str, Any], field: str, candidates: Sequence[str], role: str, where: str) -> str:
    if field != "auto":
        if field not in record:
            raise ValueError(f"{where}: no {role} field {field!r}; the record's fields are {sorted(record)}")
        return field
    key = _first_present(record, candidates)
    if key is None:
        raise ValueError(f"{where}: no {role} field (looked for {', '.join(candidates)}); the record's fields are "
                         f"{sorted(record)}; name it with {role}_field")
    return key


def field_map(records: Sequence[Mapping[str, Any]], prompt_field: str = "auto", answer_field: str = "auto", *,
              source: str = "records") -> list[tuple[str, str]]:
    """`(prompt, answer)` text of every record.

    prompt_field / answer_field: a field name, or "auto": per record the first present of
    `PROMPT_FIELDS` (prompt, question, problem, query) / `ANSWER_FIELDS` (answer, solution,
    target, response). Errors name `source`, the record (1-based) and the fields it has.
    """
    out = []
    for i, record in enumerate(records):
        where = f"{source}, record {i + 1}"
        p = _resolve(record, prompt_field, PROMPT_FIELDS, "prompt", where)
        a = _resolve(record, answer_field, ANSWER_FIELDS, "answer", where)
        out.append((_text(record[p], where, p), _text(record[a], where, a)))
    return out


def reference_answer(answer: str, answer_format: str = "auto", *, where: str = "answer") -> str:
    """The short reference answer inside a dataset's answer text.

    "gsm8k": the text after the last `####` (`"... #### 1,080"` -> `"1,080"`); "boxed": the
    content of the last `\\boxed{...}`; "plain": the stripped text; "auto": gsm8k if the text has
    `####`, else boxed if it has a complete box, else plain.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}; got {answer_format!r}")
    fmt = answer_format
    if fmt == "auto":
        fmt = "gsm8k" if _GSM8K_MARK in answer else "boxed" if extract_boxed(answer) is not None else "plain"
    if fmt == "gsm8k":
        if _GSM8K_MARK not in answer:
            raise ValueError(f"{where}: answer_format='gsm8k' but the answer has no '####': {answer[-80:]!r}")
        reference = answer.rsplit(_GSM8K_MARK, 1)[1].strip()
    elif fmt == "boxed":
        reference = extract_boxed(answer)
        if reference is None:
            raise ValueError(f"{where}: answer_format='boxed' but the answer has no complete \\boxed{{...}}: "
                             f"{answer[-80:]!r}")
        reference = reference.strip()
    else:
        reference = answer.strip()
    if not reference:
        raise ValueError(f"{where}: the reference answer is empty (answer text {answer[-80:]!r})")
    return reference


def sft_records(records: Sequence[Mapping[str, Any]], *, source: str = "records") -> list[Mapping[str, Any]]:
    """Records for `tokenize_records`: `{"prompt", "completion"}` from the usual field names.

    A record with `messages` (a chat conversation) passes through unchanged, as does a
    `{prompt, completion}` record. Otherwise the prompt is the first present of `PROMPT_FIELDS`
    and the completion of `COMPLETION_FIELDS` (completion, response, answer, solution, target),
    e.g. `{question, answer}` -> `{prompt: question, completion: answer}`. A record with neither
    also passes through, so that the tokenizer's error names the missing field.
    """
    out: list[Mapping[str, Any]] = []
    for i, record in enumerate(records):
        prompt = _first_present(record, PROMPT_FIELDS)
        completion = _first_present(record, COMPLETION_FIELDS)
        if "messages" in record or prompt is None or completion is None or (prompt, completion) == (
                "prompt", "completion"):
            out.append(record)
            continue
        where = f"{source}, record {i + 1}"
        out.append({"prompt": _text(record[prompt], where, prompt),
                    "completion": _text(record[completion], where, completion)})
    return out


def read_sft_records(path: str, *, split: str = "") -> list[Mapping[str, Any]]:
    """`sft_records(read_records(path, split=split))`: SFT records from any supported file."""
    return sft_records(read_records(path, split=split), source=os.fspath(path))


def _check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _epoch_dataset(n: int, seed: int, epoch: int) -> grain.MapDataset:
    # Grain seeds epoch e of `shuffle(seed=s)` with s + e, so (s, e + 1) and (s + 1, e) would
    # share a permutation; hashing (seed, epoch) to the 32-bit seed keeps every pair distinct.
    mixed = stable_hash(f"{seed}/{epoch}", "epoch-order") % 2**32
    return grain.MapDataset.range(n).shuffle(seed=mixed)


def dataset_order(n: int, seed: int, epoch: int = 0, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """`[ceil((n - process_index) / process_count)]` int64: epoch `epoch` of a seeded shuffle of `range(n)`.

    Each (seed, epoch) is its own grain permutation of all `n` records; process `p` of `P` keeps
    positions `p, p + P, p + 2P, ...` of it (`[p::P]`), so the shards are disjoint and together
    cover the epoch.
    """
    n = _check_count(n, "n", 1)
    seed, epoch = _check_count(seed, "seed", 0), _check_count(epoch, "epoch", 0)
    process_count = _check_count(process_count, "process_count", 1)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}); got {process_index}")
    shard = _epoch_dataset(n, seed, epoch)[process_index::process_count]
    return np.fromiter(shard, dtype=np.int64, count=len(shard))


def epoch_walk(n: int, start: int, count: int, *, seed: int = 0) -> np.ndarray:
    """`[count]` int64: positions `[start, start + count)` of the epochs of `dataset_order(n, seed, e)`
    laid end to end (position `k` is item `k % n` of epoch `k // n`).

    A window of `count <= n` consecutive positions never repeats a record unless it crosses an
    epoch boundary; only the window's indices are computed, however large `start` is.
    """
    n, start, count = _check_count(n, "n", 1), _check_count(start, "start", 0), _check_count(count, "count", 0)
    seed = _check_count(seed, "seed", 0)
    parts, pos, end = [], start, start + count
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = min(end - pos, n - offset)
        window = _epoch_dataset(n, seed, epoch)[offset:offset + take]
        parts.append(np.fromiter(window, dtype=np.int64, count=take))
        pos += take
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
