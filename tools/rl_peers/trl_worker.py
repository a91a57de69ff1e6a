"""TRL's `GRPOTrainer` step at the RL-step benchmark's shape, one step per request (`protocol.py`).

    /tmp/trlvenv/bin/python tools/rl_peers/trl_worker.py CONFIG_JSON   # started by tools/bench_rl_step.py

Built once: a Qwen3 `transformers` model from a `Qwen3Config` at the shape (random weights, fp32,
transformers' default attention for Qwen3), saved with `save_pretrained` into
`<work_dir>/trl_model` together with the benchmark's tokenizer (`task.py`, loaded as a
`PreTrainedTokenizerFast`), and a `GRPOTrainer` over that folder: `num_generations` samples per
prompt, `per_device_train_batch_size = prompts x samples`, `max_completion_length = new_tokens`,
`generation_kwargs = {"min_new_tokens": new_tokens}` (eos is masked until the last token, so every
completion has exactly `new_tokens` tokens), gradient accumulation 1, `num_iterations = 1`,
`beta = 0` (no reference model), no vLLM, no gradient checkpointing, fp32 (`bf16 = False`), AdamW
(`optim` as TRL's default) at a constant learning rate with `max_grad_norm = 1`, logging and saving
off, `report_to = "none"`. Nothing is downloaded.

What is timed. `trainer.train(max_steps = total_steps)` runs, and a `TrainerCallback` blocks in
`on_step_begin` until the parent's request arrives, sets `torch.set_num_threads(request["threads"])`,
and reads the clock; `on_step_end` reads it again and answers. So a step is everything the Trainer
does for one optimizer update between those two events: `training_step` (TRL's
`_prepare_inputs` -> `_generate_and_score_completions`: generation with `model.generate`, reward,
group advantages; then the loss forward and backward), gradient clipping, `optimizer.step()`, the
scheduler step and `zero_grad`. Left out: the data loader's fetch of the step's prompt strings
(before `on_step_begin`) and the Trainer's logging hook after `on_step_end` (logging is off).
Phases: `rollout_s` is the wall time of `_generate_and_score_completions` (a wrapper on the
trainer instance), `optimizer_s` the time between `on_pre_optimizer_step` and `on_optimizer_step`,
`update_s = step_s - rollout_s` (loss forward/backward, clipping and the optimizer step).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rl_peers import task  # noqa: E402
from rl_peers.protocol import Channel  # noqa: E402


def save_model_folder(cfg: dict, folder: str) -> str:
    """A random-init Qwen3 `transformers` model at `cfg["model"]` plus the tokenizer, saved in `folder`."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    m = cfg["model"]
    config = Qwen3Config(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                         intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_layers"],
                         num_attention_heads=m["num_heads"], num_key_value_heads=m["num_kv_heads"],
                         head_dim=m["head_dim"], rope_theta=m["rope_theta"], rms_norm_eps=m["rms_norm_eps"],
                         tie_word_embeddings=m["tie_word_embeddings"], max_position_embeddings=4096,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, dtype="float32")
    torch.manual_seed(int(cfg["seed"]))
    Qwen3ForCausalLM(config).to(torch.float32).save_pretrained(folder)
    PreTrainedTokenizerFast.from_pretrained(cfg["tokenizer_dir"]).save_pretrained(folder)
    return folder


def build_trainer(cfg: dict, channel: Channel, clock: dict):
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    folder = save_model_folder(cfg, os.path.join(cfg["work_dir"], "trl_model"))
    rows = cfg["prompts"] * cfg["samples"]
    total = int(cfg["total_steps"])
    prompts = task.benchmark_prompts(cfg["prompts"] * (total + 1), cfg["prompt_len"], cfg["model"]["vocab_size"],
                                     seed=int(cfg["seed"]))
    args = GRPOConfig(
        output_dir=os.path.join(cfg["work_dir"], "trl_out"), per_device_train_batch_size=rows,
        num_generations=cfg["samples"], max_completion_length=cfg["new_tokens"],
        generation_kwargs={"min_new_tokens": cfg["new_tokens"]}, gradient_accumulation_steps=1, num_iterations=1,
        beta=0.0, use_vllm=False, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
        learning_rate=cfg["learning_rate"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, temperature=1.0, top_p=1.0, top_k=0,
        max_steps=total, logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        log_completions=False, seed=int(cfg["seed"]), dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32"})
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)

    def even_id_reward(completions, **kwargs):
        """`task.even_id_fraction` of each completion's text (kept for the step's reply)."""
        values = [task.even_id_fraction(c) for c in completions]
        clock["rewards"].extend(values)
        return values

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            request = channel.receive()
            if request is None:  # the parent closed stdin: leave now rather than run a step nobody reads
                raise SystemExit(0)
            torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
            clock.update(rollout_s=0.0, optimizer_s=0.0, tokens=0, rewards=[])
            clock["t0"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            clock["opt0"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            clock["optimizer_s"] += time.perf_counter() - clock["opt0"]

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - clock["t0"]
            rewards = clock["rewards"]
            channel.send({"step_s": step_s, "rollout_s": clock["rollout_s"], "optimizer_s": clock["optimizer_s"],
                          "update_s": step_s - clock["rollout_s"], "completion_tokens": clock["tokens"],
                          "reward_mean": sum(rewards) / max(len(rewards), 1), "threads": torch.get_num_threads()})

    trainer = GRPOTrainer(model=folder, reward_funcs=even_id_reward, args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                          callbacks=[StepClock()])
    inner = trainer._generate_and_score_completions

    @functools.wraps(inner)
    def timed_rollout(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        clock["rollout_s"] += time.perf_counter() - t0
        clock["tokens"] += int(out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = timed_rollout
    return trainer


def main(argv: list[str]) -> int:
    channel = Channel()
    try:
        cfg = json.loads(argv[1])
        import torch
        import transformers
        import trl

        clock: dict = {}
        trainer = build_trainer(cfg, channel, clock)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        channel.send({"ready": True, "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                                                  "torch": torch.__version__},
                      "params": n_params, "optim": str(trainer.args.optim),
                      "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
                      "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
                      "default_threads": torch.get_num_threads()})
        trainer.train()
    except Exception as e:  # reported to the parent, which records it as the peer's skip reason
        channel.fail(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
