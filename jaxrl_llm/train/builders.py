"""Builders shared by every trainer (SFT, RL, preference): tokenizer, model, task, optimizer, policy.

Each takes a config section and returns the built object, failing with the field's name before
anything compiles. `build_policy` makes the mesh and the sharded decoder: randomly initialised, or loaded from
`model.init_from` (a Hugging Face folder or a run's orbax checkpoint; `train/init_from.py`).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jaxrl_llm.data.tokenizer import CharTokenizer, HFTokenizer, Tokenizer
from jaxrl_llm.data.word_tokenizer import word_tokenizer
import jaxrl_llm.agents.heavyskill  # noqa: F401  (registers data.task = "heavyskill" for every trainer)
from jaxrl_llm.envs.registry import build_task as build_registered_task
from jaxrl_llm.models.config import ModelConfig, preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.distributed import initialize_distributed
from jaxrl_llm.models.hf import load_pretrained
from jaxrl_llm.parallel.init import abstract_model, init_sharded, split_module, state_shardings
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.train.init_from import (SECTION_KEYS, check_init_from, checkpoint_model_config, parse_init_from,
                                      report_ignored, runtime_overrides)
from jaxrl_llm.train.lora import lora_policy, restore_merged_params
from jaxrl_llm.train.optim import make_optimizer, make_schedule

__all__ = ["build_tokenizer", "build_model_config", "build_task", "build_optimizer", "build_schedule",
           "build_policy", "build_model", "policy_model_section", "check_vocab", "task_from_config"]


def build_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    """`data.tokenizer`: `"char"` -> `CharTokenizer`; `"word"` -> a word-level tokenizer over the task's own
    texts (`data/word_tokenizer.py`; the task provides `vocabulary_texts()`); anything else is a
    `tokenizer.json` (or its folder).

    `data.chat` lays prompts out with the folder's chat template (system turn `data.system_prompt`).
    """
    name, chat, system_prompt = cfg["tokenizer"], bool(cfg.get("chat", False)), cfg.get("system_prompt", "")
    template_kwargs = dict(cfg.get("chat_template_kwargs", None) or {})  # e.g. Qwen3's enable_thinking
    if name == "word":
        if chat or system_prompt or template_kwargs:
            raise ValueError("data.tokenizer='word' has no chat template: data.chat, data.system_prompt and "
                             "data.chat_template_kwargs need a Hugging Face tokenizer folder")
        return _word_tokenizer(json.dumps({k: _plain(v) for k, v in dict(cfg).items()}, sort_keys=True, default=str))
    if name == "char":
        if system_prompt:
            raise ValueError("data.system_prompt needs data.chat=True and a Hugging Face tokenizer folder")
        if template_kwargs:
            raise ValueError("data.chat_template_kwargs needs data.chat=True and a Hugging Face tokenizer folder")
        return CharTokenizer(chat=chat)
    if template_kwargs and not chat:
        raise ValueError(f"data.chat_template_kwargs {sorted(template_kwargs)} only apply with data.chat=True")
    return HFTokenizer.from_file(name, chat=chat, system_prompt=system_prompt, template_kwargs=template_kwargs)


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


@functools.lru_cache(maxsize=8)
def _word_tokenizer(data_json: str) -> Tokenizer:
    """The word tokenizer of the data section's task (cached: every trainer of a run builds the same one)."""
    data = json.loads(data_json)
    task = build_registered_task(data)
    if not hasattr(task, "vocabulary_texts"):
        raise ValueError(f"data.tokenizer='word' builds its vocabulary from the task's texts, but data.task="
                         f"{data['task']!r} has no vocabulary_texts(); use 'char' or a tokenizer folder")
    return word_tokenizer(task.vocabulary_texts())


def build_model_config(model_cfg: Mapping[str, Any], tokenizer: Tokenizer) -> ModelConfig:
    """`preset(model.preset, **other model fields)`; checks the vocabulary covers the tokenizer."""
    fields = {k: v for k, v in dict(model_cfg).items() if k not in SECTION_KEYS}
    config = preset(model_cfg["preset"], **fields)
    return check_vocab(config, tokenizer)


def check_vocab(config: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """`config`, if its vocabulary covers the tokenizer's ids."""
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


def policy_model_section(cfg: Any) -> Any:
    """`cfg.model`, with the value head switched on when the RL critic is (`rl.critic.enabled`)."""
    model = copy.deepcopy(cfg.model)
    if cfg.get("rl", {}).get("critic", {}).get("enabled", False):
        model.value_head = True
    return model


def build_policy(cfg: Any, tokenizer: Tokenizer | None = None, *,
                 model_cfg: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """`(mesh, parts, params, rest, params_shardings)`: the decoder of `cfg.model` (or `model_cfg`) on
    `cfg.mesh`, from its `init_from` or randomly initialised with `cfg.seed` (`build_model`).

    Starts `jax.distributed` first when `cfg.distributed.enabled`.
    """
    initialize_distributed(cfg.distributed)
    mesh = mesh_from_config(cfg.mesh)
    model_cfg = cfg.model if model_cfg is None else model_cfg
    parts, params, rest, shardings = build_model(model_cfg, tokenizer or build_tokenizer(cfg.data), mesh,
                                                 seed=int(cfg.seed))
    # model.lora.rank > 0: the target projections become frozen base + trainable adapters (train/lora.py).
    params, shardings = lora_policy(model_cfg, params, shardings, seed=int(cfg.seed))
    return mesh, parts, params, rest, shardings


def build_model(model_cfg: Mapping[str, Any], tokenizer: Tokenizer, mesh: Any, *, seed: int = 0,
                field: str = "model.init_from") -> tuple[Any, Any, Any, Any]:
    """`(parts, params, rest, params_shardings)` of the decoder a model section describes, on `mesh`:
    loaded from its `init_from` (named `field` in errors) or randomly initialised with `seed`."""
    check_init_from(model_cfg, field)
    kind, path = parse_init_from(model_cfg.get("init_from", ""), field)
    if kind == "hf":
        model, model_config = load_pretrained(path, mesh=mesh, config_overrides=runtime_overrides(model_cfg))
        report_ignored(model_cfg, model_config, f"{field}=hf:{path}")
        check_vocab(model_config, tokenizer)
        parts = abstract_model(lambda: Decoder(model_config, rngs=nnx.Rngs(0)))
        params, rest = split_module(model)
        return parts, params, rest, jax.tree.map(lambda x: x.sharding, params)
    model_config = None
    if kind == "orbax":
        model_config = checkpoint_model_config(model_cfg, field)
    if model_config is None:
        model_config = build_model_config(model_cfg, tokenizer)
    check_vocab(model_config, tokenizer)
    factory = lambda: Decoder(model_config, rngs=nnx.Rngs(int(seed)))  # noqa: E731
    if kind == "orbax":
        parts = abstract_model(factory)
        shardings = state_shardings(parts.abstract_params, mesh)
        rest = jax.jit(lambda: split_module(factory())[1])()  # non-parameter state (RoPE tables): cheap
        params = restore_merged_params(path, parts, shardings, field)  # a LoRA run's weights come merged
        return parts, with_fresh_value_head(params, factory, shardings, f"{field}=orbax:{path}"), rest, shardings
    return init_sharded(factory, mesh)


def with_fresh_value_head(params: Any, factory: Any, shardings: Any, source: str) -> Any:
    """`params` restored from `source`, with a freshly initialised `value_head` when the checkpoint had none
    (an SFT run feeding a PPO critic). Any other parameter missing from the checkpoint is an error."""
    missing = [k for k, v in jax.tree_util.tree_flatten_with_path(params)[0] if isinstance(v, jax.ShapeDtypeStruct)]
    if not missing:
        return params
    names = sorted({jax.tree_util.keystr(k) for k in missing})
    if any("value_head" not in name for name in names):
        raise ValueError(f"{source}: the checkpoint holds no {', '.join(names)}; its model differs from this "
                         "config's model section")
    # Only the head is returned, so XLA drops the rest of the initialisation.
    head = jax.jit(lambda: split_module(factory())[0]["value_head"], out_shardings=shardings["value_head"])()
    return {**params, "value_head": head}
