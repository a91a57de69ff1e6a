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
    # A random model rarely emits <|im_end|> within 6 tokens: the run says so, naming the field.
    with pytest.warns(UserWarning, match=r"of responses reached rl.max_new_tokens=6 tokens"):
        assert cli.main(args) == 0
    with open(rl_out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    steps = [r for r in rows if "rollout/tokens" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # Sampler and learner agree on the sampled tokens of the chat-formatted prompts.
    assert all(r["rollout/mismatch_abs_logp"] < 1e-4 for r in steps)
    _logits_match(str(rl_hf), list(prompt))


HF_RECIPES = {"configs/qwen2_5_0_5b_gsm8k_grpo.py": ("qwen2", "jsonl"),
              "configs/qwen3_0_6b_math_dapo.py": ("qwen3", "parquet"),
              "configs/qwen2_5_0_5b_gsm8k_sft.py": ("qwen2", "jsonl")}
# The recipes' shapes scaled down to CPU; everything else (chat, dataset task, remat, dtypes, micro-batches,
# minibatches, dynamic sampling, the overlong window) is the recipe's own.
REDUCED_RL = {"rl.steps": 1, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 4, "rl.max_new_tokens": 8,
              "rl.progress_bar": False, "rl.prompt_bucket": 16, "rl.overlong.cache_length": 0,
              "eval.num_problems": 2, "eval.samples_per_prompt": 2, "eval.batch_size": 2,
              "eval.max_new_tokens": 4, "checkpoint.every": 0, "rl.optimizer.warmup_steps": 0, "mesh.fsdp": 2}
REDUCED_SFT = {"train.steps": 2, "train.batch_size": 4, "train.log_every": 1, "train.progress_bar": False,
               "data.seq_len": 192, "eval.num_problems": 2, "eval.batch_size": 2, "eval.max_new_tokens": 4,
               "checkpoint.every": 0, "optimizer.warmup_steps": 0, "mesh.fsdp": 2, "train.micro_batches": 2}


def _math_records():
    return [{"problem": f"What is ${a} + {b}$?", "solution": f"${a} + {b} = \\boxed{{{a + b}}}$"}
            for a, b in PROBLEMS]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(HF_RECIPES))
def test_the_checkpoint_recipes_run_reduced_from_the_cli(recipe, data_files, tmp_path):
    """Each docs/recipes.md command, with a tiny local checkpoint and data file in place of the real
    ones and the batch shrunk, runs one reduced step and exports a transformers-loadable folder."""
    family, kind = HF_RECIPES[recipe]
    ckpt = str(make_hf_checkpoint(tmp_path / "ckpt", family))
    jsonl, parquet = data_files
    if "math" in recipe:
        train = tmp_path / "math.parquet"
        pq.write_table(pa.Table.from_pylist(_math_records()), train)
        train = str(train)
    else:
        train = jsonl if kind == "jsonl" else parquet
    command = "sft" if recipe.endswith("_sft.py") else "rl"
    overrides = dict(REDUCED_SFT if command == "sft" else REDUCED_RL)
    overrides.update({"model.init_from": f"hf:{ckpt}", "data.tokenizer": ckpt, "output_dir": tmp_path / "run",
                      "export.hf_dir": tmp_path / "hf", "data.task_kwargs.path": train,
                      "data.task_kwargs.eval_path": train})
    if command == "sft":
        overrides["data.path"] = train
    else:
        overrides["rl.micro_batches"] = 2
        overrides["rl.minibatches"] = min(int(cli.load_config_file(recipe).rl.minibatches), 2)
    args = [command, "--config", recipe] + [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(args) == 0
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(np.isfinite(losses))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                     return_dict=False)
    _logits_match(str(tmp_path / "hf"), list(prompt))
