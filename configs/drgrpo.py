"""Dr.GRPO (arXiv 2503.20783): no std normalisation, sequence sums normalised by the longest generation.

    python -m jaxrl_llm.cli rl --config configs/drgrpo.py

`L_norm` is `rl.max_new_tokens` (set by the trainer unless `rl.objective_kwargs.norm_length` is given).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/drgrpo"
    c.rl.objective = "drgrpo"  # seq-mean-token-sum-norm aggregation
    c.rl.objective_kwargs = ConfigDict()
    c.rl.advantage = "drgrpo"  # r - mean_g(r)
    return c
