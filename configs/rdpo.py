"""RDPO (arXiv 2605.13641): decorrelated advantages from several rewards of different kinds:
correctness and eos (binary), partial credit (fractional, graded digit by digit) and brevity
(continuous); correctness and partial credit are strongly correlated.

    python -m jaxrl_llm.cli rl --config configs/rdpo.py

Each scorer gives one column of rewards [B, R]; RDPO normalises each within its group, whitens
the columns (ZCA of their correlation) and sums them.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/rdpo"
    c.rl.scorers = ("task", "eos", "partial", "brevity")
    c.rl.advantage = "rdpo"
    c.rl.advantage_kwargs = ConfigDict()
    return c
