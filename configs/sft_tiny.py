"""SFT quickstart: a tiny decoder learns 2-digit addition from scratch on CPU.

    python -m jaxrl_llm.cli sft --config configs/sft_tiny.py
    python -m jaxrl_llm.cli sft --config configs/sft_tiny.py --config.train.steps=50 --config.output_dir=runs/quick

Writes `metrics.jsonl`, `tensorboard/`, `loss.png` and `checkpoints/` under `output_dir` and prints
held-out greedy exact-match accuracy.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.output_dir = "runs/sft_tiny"

    # Model: a preset name plus any ModelConfig field overriding it.
    c.model = ConfigDict()
    c.model.preset = "tiny"
    # Where the weights start: "" (random init of the fields below), "hf:PATH" (a Hugging Face folder:
    # its config.json sets the architecture) or "orbax:RUN_DIR" (a run of this package).
    c.model.init_from = ""
    c.model.vocab_size = 128  # >= the char tokenizer's 99; a power of two shards evenly
    c.model.hidden_size = 128
    c.model.intermediate_size = 256
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    # LoRA (docs/quant.md, "LoRA"): rank > 0 freezes the model and trains low-rank adapters on the targets;
    # the sampler, evaluation and export.hf_dir use the merged weights, <output_dir>/lora_adapters.safetensors
    # holds the adapters alone. RL with LoRA needs rl.dgg.enabled=false (the lm_head is frozen).
    c.model.lora = ConfigDict()
    c.model.lora.rank = 0  # 0 = off (full fine-tuning)
    c.model.lora.alpha = 16.0  # the update is scaled by alpha / rank
    # Regexes, each matched against a weight name or its dotted path ("layers.0.mixer.q_proj"): attention + MLP.
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.model.lora.base_quant = ""  # "", "int8" or "int4": the frozen base quantized (QLoRA)
    c.model.lora.adapters = ""  # "" (a = He-uniform, b = 0) or an adapters file of an earlier run to start from
    c.model.param_dtype = "float32"  # parameter storage: "float32" or "bfloat16" (optimizer.state_dtype, master_weights)
    # Attention kernel (docs/models.md, "Attention implementations and remat"): "auto" (cuDNN on GPU for
    # bf16/fp16, splash on TPU, blockwise XLA on CPU from T*S >= 512*512, else the reference),
    # "reference", "blockwise", "cudnn" or "splash"; attention_block: its query / key block size.
    c.model.attention_impl = "auto"
    c.model.attention_block = 512
    c.model.remat = "none"  # per-layer rematerialisation in the backward: "none", "dots" or "full"

    # Mesh sizes over ("data", "fsdp", "tensor"); -1 takes the remaining devices.
    c.mesh = ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    # Multi-host start-up (jax.distributed.initialize); off on one host.
    c.distributed = ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    c.optimizer = ConfigDict()
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.decay_steps = 0  # 0: decay over train.steps
    c.optimizer.end_learning_rate_ratio = 0.05
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip_norm = 1.0  # 0 disables clipping
    # Optimizer dtypes (docs/training.md, "Memory options"): "" keeps Adam's moments in the params' dtype,
    # "float32" keeps them in fp32; master_weights adds an fp32 copy of the params that the updates step
    # (bf16 params are its rounding, so small updates are not lost; implies fp32 moments).
    c.optimizer.state_dtype = ""
    c.optimizer.master_weights = False

    # Data: the built-in arithmetic task (level 1 = 2-digit addition) or a JSONL of
    # {"prompt", "completion"} records.
    c.data = ConfigDict()
    c.data.task = "arithmetic"  # any registered task (envs.register_task); its arguments in task_kwargs
    c.data.task_kwargs = ConfigDict()  # e.g. --config.data.task_kwargs.easy_fraction=0.5 (keys added from the CLI)
    c.data.level = 1  # the arithmetic task's level
    c.data.eval_fraction = 0.1
    c.data.num_train = 20000
    # SFT records from a file instead of the task: .jsonl / .json / .parquet or a datasets save_to_disk
    # folder of {prompt, completion}, {prompt, response}, {question, answer} or {messages} records
    # (data/datasets.py). With data.task="dataset" it is also the task's prompt file. "" = task records.
    c.data.path = ""
    c.data.jsonl_path = ""  # the older name of data.path (set one of the two)
    # Share of task records shown with the task's privileged prompt (a solved copy in front); raise
    # data.seq_len to fit them (24 for level 1).
    c.data.privileged_fraction = 0.0
    c.data.tokenizer = "char"  # or a path to a tokenizer.json (or a checkpoint folder holding one)
    # Prompts in the checkpoint's chat template (system + user turn, generation prompt; responses end with its
    # end-of-turn token); needs a folder with a chat template. False: [bos] + prompt, responses end with eos.
    c.data.chat = False
    c.data.system_prompt = ""  # with data.chat: a system turn before every prompt ("" = none)
    # Extra variables of the chat template, e.g. --config.data.chat_template_kwargs.enable_thinking=false (Qwen3).
    c.data.chat_template_kwargs = ConfigDict()
    c.data.seq_len = 16
    c.data.packing = False
    c.data.long_records = "fail"  # records longer than seq_len: "fail" before step 1, or "drop" (with a count)

    c.train = ConfigDict()
    c.train.steps = 1500
    c.train.batch_size = 64  # global rows per step
    c.train.micro_batches = 1  # gradient accumulation: batch_size / micro_batches rows at a time
    c.train.log_every = 10
    c.train.progress_bar = True

    # Held-out problems (task.eval_set(num_problems, seed)): greedy exact match after training; the
    # `eval` command adds `samples` sampled responses per problem (pass@1..k, maj@k, lengths).
    c.eval = ConfigDict()
    c.eval.num_problems = 200
    c.eval.batch_size = 100  # problems per decode call
    c.eval.max_new_tokens = 5
    c.eval.samples = 1  # k for pass@k / maj@k (eval command; 0: greedy only)
    c.eval.temperature = 1.0  # the samples' temperature (0: greedy)
    c.eval.top_p = 1.0  # nucleus sampling (1: off)
    c.eval.output = ""  # eval command's JSON (metrics + every problem's samples); "" = <output_dir>/eval.json
    # "" = the config's model (model.init_from or a random init); else a run's output_dir, its
    # checkpoints/ folder or one step folder: that run's parameters (latest step) and architecture.
    c.eval.checkpoint = ""

    # After training, also write a Hugging Face checkpoint (config.json + model.safetensors) here;
    # "" = none. E.g. the teacher of an OPD / AOPD run: rl.teacher.source=hf:DIR.
    c.export = ConfigDict()
    c.export.hf_dir = ""
    c.export.dtype = ""  # stored tensor dtype ("bfloat16", "float32"; "" = the parameters' dtype)

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 500  # 0: only at the end
    c.checkpoint.max_to_keep = 2
    c.checkpoint.resume = False  # continue the run in output_dir (its saved config.json must agree)
    c.checkpoint.fallback = False  # resuming: if the newest checkpoint is damaged, use the newest intact one
    return c
