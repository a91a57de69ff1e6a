"""DAPO on MATH from Qwen3-0.6B, non-thinking chat mode, `\\boxed{}` answers checked by math-verify.

    python -m jaxrl_llm.cli rl --config configs/qwen3_0_6b_math_dapo.py \
        --config.model.init_from=hf:/path/to/Qwen3-0.6B --config.data.tokenizer=/path/to/Qwen3-0.6B \
        --config.data.task_kwargs.path=/path/to/math/train.parquet \
        --config.data.task_kwargs.eval_path=/path/to/math/test.parquet

Sized for one TPU v5e-8 or one 8 x H100 node (docs/recipes.md): fsdp over 8 devices, bf16 weights
with fp32 optimizer state and master weights, 32 informative prompts x 8 samples x up to 2048 new
tokens per step (dynamic sampling refills uniform groups), clip-higher, token-mean loss, the soft
overlong penalty over the last 512 tokens, 8 micro-batches of 32 rows with full remat. Records hold
`problem` and `solution` (the answer is the solution's last `\\boxed{...}`).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file

MODEL = "checkpoints/Qwen3-0.6B"


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/qwen3_0_6b_math_dapo"

    c.model.init_from = f"hf:{MODEL}"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"  # 2k-token responses: recompute each layer in the backward
    c.model.attention_impl = "auto"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

    c.data.tokenizer = MODEL
    c.data.chat = True
    c.data.chat_template_kwargs = ConfigDict({"enable_thinking": False})  # Qwen3's non-thinking mode
    c.data.task = "dataset"
    c.data.task_kwargs = ConfigDict({
        "path": "data/math/train.parquet",
        "eval_path": "data/math/test.parquet",
        "answer_format": "boxed",
        "verifier": "math_verify",  # LaTeX, fractions, intervals; needs `pip install math-verify`
    })

    c.sft.train.steps = 0

    c.rl.steps = 300
    c.rl.prompts_per_step = 32
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 2048
    c.rl.objective = "dapo"
    c.rl.objective_kwargs = ConfigDict({"clip_low": 0.2, "clip_high": 0.28})
    c.rl.advantage = "grpo"
    c.rl.dynamic_sampling.enabled = True
    c.rl.dynamic_sampling.max_rounds = 4
    c.rl.overlong.cache_length = 512
    c.rl.reuse_epochs = 1
    c.rl.minibatches = 1  # 256 rows per optimizer step
    c.rl.micro_batches = 8  # 32 rows per forward/backward
    c.rl.prompt_bucket = 64
    c.rl.kl_coef = 0.0
    c.rl.dgg.enabled = False
    c.rl.optimizer.learning_rate = 1e-6
    c.rl.optimizer.warmup_steps = 10
    c.rl.optimizer.weight_decay = 0.1
    c.rl.optimizer.state_dtype = "float32"
    c.rl.optimizer.master_weights = True

    c.eval.num_problems = 500
    c.eval.samples_per_prompt = 4
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 2048
    c.eval.every = 25

    c.checkpoint.every = 25
    c.export.hf_dir = "runs/qwen3_0_6b_math_dapo/hf"
    return c
