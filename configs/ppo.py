"""PPO with a critic (arXiv 1707.06347) and GAE (arXiv 1506.02438).

    python -m jaxrl_llm.cli rl --config configs/ppo.py

A zero-initialised value head on the decoder is trained with the clipped value loss
(`rl.critic.coef`); GAE turns the outcome reward at the last token into per-token advantages.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/ppo"
    c.rl.objective = "ppo"
    c.rl.objective_kwargs = ConfigDict()
    c.rl.advantage = "gae"
    c.rl.advantage_kwargs = ConfigDict({"gamma": 1.0, "lam": 0.95})
    c.rl.critic.enabled = True
    c.rl.critic.coef = 0.5
    c.rl.critic.clip = 0.2
    return c
