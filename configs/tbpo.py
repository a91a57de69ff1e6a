"""QaRL / TBPO (arXiv 2604.07853): int8 rollouts, a rollout-aligned learner and the trust-band loss.

    python -m jaxrl_llm.cli rl --config configs/tbpo.py

Rollouts sample from int8 weights; the learner's forward goes through the same quantization
(straight-through), and TBPO's sequence-level band drops negative samples outside it.
`rollout/mismatch_abs_logp` is the learner-vs-sampler log-prob gap.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/tbpo"
    c.rl.objective = "tbpo"
    c.rl.objective_kwargs = ConfigDict()
    c.rl.rollout_quant = "int8"
    c.rl.qarl = True
    return c
