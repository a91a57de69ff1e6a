"""Grain SFT pipeline: tokenisation, padding, packing, shuffling and checkpointable iteration."""

import json

import numpy as np
import pytest

from jaxrl_llm.data.pipeline import BATCH_KEYS, build_sft_dataset, load_jsonl, pad_example, tokenize_record
from jaxrl_llm.data.tokenizer import CharTokenizer

TOK = CharTokenizer()
RECORDS = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(20)]


def test_tokenize_supervises_completion_and_eos_only():
    ex = tokenize_record({"prompt": "1+2=", "completion": "3"}, TOK, max_len=16)
    expected = [TOK.bos_id] + TOK.encode("1+2=") + TOK.encode("3") + [TOK.eos_id]
    np.testing.assert_array_equal(ex["tokens"], expected)
    np.testing.assert_array_equal(ex["loss_mask"], [0, 0, 0, 0, 0, 1, 1])


def test_records_too_long_or_malformed_fail_clearly():
    with pytest.raises(ValueError, match="exceeds data.seq_len=4"):
        tokenize_record({"prompt": "12+34=", "completion": "46"}, TOK, max_len=4)
    with pytest.raises(ValueError, match="string field 'completion'"):
        tokenize_record({"prompt": "1+1="}, TOK, max_len=8)


def test_pad_example_fills_one_segment_and_zero_padding():
    out = pad_example({"tokens": np.array([5, 6, 7]), "loss_mask": np.array([0, 1, 1])}, 5, pad_id=0)
    np.testing.assert_array_equal(out["tokens"], [5, 6, 7, 0, 0])
    np.testing.assert_array_equal(out["positions"], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(out["segment_ids"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["loss_mask"], [0, 1, 1, 0, 0])


def decode_rows(batch):
    """Per row, the (prompt, completion) texts of each segment, using positions/segments/mask."""
    rows = []
    for b in range(batch["tokens"].shape[0]):
        segs = []
        for s in sorted(set(batch["segment_ids"][b]) - {0}):
            idx = np.nonzero(batch["segment_ids"][b] == s)[0]
            np.testing.assert_array_equal(batch["positions"][b, idx], np.arange(len(idx)))
            toks, mask = batch["tokens"][b, idx], batch["loss_mask"][b, idx]
            assert toks[0] == TOK.bos_id and toks[-1] == TOK.eos_id
            segs.append((TOK.decode(toks[mask == 0]), TOK.decode(toks[mask == 1])))
        rows.append(segs)
    return rows


@pytest.mark.parametrize("packing", [False, True])
def test_batches_hold_every_record_intact(packing):
    ds = build_sft_dataset(RECORDS, TOK, seq_len=24, batch_size=2, seed=0, packing=packing, num_epochs=1)
    batches = list(ds)
    seen = []
    for batch in batches:
        assert set(batch) == set(BATCH_KEYS)
        assert all(v.shape == (2, 24) and v.dtype == np.int32 for v in batch.values())
        assert np.all(batch["tokens"][batch["segment_ids"] == 0] == TOK.pad_id)
        assert np.all(batch["loss_mask"][batch["segment_ids"] == 0] == 0)
        seen += [seg for row in decode_rows(batch) for seg in row]
    if packing:
        assert max(b["segment_ids"].max() for b in batches) >= 2  # rows really hold several examples
    expected = {(r["prompt"], r["completion"]) for r in RECORDS}
    assert set(seen) <= expected
    # Padding mode drops only the incomplete final batch; packing may drop a partial last row group.
    assert len(seen) >= len(RECORDS) - (1 if not packing else 6)
    assert len(seen) == len(set(seen))


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    def order(seed):
        ds = build_sft_dataset(RECORDS, TOK, seq_len=16, batch_size=4, seed=seed, num_epochs=2)
        return [seg for b in ds for row in decode_rows(b) for seg in row]

    a, b, c = order(0), order(0), order(1)
    assert a == b and a != c
    assert a[:20] != a[20:] and sorted(a[:20]) == sorted(a[20:])


def test_iterator_state_restores_the_exact_stream():
    for packing in (False, True):
        ds = build_sft_dataset(RECORDS, TOK, seq_len=24, batch_size=2, seed=3, packing=packing)
        it = iter(ds)
        for _ in range(3):
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(4)]
        other = iter(ds)
        other.set_state(state)
        for want in expected:
            got = next(other)
            for key in BATCH_KEYS:
                np.testing.assert_array_equal(got[key], want[key])


def test_jsonl_source_matches_in_memory_records(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert load_jsonl(str(path)) == RECORDS
    from_file = next(iter(build_sft_dataset(str(path), TOK, seq_len=16, batch_size=4, seed=5)))
    from_list = next(iter(build_sft_dataset(RECORDS, TOK, seq_len=16, batch_size=4, seed=5)))
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(from_file[key], from_list[key])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="data.seq_len must be >= 2"):
        build_sft_dataset(RECORDS, TOK, seq_len=1, batch_size=2)
    with pytest.raises(ValueError, match="records must not be empty"):
        build_sft_dataset([], TOK, seq_len=8, batch_size=2)
