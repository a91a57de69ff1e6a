"""DPO quickstart on CPU: a short SFT warm-up of a tiny decoder on 2-digit addition, then offline DPO on
pairs (chosen = the right answer, rejected = the right answer with one digit changed). Prints held-out
preference accuracy and greedy exact-match accuracy before and after DPO.

    python -m jaxrl_llm.cli dpo --config configs/dpo_tiny.py
    python -m jaxrl_llm.cli dpo --config configs/dpo_tiny.py --config.data.pairs_path=pairs.jsonl

Writes under `output_dir`: `sft/` (the warm-up's metrics), `metrics.jsonl` (one line per
`dpo.log_every` steps; `eval/*` at step 0 and at the end), `tensorboard/` and `checkpoints/`.
"""

import copy
import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Model, mesh, multi-host and task sections are the SFT quickstart's (configs/sft_tiny.py).
    base = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_tiny.py"))
    c = ConfigDict()
    c.seed = 0
    c.output_dir = "runs/dpo_tiny"
    for section in ("model", "mesh", "distributed", "data"):
        c[section] = copy.deepcopy(base[section])
    # A JSONL of {"prompt", "chosen", "rejected"} records; "": pairs from the built-in task.
    c.data.pairs_path = ""
    c.data.num_pairs = 4096  # built-in task: training pairs drawn from its train split
    # Held-out pairs file; "": the last eval.num_pairs records of pairs_path (or, for the built-in
    # task, eval.num_pairs problems of its eval split, which never share a prompt with training).
    c.data.eval_pairs_path = ""

    # SFT warm-up on data.jsonl_path / the task's problems (0 steps: DPO from the random init).
    # Cut off while the learning rate is still high, as in configs/quickstart.py: the model knows the
    # answer format and gets some answers right, which leaves DPO something to improve.
    # The SFT config's own `train` and `optimizer` sections (configs/sft_tiny.py), embedded as is:
    # the warm-up runs the SFT trainer with them on this config's model, mesh and data.
    c.sft = ConfigDict()
    c.sft.train = copy.deepcopy(base.train)
    c.sft.train.steps = 450  # 0: no warm-up
    c.sft.train.log_every = 20
    c.sft.optimizer = copy.deepcopy(base.optimizer)
    c.sft.optimizer.decay_steps = 1000  # > steps: the schedule is cut off at steps

    c.dpo = ConfigDict()
    c.dpo.steps = 100
    c.dpo.batch_size = 64  # pairs per step (2 x batch_size rows: chosen, then rejected)
    c.dpo.micro_batches = 1  # gradient accumulation over pairs; must divide batch_size
    c.dpo.objective = "dpo"  # any registered preference objective (reads the four [N] sequence log-probs)
    # Passed to the objective as is; add fields for others it takes.
    c.dpo.objective_kwargs = ConfigDict({"beta": 0.1, "label_smoothing": 0.0})
    c.dpo.logprob_chunk = 8192  # vocabulary chunk of the log-prob helper
    c.dpo.optimizer = ConfigDict()
    c.dpo.optimizer.learning_rate = 3e-4
    c.dpo.optimizer.warmup_steps = 10
    c.dpo.optimizer.decay_steps = 0  # 0: dpo.steps
    c.dpo.optimizer.end_learning_rate_ratio = 1.0  # constant
    c.dpo.optimizer.b1 = 0.9
    c.dpo.optimizer.b2 = 0.98
    c.dpo.optimizer.eps = 1e-8
    c.dpo.optimizer.weight_decay = 0.0
    c.dpo.optimizer.grad_clip_norm = 1.0
    c.dpo.log_every = 5
    c.dpo.progress_bar = True

    # Held-out evaluation before and after DPO: preference accuracy on eval.num_pairs pairs and, for
    # the built-in task, greedy exact match on eval.num_problems problems of its eval split.
    c.eval = ConfigDict()
    c.eval.num_pairs = 200
    c.eval.num_problems = 200
    c.eval.batch_size = 100  # pairs (and prompts) per evaluation call
    c.eval.max_new_tokens = 5

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 0  # DPO steps; 0: only at the end
    c.checkpoint.max_to_keep = 2
    return c
