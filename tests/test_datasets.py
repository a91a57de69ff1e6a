"""Prompt / SFT records from files (data/datasets.py) and the `dataset` task (envs/dataset_task.py)."""

import json
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.data.datasets import (
    dataset_order,
    epoch_walk,
    field_map,
    read_records,
    read_sft_records,
    reference_answer,
    sft_records,
)
from jaxrl_llm.data.pipeline import BATCH_KEYS, build_sft_dataset
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs import build_task
from jaxrl_llm.envs.dataset_task import DatasetTask
from jaxrl_llm.envs.task import TrainerTask
from jaxrl_llm.train import sft_run

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq

# GSM8K-style records: reasoning, then "#### answer".
RECORDS = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many?",
            "answer": f"He has {i} + {i + 3} = {2 * i + 3} apples.\n#### {2 * i + 3}", "id": i} for i in range(40)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), str(path))
    return str(path)


def test_jsonl_json_parquet_and_save_to_disk_read_identically(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(folder))
    array = tmp_path / "records.json"
    array.write_text(json.dumps(RECORDS))
    sources = [write_jsonl(tmp_path / "r.jsonl", RECORDS), str(array), write_parquet(tmp_path / "r.parquet", RECORDS),
               str(folder)]
    for source in sources:
        assert read_records(source) == RECORDS, source


def test_dataset_dict_folder_needs_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = str(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:30]),
                          "test": datasets.Dataset.from_list(RECORDS[30:])}).save_to_disk(folder)
    assert read_records(folder, split="test") == RECORDS[30:]
    assert read_records(f"{folder}/train") == RECORDS[:30]  # a split's own folder
    with pytest.raises(ValueError, match=r"is a DatasetDict with splits \['train', 'test'\]: pass split=NAME"):
        read_records(folder)
    with pytest.raises(ValueError, match=r"split 'valid' is not one of them"):
        read_records(folder, split="valid")


def test_read_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"data file .*nope.parquet not found"):
        read_records(str(tmp_path / "nope.parquet"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"plain is a folder but not one written by datasets' save_to_disk"):
        read_records(str(tmp_path / "plain"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: not a readable Parquet file"):
        read_records(str(bad))
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        read_records(str(lines))
    array = tmp_path / "bad.json"
    array.write_text('[{"prompt": "a"}, 3]')
    with pytest.raises(ValueError, match=r"bad.json: item 2 of the array must be a JSON object"):
        read_records(str(array))
    good = write_parquet(tmp_path / "good.parquet", RECORDS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"reading .*good.parquet needs the pyarrow package: pip install pyarrow"):
        read_records(good)


def test_field_map_auto_explicit_and_errors():
    records = [{"question": "q1", "answer": "a1"}, {"prompt": "p2", "question": "q2", "solution": "s2"},
               {"problem": "p3", "target": 3}, {"query": "p4", "response": "r4"}]
    assert field_map(records) == [("q1", "a1"), ("p2", "s2"), ("p3", "3"), ("p4", "r4")]
    assert field_map([{"q": "x", "final": 7}], prompt_field="q", answer_field="final") == [("x", "7")]
    with pytest.raises(ValueError, match=r"f.jsonl, record 2: no prompt field \(looked for prompt, question, "
                                         r"problem, query\); the record's fields are \['answer', 'text'\]"):
        field_map([{"question": "q", "answer": "a"}, {"text": "t", "answer": "a"}], source="f.jsonl")
    with pytest.raises(ValueError, match=r"records, record 1: no answer field 'final'; the record's fields are "
                                         r"\['answer', 'question'\]"):
        field_map([{"question": "q", "answer": "a"}], answer_field="final")
    with pytest.raises(ValueError, match=r"field 'answer' must be text or a number; got list"):
        field_map([{"question": "q", "answer": [1]}])


@pytest.mark.parametrize("answer, fmt, reference", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "auto", "72"),
    ("5 + 3 = 8 #### 1,080", "gsm8k", "1,080"),
    ("a #### 1 #### 2", "auto", "2"),  # the last mark
    ("We get $\\boxed{\\frac{1}{2}}$.", "auto", "\\frac{1}{2}"),
    ("First \\boxed{3}, finally \\boxed{\\{1, \\{2\\}\\}}", "boxed", "\\{1, \\{2\\}\\}"),  # last box, nested braces
    (" 42 ", "auto", "42"),
    ("\\boxed{7} #### 8", "plain", "\\boxed{7} #### 8"),
])
def test_reference_answer_formats(answer, fmt, reference):
    assert reference_answer(answer, fmt) == reference


def test_reference_answer_errors():
    with pytest.raises(ValueError, match=r"r3: answer_format='gsm8k' but the answer has no '####'"):
        reference_answer("just 42", "gsm8k", where="r3")
    with pytest.raises(ValueError, match=r"answer_format='boxed' but the answer has no complete"):
        reference_answer("\\boxed{1", "boxed")
    with pytest.raises(ValueError, match=r"answer_format must be one of"):
        reference_answer("1", "latex")
    with pytest.raises(ValueError, match=r"the reference answer is empty"):
        reference_answer("no answer ####  ", "auto")


def test_dataset_order_is_a_seeded_permutation_per_epoch_with_disjoint_shards():
    n = 23
    first = dataset_order(n, seed=5, epoch=0)
    assert first.shape == (n,) and sorted(first.tolist()) == list(range(n))
    np.testing.assert_array_equal(first, dataset_order(n, seed=5, epoch=0))
    others = [dataset_order(n, 5, 1), dataset_order(n, 6, 0), dataset_order(n, 4, 1)]
    for other in others:
        assert sorted(other.tolist()) == list(range(n)) and not np.array_equal(other, first)
    # grain's shuffle(seed=s) would give (5, 1) and (6, 0) the same order; the mixed seeds do not
    assert not np.array_equal(others[0], others[1])
    shards = [dataset_order(n, 5, 0, process_index=p, process_count=3) for p in range(3)]
    assert [len(s) for s in shards] == [8, 8, 7]
    np.testing.assert_array_equal(np.concatenate(shards), np.concatenate([first[p::3] for p in range(3)]))
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    with pytest.raises(ValueError, match=r"process_index must be in \[0, 3\); got 3"):
        dataset_order(n, 5, 0, process_index=3, process_count=3)


def test_epoch_walk_reads_windows_of_the_epochs_end_to_end():
    n = 10
    stream = np.concatenate([dataset_order(n, 2, e) for e in range(3)])
    np.testing.assert_array_equal(epoch_walk(n, 0, 30, seed=2), stream)
    np.testing.assert_array_equal(epoch_walk(n, 7, 9, seed=2), stream[7:16])  # across an epoch boundary
    assert epoch_walk(n, 3, 0).shape == (0,)
    far = epoch_walk(n, 10**15 + 4, 3, seed=2)  # only the window is computed
    np.testing.assert_array_equal(far, dataset_order(n, 2, 10**14)[4:7])


def data_cfg(**task_kwargs):
    return ConfigDict({"task": "dataset", "task_kwargs": ConfigDict(task_kwargs), "eval_fraction": 0.25,
                       "path": "", "level": 1})


def test_dataset_task_through_build_task(tmp_path):
    path = write_parquet(tmp_path / "gsm.parquet", RECORDS)
    task = build_task(data_cfg(path=path, template="Q: {question}\nA:"))
    assert isinstance(task, DatasetTask) and isinstance(task, TrainerTask)
    n_train, n_eval = task.num_problems("train"), task.num_problems("eval")
    assert n_train + n_eval == 40 and 3 <= n_eval <= 20
    train = {p.prompt for p in (task.problem(i, "train") for i in range(n_train))}
    held_out = task.eval_set(0)
    assert len(held_out) == n_eval and not train & {p.prompt for p in held_out}
    assert task.eval_set(10**6) == held_out and [p.prompt for p in task.eval_set(2, seed=9)] == [
        p.prompt for p in held_out[:2]]
    # the split of a question is a pure function of its text: a smaller file splits its questions alike
    smaller = DatasetTask(write_jsonl(tmp_path / "half.jsonl", RECORDS[::2]), eval_fraction=0.25,
                          template="Q: {question}\nA:")
    assert 0 < len(smaller.eval_set(0)) < n_eval
    assert {p.prompt for p in smaller.eval_set(0)} <= {p.prompt for p in held_out}
    # consecutive seeds walk one shuffled epoch of the training records, the same on every call
    batch = task.sample_batch(4, seed=0)
    assert [p.prompt for p in batch] == [p.prompt for p in task.sample_batch(4, seed=0)]
    walked = [p.prompt for s in range(n_train) for p in task.sample_batch(1, seed=s)]
    assert sorted(walked) == sorted(train)
    assert walked[:4] == [p.prompt for p in batch]
    p = batch[0]
    i = int(p.prompt.split()[3])  # "Q: Tom has I apples ..."
    assert p.prompt == f"Q: Tom has {i} apples and buys {i + 3} more. How many?\nA:"
    assert p.reference == str(2 * i + 3) and p.metadata["split"] == "train"
    assert task.sft_target(p) == RECORDS[i]["answer"]  # the full solution, "#### N" included
    assert task.score(p, f"so \\boxed{{{2 * i + 3}}}") == 1.0
    assert task.score(p, f"... #### {2 * i + 3}") == 1.0
    assert task.score(p, f"so \\boxed{{{2 * i + 4}}}") == 0.0


def test_dataset_task_held_out_file_split_and_options(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:30])
    test = write_jsonl(tmp_path / "test.jsonl", RECORDS[30:])
    task = DatasetTask(train, eval_path=test, verifier="builtin")
    assert task.num_problems("train") == 30 and [p.reference for p in task.eval_set(0)] == [
        str(2 * i + 3) for i in range(30, 40)]
    folder = str(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:30]),
                          "test": datasets.Dataset.from_list(RECORDS[30:])}).save_to_disk(folder)
    from_folder = DatasetTask(folder, split="train", eval_split="test", max_records=5)
    assert from_folder.num_problems("train") == 5 and len(from_folder.eval_set(0)) == 5
    math = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "Two and two?", "solution": "Four: \\boxed{4}", "answer": "4"}])
    math_task = DatasetTask(math, eval_fraction=0.0)
    problems = [math_task.problem(i) for i in range(2)]
    assert [p.reference for p in problems] == ["\\frac{1}{2}", "4"]
    assert [math_task.sft_target(p) for p in problems] == ["It is $\\boxed{\\frac{1}{2}}$.", "Four: \\boxed{4}"]
    assert math_task.score(problems[0], "\\boxed{0.5}") == 1.0
    with pytest.raises(ValueError, match=r"the 'eval' split holds no records; set eval_path / eval_split"):
        math_task.eval_set(4)
    with pytest.raises(ValueError, match=r"data.task='dataset' .*needs a file: set data.task_kwargs.path"):
        build_task(data_cfg())
    with pytest.raises(ValueError, match=r"data.task_kwargs \['colour'\] are not arguments of task 'dataset'"):
        build_task(data_cfg(path=train, colour=1))
    with pytest.raises(ValueError, match=r"verifier must be one of"):
        DatasetTask(train, verifier="sympy")


def test_math_verify_verifier_without_the_package(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "r.jsonl", RECORDS)
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match=r"pip install math-verify"):
        build_task(data_cfg(path=path, verifier="math_verify"))
    task = DatasetTask(path)  # "auto" falls back to the built-in checker
    p = task.sample(0)
    assert task.score(p, f"so {p.reference}.") == 1.0


def test_sft_records_mapping_and_messages_pass_through():
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    same = {"prompt": "1+1=", "completion": "2", "extra": 1}
    records = [same, {"prompt": "2+2=", "response": "4"}, {"question": "3+3?", "answer": 6}, chat, {"prompt": "x"}]
    out = sft_records(records)
    assert out[0] is same and out[3] is chat and out[4] is records[4]
    assert out[1:3] == [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3?", "completion": "6"}]


def test_sft_config_reads_a_parquet_file(tmp_path):
    records = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(4)]
    path = write_parquet(tmp_path / "sft.parquet", records)
    cfg = load_config_file("configs/sft_tiny.py")
    for key, value in {"data.path": path, "mesh.fsdp": 1, "train.batch_size": 8}.items():
        apply_override(cfg, key, str(value))
    sft_run.check_sft_config(cfg)
    assert sft_run.training_records(cfg.data, 0) == path
    assert read_sft_records(path) == [{"prompt": r["question"], "completion": r["answer"]} for r in records]
    tok = CharTokenizer()
    from_file = next(iter(build_sft_dataset(sft_run.training_records(cfg.data, 0), tok, seq_len=16, batch_size=8)))
    in_memory = next(iter(build_sft_dataset([{"prompt": r["question"], "completion": r["answer"]} for r in records],
                                            tok, seq_len=16, batch_size=8)))
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(from_file[key], in_memory[key])
    assert tok.decode(from_file["tokens"][0][from_file["loss_mask"][0] == 1].tolist()).isdigit()
    # the older field still works, and naming two different files fails
    legacy = write_jsonl(tmp_path / "sft.jsonl", records)
    assert sft_run.training_records({**cfg.data.to_dict(), "path": "", "jsonl_path": legacy}, 0) == legacy
    with pytest.raises(ValueError, match=r"data.path=.* and data.jsonl_path=.* both name SFT records"):
        sft_run.training_records({**cfg.data.to_dict(), "jsonl_path": legacy}, 0)
    apply_override(cfg, "data.path", str(tmp_path / "missing.parquet"))
    with pytest.raises(FileNotFoundError, match=r"data.path='.*missing.parquet': no such file"):
        sft_run.check_sft_config(cfg)
