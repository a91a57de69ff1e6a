"""GSPO (arXiv 2507.18071): sequence-level importance ratio with a narrow clip band.

    python -m jaxrl_llm.cli rl --config configs/gspo.py

The ratio is the geometric mean of the token ratios; `pg/clipfrac` counts clipped sequences.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/gspo"
    c.rl.objective = "gspo"
    c.rl.objective_kwargs = ConfigDict({"clip_low": 3e-4, "clip_high": 4e-4})
    c.rl.advantage = "grpo"
    return c
