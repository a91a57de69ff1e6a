"""Builders shared by every trainer (SFT, RL, preference): tokenizer, model, task, optimizer, policy.

Each takes a config section and returns the built object, failing with the field's name before
anything compiles. `build_policy` makes the mesh and the sharded, randomly initialised decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from jaxrl_llm.data.tokenizer import CharTokenizer, HFTokenizer, Tokenizer
from jaxrl_llm.envs.registry import build_task as build_registered_task
from jaxrl_llm.models.config import ModelConfig, preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.distributed import initialize_distributed
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.train.optim import make_optimizer, make_schedule

__all__ = ["build_tokenizer", "build_model_config", "build_task", "build_optimizer", "build_schedule",
           "build_policy", "task_from_config"]


def build_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    """`data.tokenizer`: `"char"` -> `CharTokenizer`; anything else is a `tokenizer.json` (or its folder)."""
    name = cfg["tokenizer"]
    return CharTokenizer() if name == "char" else HFTokenizer.from_file(name)


def build_model_config(model_cfg: Mapping[str, Any], tokenizer: Tokenizer) -> ModelConfig:
    """`preset(model.preset, **other model fields)`; checks the vocabulary covers the tokenizer."""
    fields = dict(model_cfg)
    name = fields.pop("preset")
    config = preset(name, **fields)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size={config.vocab_size} must be >= the tokenizer's vocab_size {tokenizer.vocab_size}"
        )
    return config


def build_task(data_cfg: Mapping[str, Any]) -> Any:
    """The verifiable task named by `data.task` (`envs/registry.py`: built-in `arithmetic` at
    `data.level`, or any registered task with `data.task_kwargs`)."""
    return build_registered_task(data_cfg)


task_from_config = build_task  # the older name


def build_optimizer(opt_cfg: Mapping[str, Any], total_steps: int):
    """AdamW + warmup/cosine + clipping from an `optimizer` section (see `train/optim.py`)."""
    return make_optimizer(opt_cfg, total_steps)


def build_schedule(opt_cfg: Mapping[str, Any], total_steps: int):
    return make_schedule(opt_cfg, total_steps)


def build_policy(cfg: Any, tokenizer: Tokenizer | None = None, *,
                 model_cfg: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """`(mesh, parts, params, rest, params_shardings)`: the decoder of `cfg.model` (or `model_cfg`),
    randomly initialised with `cfg.seed` and sharded on `cfg.mesh`.

    Starts `jax.distributed` first when `cfg.distributed.enabled`.
    """
    initialize_distributed(cfg.distributed)
    mesh = mesh_from_config(cfg.mesh)
    model_config = build_model_config(cfg.model if model_cfg is None else model_cfg,
                                      tokenizer or build_tokenizer(cfg.data))
    parts, params, rest, shardings = init_sharded(lambda: Decoder(model_config, rngs=nnx.Rngs(int(cfg.seed))), mesh)
    return mesh, parts, params, rest, shardings
