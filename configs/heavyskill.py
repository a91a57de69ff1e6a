"""HeavySkill on ArithChain (agents/heavyskill.py): K = 8 policy solutions -> a trimmed cache -> GRPO on
the deliberations over it (reward = correctness).

    python -m jaxrl_llm.cli rl --config configs/heavyskill.py
    python tools/exp_heavyskill.py      # HeavySkill vs best-of-N vs majority at equal samples, 3 seeds

Problems are 3-operand chains of 1-digit numbers (`"3+7-8="` -> `"3+7=10;10-8=2;#2"`, at most 20
characters). Each RL step samples K = 8 solutions per problem, trims each to
(192 - 74 - 22) // 8 = 12 tokens (its tail up to the answer: the last step and `#answer`), writes the
deliberation prompt (the problem, `1) ...` to `8) ...`, "Check the solutions and answer:", the problem
again; 74 tokens without the solutions), pads it to 192 - 22 = 170 tokens, and samples the group's 4
deliberations on it; only those are trained on.

Sizes: every deliberation row is `data.seq_len` = 192 tokens (prompt 170 + `rl.max_new_tokens` 22), the
tiny decoder's rotary positions have no limit, and every character is in the char tokenizer. The SFT
warm-up task `data.task = "heavyskill"` wraps arith_chain: half of its records
(`data.privileged_fraction`) are deliberation records over 8 synthetic candidates (a random share
correct, the others with one propagated slip) whose target is the correct worked solution, so the model
knows the layout before RL; the records are packed into 192-token rows. Held-out `eval/accuracy` is on
the plain problem prompt.
"""

import os

from ml_collections import ConfigDict

import jaxrl_llm.agents.heavyskill  # noqa: F401  (registers data.task = "heavyskill")
from jaxrl_llm.cli import load_config_file

NUM_SOLUTIONS, MAX_NEW_TOKENS, SEQ_LEN = 8, 22, 192


def get_config() -> ConfigDict:
    # Model, optimizer, reuse (K = 4, DGG) and evaluation are the RL quickstart's (configs/quickstart.py).
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/heavyskill"
    c.data.task = "heavyskill"
    c.data.task_kwargs = ConfigDict({"base": "arith_chain", "base_kwargs": {"num_operands": 3, "num_digits": 1},
                                     "num_solutions": NUM_SOLUTIONS, "reserve": MAX_NEW_TOKENS})
    c.data.seq_len = SEQ_LEN  # the HeavySkill context: a deliberation prompt (170) + its response (22)
    c.data.packing = True  # short plain records share rows with the long deliberation ones
    c.data.privileged_fraction = 0.5  # share of warm-up records in the deliberation layout
    c.sft.train.steps = 400
    c.sft.optimizer.decay_steps = 1000  # cut off mid-schedule, as the quickstart's warm-up
    c.rl.max_new_tokens = MAX_NEW_TOKENS  # the longest worked solution "0-9=-9;-9-9=-18;#-18" + eos, one spare
    c.eval.max_new_tokens = MAX_NEW_TOKENS
    c.rl.prompts_per_step = 16  # x 8 solutions (not trained on) x 4 deliberations (trained on)
    c.rl.samples_per_prompt = 4  # = summary_k: the GRPO group is one problem's deliberations
    c.rl.steps = 20
    c.rl.heavyskill.enabled = True
    c.rl.heavyskill.num_solutions = NUM_SOLUTIONS
    c.rl.heavyskill.summary_k = 4
    c.rl.heavyskill.context = 0  # data.seq_len
    c.rl.heavyskill.reserve = 0  # rl.max_new_tokens
    return c
