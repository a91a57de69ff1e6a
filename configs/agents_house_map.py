"""MAP (map-then-act, arXiv 2605.13037) on TextHouse: a goal-free scripted exploration of each house writes
a short map (receptacle -> contents, "(closed)" containers, "heat: microwave works, stoveburner fails"),
and every turn prompt carries it.

    python -m jaxrl_llm.cli rl --config configs/agents_house_map.py

The explorer (`agents/map.py`) plays a fresh copy of the episode's house for at most
`data.task_kwargs.map_budget` env steps and stops after `map_patience` steps without a new fact; it
spends env steps, not policy tokens (`map/explore_steps`). The warm-up learns map-grounded execution
from the oracle's turns with the map in the prompt (the spec's SFT on map-then-act); RL is the GRPO
recipe's. Compare `success` / `turns_per_episode` and `eval/*` with configs/agents_house_grpo.py, the
same recipe without the map (ReAct).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_house_map"
    c.data.task_kwargs.context = "map"
    # The map adds up to ~60 tokens to a turn prompt (~90 -> ~150, at most ~175).
    c.agent.max_prompt_tokens = 256
    return c
