"""SkillC (single-turn) on ArithChain: part of each group samples after the first worked step.

    python -m jaxrl_llm.cli rl --config configs/skillc_chain.py

configs/grpo_chain.py (task, hint-reading warm-up) with configs/skillc.py's dual-stream advantage
(w = 0.4, lambda = 1). Samples with cond = 1 see the privileged prompt; held-out accuracy is on the
plain prompt.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_chain.py"))
    c.output_dir = "runs/skillc_chain"
    c.rl.advantage = "skillc"
    c.rl.advantage_kwargs = ConfigDict({"w": 0.4, "attribution": 1.0})
    c.rl.condition.source = "privileged"
    # The spec's skill-injected share starts at p_with = 0.5 (its curriculum only lowers it as the hint's
    # help fades; a fixed 0.5 is its ablation, 0.8 points worse there).
    c.rl.condition.fraction = 0.5
    return c
