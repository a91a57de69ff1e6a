"""DAPO (arXiv 2503.14476): clip-higher, token-mean loss, dynamic sampling and overlong shaping, no KL.

    python -m jaxrl_llm.cli rl --config configs/dapo.py

Groups whose samples all score the same carry no advantage; dynamic sampling draws fresh prompts
until the step holds `rl.prompts_per_step` informative groups (`dapo/rounds`, `dapo/kept_groups`).
The overlong penalty ramps from 0 to -1 over the last `rl.overlong.cache_length` tokens.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/dapo"
    c.rl.objective = "dapo"  # clip band [1 - 0.2, 1 + 0.28], token-mean
    c.rl.objective_kwargs = ConfigDict({"clip_low": 0.2, "clip_high": 0.28})
    c.rl.advantage = "grpo"
    c.rl.kl_coef = 0.0
    c.rl.dynamic_sampling.enabled = True
    c.rl.dynamic_sampling.max_rounds = 4
    c.rl.overlong.cache_length = 1  # of rl.max_new_tokens = 5: only a response cut at the limit is penalised
    return c
