"""AutoThink (arXiv 2505.10832): learn when to think, behind the ellipsis prompt `<think>\\n...\\n`.

    python -m jaxrl_llm.cli rl --config configs/autothink.py
    python -m jaxrl_llm.cli rl --config configs/autothink.py --config.rl.autothink.stage=2   # one stage throughout

The task mixes easy (2 one-digit operands) and hard (3-4 one-digit operands) addition chains; the
warm-up teaches both modes, think (the chain steps, `</think>`, the answer) and no-think
(`</think>` at once, then the answer), half of the records each. RL rewards with the `autothink`
scorer: +1 / 0 for think correct / wrong, +2 / -1 for no-think, then stage 1 balances the modes
over the batch, stage 2 is the base reward alone and stage 3 adds the per-group length terms.
Metrics `autothink/...`: think rate, accuracy and length overall and per difficulty, the stage and
stage 1's lambda. GRPO on the same task with the plain correctness reward is
`--config.rl.scorers="('task',)"`.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, optimizer, gate, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/autothink"
    c.data.task = "autothink_mix"
    # CPU-sized: hard chains of 3-4 one-digit operands (the task's defaults, 4-5 two-digit
    # operands, are beyond what this tiny model learns in a short warm-up).
    c.data.task_kwargs = ConfigDict({"easy_operands": 2, "easy_digits": 1, "hard_operands": (3, 4),
                                     "hard_digits": 1, "ops": "+", "easy_fraction": 0.5,
                                     "sft_no_think_fraction": 0.5})
    c.data.seq_len = 64  # bos + prompt (<= 20) + the longest think response (<= 39) + eos
    # Both modes need a decent easy accuracy before RL: no-think only pays (+2 / -1 against think's
    # +1 / 0) where it is right more than half the time. Packed rows: short records share a row.
    c.data.packing = True
    c.sft.train.steps = 500
    c.sft.train.batch_size = 32
    c.sft.optimizer.decay_steps = 500

    c.rl.steps = 30
    c.rl.prompts_per_step = 32
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 44  # the longest hard think response is 39 tokens + eos
    c.rl.temperature = 1.0
    # Responses here are 10-40 tokens, not the quickstart's 4: its 3e-4 took held-out accuracy down
    # (0.57 -> 0.45 for GRPO, 0.33 for AutoThink, 15 steps of 16 prompts); 1e-4 on 32 prompts.
    c.rl.optimizer.learning_rate = 1e-4
    c.rl.scorers = ("autothink",)
    c.rl.autothink = ConfigDict()
    c.rl.autothink.stage = 0  # 1, 2 or 3: that stage throughout; 0: follow stage_ends
    c.rl.autothink.stage_ends = (10, 20)  # stage 1 on steps [0, 10), stage 2 on [10, 20), stage 3 after
    c.rl.autothink.balance_rate = 0.5  # stage 1: b
    c.rl.autothink.alpha = 0.05  # stage 3: length term of correct responses
    c.rl.autothink.beta = 0.05  # stage 3: length term of wrong responses

    c.eval.num_problems = 100
    c.eval.samples_per_prompt = 4
    c.eval.batch_size = 100
    c.eval.max_new_tokens = 44
    c.eval.every = 10
    return c
