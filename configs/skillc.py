"""SkillC's dual-stream advantage (arXiv 2605.27899), single-turn form: a share of each group samples with a hint.

    python -m jaxrl_llm.cli rl --config configs/skillc.py

Samples with cond = 1 see the task's privileged prompt; the advantage mixes the group z-score, the
within-condition z-score and a contrastive correction while the hint still helps.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/skillc"
    c.rl.advantage = "skillc"
    c.rl.advantage_kwargs = ConfigDict({"w": 0.4, "attribution": 1.0})
    c.rl.condition.source = "privileged"
    c.rl.condition.fraction = 0.5
    return c
