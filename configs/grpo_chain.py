"""GRPO on ArithChain (envs/arith_chain.py) after a warm-up that also reads hinted prompts: the baseline
and the base of configs/sdar_chain.py, opsd_chain.py and skillc_chain.py.

    python -m jaxrl_llm.cli rl --config configs/grpo_chain.py

Problems are 3-operand chains of 1-digit numbers, `"3+7-8="`, solved step by step
(`"3+7=10;10-8=2;#2"`); the task's privileged prompt writes the first worked step after the prompt
(`"3+7-8=3+7=10;"`): a hint that helps on a multi-step problem without giving the answer away.
A quarter of the warm-up records carry that prompt (`data.privileged_fraction`), so the model
can read the hint before SDAR's self-teacher or SkillC's hinted stream rely on it. Held-out
accuracy is always on the plain (hint-free) prompt.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Model, optimizer, reuse (K = 4, DGG) and evaluation are the RL quickstart's (configs/quickstart.py).
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/grpo_chain"
    c.data.task = "arith_chain"
    c.data.task_kwargs = ConfigDict({"num_operands": 3, "num_digits": 1})
    # Longest row: bos + hinted prompt (14) + worked solution (20) + eos.
    c.data.seq_len = 36
    c.data.privileged_fraction = 0.25  # the spec's hint-reading warm-up share
    c.sft.train.steps = 400
    c.sft.optimizer.decay_steps = 1000  # cut off mid-schedule, as the quickstart's warm-up
    c.rl.max_new_tokens = 22  # the longest worked solution "0-9=-9;-9-9=-18;#-18" + eos, one spare
    c.eval.max_new_tokens = 22
    c.rl.prompts_per_step = 64
    return c
