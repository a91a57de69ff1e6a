"""Offline BCPG-NSA with the trained PRM head as the second step judge (consensus with the checker).

    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py           # trains runs/prm_arith_chain
    python -m jaxrl_llm.cli rl --config configs/bcpg_offline_prm.py
    python -m jaxrl_llm.cli rl --config configs/bcpg_offline_prm.py --config.rl.step_labels.prm_path=runs/other_prm

`configs/bcpg_offline.py` with `rl.step_labels.prm="prm_head"`: a step of a negative response is
flipped to +mu |A| only when ArithChain's rule-based checker accepts it and the PRM head of
`rl.step_labels.prm_path` (a `prm` run's output_dir, `train/prm_run.py`) scores it at least
`rl.step_labels.prm_threshold`. The dataset is sampled into this run's own output_dir (the step
labels shape it, `rl_offline.DATA_FIELDS`).
"""

import os

from ml_collections import ConfigDict

import jaxrl_llm.train.prm_run  # noqa: F401  (registers the "prm_head" step scorer)
from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bcpg_offline.py"))
    c.output_dir = "runs/bcpg_offline_prm"
    c.rl.step_labels.prm = "prm_head"
    c.rl.step_labels.prm_path = "runs/prm_arith_chain"  # the prm command's output_dir (configs/prm_arith_chain.py)
    c.rl.step_labels.prm_threshold = 0.5
    return c
