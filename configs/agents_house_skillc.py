"""SkillC (arXiv 2605.27899) on TextHouse: paired skill-injected / skill-free episodes, the curriculum
that withdraws skills as they stop helping, and the dual-stream advantage.

    python -m jaxrl_llm.cli rl --config configs/agents_house_skillc.py

Within each group of `rl.samples_per_prompt` episodes of one house, the first `n_with(type)` see the
task type's skill text (agents/skills.py). Every `agent.skillc.validate_every` steps, held-out houses
are played with and without skills; the smoothed gap per type sets `p_with` (the share of skill-injected
episodes) and `lambda_k` (the contrastive correction's weight), and a type whose gap stays <= 0 for
`agent.skillc.patience` validations retires for good. `eval/accuracy` is skill-free success.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_house_skillc"
    c.agent.skills = "builtin"
    c.agent.skillc.enabled = True
    c.rl.advantage = "skillc"
    c.rl.advantage_kwargs = ConfigDict({"w": 0.4})  # attribution comes from the curriculum (lambda_k)
    return c
