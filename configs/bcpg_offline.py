"""BCPG-NSA (arXiv 2505.14403), offline: one fixed set of sampled multi-step responses, epochs over it.

    python -m jaxrl_llm.cli rl --config configs/bcpg_offline.py
    python -m jaxrl_llm.cli rl --config configs/bcpg_offline.py --config.rl.offline.variant=bcpg  # no NSA
    python -m jaxrl_llm.cli rl --config configs/bcpg_offline.py --config.rl.offline.variant=rft   # SFT on positives

After an SFT warm-up on ArithChain's worked solutions (`12+7-30=` -> `12+7=19;19-30=-11;#-11`), the
warmed-up policy samples `rl.samples_per_prompt` responses to each of `rl.offline.num_prompts`
training prompts once; they are scored, their behaviour log-probs stored and their steps (ending at
`;`) labelled by the task's rule-based checker (error propagation). The file
(`rl.offline.dataset_path`, JSONL) is reused by any run with the same data fields, so the three
variants train on the same responses. `rl.steps` counts epochs over it (`train/rl_offline.py`).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Model, mesh and evaluation are the RL quickstart's (configs/quickstart.py).
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/bcpg_offline"
    c.data.task = "arith_chain"
    # 1-digit chains of 3 or 4 operands: 2 or 3 steps, running values up to 36 in size.
    c.data.task_kwargs = ConfigDict({"num_operands": (3, 4), "num_digits": 1})
    c.data.seq_len = 40  # bos + the longest prompt (8) + worked solution (30) + eos
    # Warm-up cut off mid-schedule: the answer format and a middling accuracy, so that groups are
    # mixed (250 steps: 0.165 greedy on 4 operands; 300 steps: 0.80 on 3 operands).
    c.sft.train.steps = 300
    c.sft.optimizer.decay_steps = 1000

    c.rl.steps = 2  # epochs over the fixed dataset
    c.rl.prompts_per_step = 16  # whole groups per optimizer step: 16 optimizer steps per epoch
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 32  # the longest worked solution (30 characters) + eos, one spare
    c.rl.objective = "bcpg_nsa"
    c.rl.objective_kwargs = ConfigDict({"clip": 0.2, "mu": 1.0})
    c.rl.step_labels.enabled = True  # arith_chain has its own step checker: steps end at ';'
    c.rl.reuse_epochs = 1  # offline: epochs over the dataset, not reuse of a batch
    c.rl.dgg.enabled = False
    c.rl.optimizer.warmup_steps = 8  # half an epoch of ramp
    c.rl.offline = ConfigDict()
    c.rl.offline.enabled = True
    c.rl.offline.variant = "bcpg_nsa"  # bcpg_nsa | bcpg (same loss, nothing flipped) | rft (SFT on positives)
    c.rl.offline.num_prompts = 256  # x rl.samples_per_prompt responses, sampled once
    c.rl.offline.dataset_path = ""  # "" = <output_dir>/offline_data.jsonl; share one path across variants

    c.eval.max_new_tokens = 32
    c.eval.samples_per_prompt = 4
    c.eval.every = 2  # epochs; also at epoch 0 and at the end
    return c
