"""A PPO critic starts from an SFT checkpoint, which has no value head: the head is freshly initialised
(train/builders.py: with_fresh_value_head); any other missing parameter is an error naming it."""

import jax
import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.train.builders import with_fresh_value_head
from jaxrl_llm.train.rl import setup_rl

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1}


def test_ppo_from_an_sft_checkpoint_gets_a_fresh_value_head(tmp_path):
    args = ["sft", "--config", "configs/sft_tiny.py", f"--config.output_dir={tmp_path / 'sft'}",
            "--config.train.steps=2", "--config.train.progress_bar=false", "--config.eval.num_problems=0"]
    assert cli.main(args + [f"--config.{k}={v}" for k, v in SMALL.items()]) == 0
    cfg = cli.load_config_file("configs/ppo.py")
    for k, v in {**SMALL, "output_dir": str(tmp_path / "rl"), "model.init_from": f"orbax:{tmp_path / 'sft'}",
                 "sft.train.steps": 0, "eval.num_problems": 0}.items():
        cli.apply_override(cfg, k, str(v))
    params = setup_rl(cfg, warm_up=False).state.params
    head = jax.tree.leaves(params["value_head"])
    assert head and all(isinstance(x, jax.Array) and np.isfinite(np.asarray(x)).all() for x in head)


def test_a_missing_parameter_other_than_the_value_head_is_an_error():
    params = {"embed": {"embedding": jax.ShapeDtypeStruct((4, 2), np.float32)}}
    with pytest.raises(ValueError, match=r"src: the checkpoint holds no \['embed'\]\['embedding'\]"):
        with_fresh_value_head(params, None, None, "src")
