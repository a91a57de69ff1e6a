"""Bad inputs fail before anything is built or compiled, naming the file (and line) or the field."""

import json

import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.data.pipeline import build_sft_dataset
from jaxrl_llm.data.tokenizer import CharTokenizer, HFTokenizer
from jaxrl_llm.train import rl as rl_module
from jaxrl_llm.train import sft_run

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1}


@pytest.fixture(autouse=True)
def nothing_builds(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the bad input was reported")

    monkeypatch.setattr(sft_run, "build_policy", fail)
    monkeypatch.setattr(rl_module, "initial_policy", fail)


def configured(path, tmp_path, **fields):
    cfg = load_config_file(path)
    for k, v in {**SMALL, "output_dir": str(tmp_path / "run"), **fields}.items():
        apply_override(cfg, k, str(v))
    return cfg


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("content, message", [
    (b"", r"empty.jsonl holds no records"),
    (b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "a\xff"}\n', r"empty.jsonl:2: not UTF-8"),
    (b'{"prompt": "1+1=", "completion": "2"}\n\n{"prompt": \n', r"empty.jsonl:3: not a JSON line"),
    (b'{"prompt": "1+1=", "completion": "2"}\n[1]\n', r"empty.jsonl:2 must hold a JSON object"),
    (b'{"prompt": "1+1="}\n', r"empty.jsonl, record 1: record must have a string field 'completion'"),
    (b'{"prompt": "1+1=", "completion": "2"}\n' * 3 + b'{"prompt": "' + b"1" * 40 + b'", "completion": "2"}\n',
     r"empty.jsonl: 1 of 4 records exceed data.seq_len=16 tokens \(first: record 4\); raise data.seq_len "
     r"or set data.long_records='drop'"),
])
def test_bad_sft_data_fails_before_the_model_is_built(content, message, tmp_path):
    data = write(tmp_path / "empty.jsonl", content)
    with pytest.raises(ValueError, match=message):
        sft_run.run_sft(configured("configs/sft_tiny.py", tmp_path, **{"data.jsonl_path": data}))


def test_long_records_can_be_dropped_with_a_count(tmp_path):
    records = [{"prompt": "1+1=", "completion": "2"}] * 5 + [{"prompt": "1" * 40, "completion": "2"}]
    with pytest.warns(UserWarning, match=r"dropped 1 of 6 records longer than data.seq_len=16"):
        ds = build_sft_dataset(records, CharTokenizer(), seq_len=16, batch_size=2, long_records="drop")
    batch = next(iter(ds))
    assert batch["tokens"].shape == (2, 16)


@pytest.mark.parametrize("field, value, message", [
    ("train.steps", -1, r"train.steps must be an integer >= 1; got -1"),
    ("train.batch_size", 0, r"train.batch_size must be an integer >= 1; got 0"),
    ("train.micro_batches", 3, r"train.micro_batches=3 must divide train.batch_size=64"),
    ("optimizer.learning_rate", -1.0, r"optimizer.learning_rate must be > 0; got -1.0"),
    ("data.long_records", "skip", r"data.long_records must be 'fail' or 'drop'; got 'skip'"),
    ("data.task", "nope", r"data.task='nope' is not a registered task"),
    ("data.jsonl_path", "/no/such.jsonl", r"data.jsonl_path='/no/such.jsonl': no such file"),
    ("checkpoint.max_to_keep", 0, r"checkpoint.max_to_keep must be an integer >= 1"),
])
def test_bad_sft_fields_are_named(field, value, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sft_run.run_sft(configured("configs/sft_tiny.py", tmp_path, **{field: value}))


@pytest.mark.parametrize("field, value, message", [
    ("rl.rollout_quant", "int3", r"rl.rollout_quant must be '', 'int8', 'int4' or 'fp8'; got 'int3'"),
    ("rl.optimizer.learning_rate", -1e-3, r"rl.optimizer.learning_rate must be > 0"),
    ("rl.advantage", "nope", r"unknown advantage estimator 'nope'"),
    ("sft.train.batch_size", 0, r"train.batch_size must be an integer >= 1"),  # the warm-up's, before it runs
    ("rl.step_labels.judge_false_positive", 1.5,
     r"rl.step_labels.judge_false_positive must be a probability in \[0, 1\]; got 1.5"),
])
def test_bad_rl_fields_fail_before_the_warm_up(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        rl_module.run_rl(configured("configs/quickstart.py", tmp_path, **{field: value}))


def test_bad_tokenizer_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"tok/tokenizer.json: not a valid tokenizer.json"):
        (tmp_path / "tok").mkdir()
        write(tmp_path / "tok" / "tokenizer.json", b"{bad")
        HFTokenizer.from_file(tmp_path / "tok")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(tmp_path / "tok" / "tokenizer.json"))
    write(tmp_path / "tok" / "tokenizer_config.json", b"{bad")
    with pytest.raises(ValueError, match=r"tok/tokenizer_config.json: not valid JSON"):
        HFTokenizer.from_file(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_a_batch_the_mesh_rows_do_not_divide_is_an_error_not_replication(tmp_path):
    # 8 host devices (tests/conftest.py): fsdp=8 splits rows 8 ways; 4 rows per micro-batch cannot be split.
    cfg = configured("configs/sft_tiny.py", tmp_path, **{"mesh.fsdp": 8, "train.batch_size": 8,
                                                         "train.micro_batches": 2})
    with pytest.raises(ValueError, match=r"train.batch_size / train.micro_batches = 4 rows must be a multiple of "
                                         r"the mesh's 8 row shards"):
        sft_run.run_sft(cfg)
    cfg = configured("configs/quickstart.py", tmp_path, **{"mesh.fsdp": 8, "rl.prompts_per_step": 2,
                                                           "rl.samples_per_prompt": 2})
    with pytest.raises(ValueError, match=r"= 4 rows must be a multiple of the mesh's 8 row shards"):
        rl_module.run_rl(cfg)


@pytest.mark.parametrize("path, run", [("configs/sft_tiny.py", sft_run.run_sft), ("configs/quickstart.py", rl_module.run_rl)])
def test_an_eval_set_larger_than_the_task_fails_before_training(path, run, tmp_path):
    # arithmetic level 0 has 100 prompts, about 10 of them held out: 200 distinct ones cannot be drawn
    with pytest.raises(ValueError, match=r"n=200 distinct eval problems requested but only \d+ were found"):
        run(configured(path, tmp_path, **{"data.level": 0, "eval.num_problems": 200}))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_eval_too_short_for_the_trained_completions_fails_before_training(tmp_path):
    # sft_tiny's 5 new tokens hold an addition answer, not an ArithChain worked solution
    # ("12+7=19;19-30=-11;#-11": one token a character with the char tokenizer)
    cfg = configured("configs/sft_tiny.py", tmp_path, **{"data.task": "arith_chain", "data.seq_len": 64,
                                                         "data.task_kwargs.num_operands": 3})
    with pytest.raises(ValueError, match=r"eval.max_new_tokens=5 is shorter than the held-out completions of "
                                         r"data.task='arith_chain' \(up to \d+ tokens; \d+ of 200 longer\)") as error:
        sft_run.run_sft(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    longest = int(str(error.value).split("up to ")[1].split()[0])
    assert 16 <= longest <= 27  # 3 operands of 1-2 digits: "1+2=3;3+4=7;#7" .. "99+99=198;198+99=297;#297"
    apply_override(cfg, "eval.max_new_tokens", str(longest))
    sft_run.check_eval_length(cfg, CharTokenizer())  # enough: no error
    apply_override(cfg, "eval.max_new_tokens", str(longest - 1))
    with pytest.raises(ValueError, match=f"up to {longest} tokens"):
        sft_run.check_eval_length(cfg, CharTokenizer())
