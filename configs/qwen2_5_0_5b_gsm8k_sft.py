"""SFT on GSM8K worked solutions from Qwen2.5-0.5B (base or instruct), chat-formatted (docs/recipes.md).

    python -m jaxrl_llm.cli sft --config configs/qwen2_5_0_5b_gsm8k_sft.py \
        --config.model.init_from=hf:/path/to/Qwen2.5-0.5B-Instruct \
        --config.data.tokenizer=/path/to/Qwen2.5-0.5B-Instruct --config.data.path=/path/to/gsm8k/train.jsonl \
        --config.data.task_kwargs.path=/path/to/gsm8k/train.jsonl \
        --config.data.task_kwargs.eval_path=/path/to/gsm8k/test.jsonl

Records are `question` / `answer` (also prompt/completion, prompt/response or chat `messages`); the
loss covers the answer and the end-of-turn token only. One TPU v5e-8 or 8 x H100: fsdp over 8
devices, 64 rows of 512 tokens per step in 4 micro-batches, bf16 weights with fp32 Adam state and
master weights, `dots` remat. The trained model is exported to `export.hf_dir` for `transformers`
or as the start point of the GRPO recipe (`model.init_from=hf:...`).
"""

import os

from jaxrl_llm.cli import load_config_file

MODEL = "checkpoints/Qwen2.5-0.5B-Instruct"


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_tiny.py"))
    c.output_dir = "runs/qwen2_5_0_5b_gsm8k_sft"

    c.model.init_from = f"hf:{MODEL}"
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots"
    c.model.attention_impl = "auto"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

    c.data.tokenizer = MODEL
    c.data.chat = True
    c.data.path = "data/gsm8k/train.jsonl"
    c.data.seq_len = 512
    c.data.long_records = "drop"
    # Held-out greedy accuracy after training: the dataset task on the GSM8K test file.
    c.data.task = "dataset"
    c.data.task_kwargs.path = c.data.path
    c.data.task_kwargs.eval_path = "data/gsm8k/test.jsonl"
    c.data.task_kwargs.answer_format = "gsm8k"
    c.data.task_kwargs.verifier = "builtin"

    c.train.steps = 500
    c.train.batch_size = 64
    c.train.micro_batches = 4
    c.train.log_every = 10

    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 20
    c.optimizer.end_learning_rate_ratio = 0.1
    c.optimizer.weight_decay = 0.0
    c.optimizer.state_dtype = "float32"
    c.optimizer.master_weights = True

    c.eval.num_problems = 256
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 384

    c.checkpoint.every = 100
    c.export.hf_dir = "runs/qwen2_5_0_5b_gsm8k_sft/hf"
    return c
