"""The RL-step benchmark's peers (`tools/bench_rl_step.py`): TRL's and Tunix's GRPO step, each in its own venv.

`task` is the benchmark's task (vocabulary, prompts, reward) and `protocol` the line protocol between
the parent and a worker; both import only the standard library (and `tokenizers` to write the
vocabulary), so every venv can load them. `trl_worker.py` and `tunix_worker.py` are the workers.
"""
