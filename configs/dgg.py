"""DGG (arXiv 2605.19425) with the head-gradient energy ratio: stop reusing a batch once the lm_head
gradient energy at a reuse pass rises above the batch's own on-policy pass.

    python -m jaxrl_llm.cli rl --config configs/dgg.py
    # the regime where naive reuse collapses on this task (K = 8, 4 minibatches, learning rate 1e-3):
    python -m jaxrl_llm.cli rl --config configs/dgg.py --config.rl.reuse_epochs=8 \
        --config.rl.minibatches=4 --config.rl.optimizer.learning_rate=1e-3

Statistic x_k = g_k / g_1 (g = ||grad W_lm_head||_F^2, same minibatch, pass k over pass 1; reset
every batch), z = (x_k - 1) / std(last `window` accepted ratios at k > 1); a step with z > tau is
skipped (optimizer state untouched) and ends the batch's reuse. One setting for both regimes.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, K = 4.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/dgg"
    c.rl.dgg.enabled = True
    c.rl.dgg.statistic = "energy_ratio"
    c.rl.dgg.tau = 0.5
    c.rl.dgg.window = 20
    return c
