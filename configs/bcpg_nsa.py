"""BCPG-NSA (arXiv 2505.14403), online form: clipped PG with negative-sample step augmentation.

    python -m jaxrl_llm.cli rl --config configs/bcpg_nsa.py

Each response token is a step; a step is correct when the response up to it is a prefix of the
reference. In wrong responses, the tokens of correct steps get +|A| instead of A.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/bcpg_nsa"
    c.rl.objective = "bcpg_nsa"
    c.rl.objective_kwargs = ConfigDict({"clip": 0.2, "mu": 1.0})
    c.rl.step_labels.enabled = True
    c.rl.step_labels.delimiter = ""
    return c
