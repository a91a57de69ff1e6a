"""GRPO on GSM8K from Qwen2.5-0.5B-Instruct, with its tokenizer and chat template (docs/recipes.md).

    python -m jaxrl_llm.cli rl --config configs/qwen2_5_0_5b_gsm8k_grpo.py \
        --config.model.init_from=hf:/path/to/Qwen2.5-0.5B-Instruct \
        --config.data.tokenizer=/path/to/Qwen2.5-0.5B-Instruct \
        --config.data.task_kwargs.path=/path/to/gsm8k/train.jsonl \
        --config.data.task_kwargs.eval_path=/path/to/gsm8k/test.jsonl

Sized for one TPU v5e-8 (16 GB per chip) or one 8 x H100 node: parameters, gradients and Adam state
sharded over 8 devices (`mesh.fsdp = -1`), bf16 weights with fp32 optimizer state and master
weights, 64 prompts x 8 samples x up to 512 new tokens per step, one optimizer pass per batch in 4
minibatches of 128 rows, each accumulated over 4 micro-batches of 32 rows with `dots` remat.
The JSONL holds GSM8K records (`question`, `answer` ending in `#### 42`); any JSONL / Parquet /
`save_to_disk` folder with a question and an answer field works (docs/envs.md).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file

MODEL = "checkpoints/Qwen2.5-0.5B-Instruct"  # a Hugging Face folder: config.json, safetensors, tokenizer


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/qwen2_5_0_5b_gsm8k_grpo"

    # The checkpoint sets the architecture; these choose how it is computed and stored.
    c.model.init_from = f"hf:{MODEL}"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots"  # keep matmul outputs, recompute the rest in the backward
    c.model.attention_impl = "auto"  # splash on TPU, cuDNN flash on GPU, blockwise on CPU
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

    c.data.tokenizer = MODEL
    c.data.chat = True  # prompts rendered with the checkpoint's chat template; stop at <|im_end|>
    c.data.task = "dataset"
    c.data.task_kwargs = ConfigDict({
        "path": "data/gsm8k/train.jsonl",
        "eval_path": "data/gsm8k/test.jsonl",  # "" = a hash split of path by data.eval_fraction
        "answer_format": "gsm8k",  # the reference is what follows '#### '
        "verifier": "builtin",  # integer answers: the built-in checker agrees with math-verify, ~800x faster
    })

    c.sft.train.steps = 0  # an instruct model needs no warm-up

    c.rl.steps = 200
    c.rl.prompts_per_step = 64
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 512
    c.rl.temperature = 1.0
    c.rl.objective = "grpo"
    c.rl.objective_kwargs = ConfigDict({"clip_low": 0.2, "clip_high": 0.2})
    c.rl.advantage = "grpo"
    c.rl.reuse_epochs = 1  # on-policy: one optimizer pass per rollout batch
    c.rl.minibatches = 4  # 128 rows per optimizer step
    c.rl.micro_batches = 4  # 32 rows per forward/backward
    c.rl.prompt_bucket = 64  # prompt widths rounded up to 64 tokens: a handful of compiled shapes
    c.rl.kl_coef = 0.0
    c.rl.dgg.enabled = False  # one pass per batch: nothing to gate
    c.rl.optimizer.learning_rate = 1e-6
    c.rl.optimizer.warmup_steps = 10
    c.rl.optimizer.weight_decay = 0.0
    c.rl.optimizer.grad_clip_norm = 1.0
    c.rl.optimizer.state_dtype = "float32"
    c.rl.optimizer.master_weights = True

    c.eval.num_problems = 256
    c.eval.samples_per_prompt = 4  # eval/pass@4 and eval/maj@4 beside greedy accuracy
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 512
    c.eval.every = 20

    c.checkpoint.every = 20
    c.export.hf_dir = "runs/qwen2_5_0_5b_gsm8k_grpo/hf"
    return c
