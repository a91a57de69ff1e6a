"""RLOO (arXiv 2402.14740): leave-one-out baseline advantages under the PPO clip loss.

    python -m jaxrl_llm.cli rl --config configs/rloo.py

A_i = r_i - mean of the other samples of its prompt.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/rloo"
    c.rl.objective = "ppo"
    c.rl.objective_kwargs = ConfigDict()
    c.rl.advantage = "rloo"
    return c
