"""From a Hugging Face folder to a Hugging Face folder, as a user would run it: a tiny random Qwen2 /
Qwen3 / Llama saved by `transformers` with a locally trained BPE tokenizer and the family's real chat
template; `sft` on a Parquet file and `rl` on a JSONL file (the `dataset` task, GSM8K answers), both
with chat-formatted prompts, 2 steps each from `model.init_from=hf:`; the exported result reloads in
`transformers` with our logits."""

import json
import os

import numpy as np
import pytest

from jaxrl_llm import cli

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from hf_tiny import make_hf_checkpoint  # noqa: E402

PROBLEMS = [(a, b) for a in range(3, 40, 3) for b in range(2, 9)]


def _gsm8k_records():
    return [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a, b in PROBLEMS]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    records = _gsm8k_records()
    jsonl = root / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = root / "train.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    return str(jsonl), str(parquet)


def _logits_match(our_dir, tokens):
    from jaxrl_llm.models.hf import load_pretrained

    model, _ = load_pretrained(our_dir)
    ours, _ = model(np.asarray([tokens], np.int32), np.arange(len(tokens), dtype=np.int32)[None])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(our_dir, dtype=torch.float32)
    with torch.no_grad():
        ref = theirs(torch.tensor([tokens])).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-4, rtol=2e-4)


COMMON = ["--config.data.chat=true", "--config.mesh.fsdp=1", "--config.checkpoint.every=0"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_sft_then_rl_from_a_hugging_face_folder_with_its_chat_template(family, data_files, tmp_path):
    jsonl, parquet = data_files
    ckpt = str(make_hf_checkpoint(tmp_path / "ckpt", family))
    sft_out, sft_hf = tmp_path / "sft", tmp_path / "sft_hf"
    args = ["sft", "--config", "configs/sft_tiny.py", f"--config.output_dir={sft_out}",
            f"--config.model.init_from=hf:{ckpt}", f"--config.data.tokenizer={ckpt}", f"--config.data.path={parquet}",
            "--config.data.seq_len=192", "--config.train.steps=2", "--config.train.batch_size=4", "--config.train.log_every=1",
            "--config.train.progress_bar=false", "--config.eval.num_problems=0", "--config.optimizer.warmup_steps=0",
            "--config.optimizer.learning_rate=1e-3", f"--config.export.hf_dir={sft_hf}", *COMMON]
    assert cli.main(args) == 0
    with open(sft_out / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The export is a complete checkpoint: weights, config and the tokenizer with its template.
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(sft_hf))
    tok = transformers.AutoTokenizer.from_pretrained(str(sft_hf))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 apples."}], add_generation_prompt=True,
                                   return_dict=False)
    _logits_match(str(sft_hf), list(prompt))

    rl_out, rl_hf = tmp_path / "rl", tmp_path / "rl_hf"
    args = ["rl", "--config", "configs/quickstart.py", f"--config.output_dir={rl_out}",
            f"--config.model.init_from=hf:{sft_hf}", f"--config.data.tokenizer={sft_hf}", "--config.data.task=dataset",
            f"--config.data.task_kwargs.path={jsonl}", "--config.data.task_kwargs.verifier=builtin",
            "--config.sft.train.steps=0", "--config.rl.steps=2", "--config.rl.prompts_per_step=2",
            "--config.rl.samples_per_prompt=2", "--config.rl.max_new_tokens=6", "--config.rl.reuse_epochs=1",
            "--config.rl.progress_bar=false", "--config.rl.dgg.window=2", "--config.eval.num_problems=2",
            "--config.eval.samples_per_prompt=1", "--config.eval.batch_size=2", "--config.eval.max_new_tokens=4",
            f"--config.export.hf_dir={rl_hf}", *COMMON]
    assert cli.main(args) == 0
    with open(rl_out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    steps = [r for r in rows if "rollout/tokens" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # Sampler and learner agree on the sampled tokens of the chat-formatted prompts.
    assert all(r["rollout/mismatch_abs_logp"] < 1e-4 for r in steps)
    _logits_match(str(rl_hf), list(prompt))
