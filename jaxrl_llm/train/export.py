"""Hugging Face export: a trained policy as a folder `transformers` loads (`from_pretrained`).

Written at the end of `sft` / `rl` runs when `export.hf_dir` is set, and on demand by
`python -m jaxrl_llm.cli export` from any `model.init_from` source (a run's orbax checkpoint, or a
Hugging Face folder, e.g. to change the stored dtype). The folder gets `config.json`,
`model.safetensors` and, when `data.tokenizer` names a tokenizer folder or file, its tokenizer files,
so that the export is a complete checkpoint that `model.init_from=hf:` and `data.tokenizer` accept.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax

from jaxrl_llm.models.hf import save_pretrained

__all__ = ["TOKENIZER_FILES", "export_hf", "copy_tokenizer_files", "run_export", "export_run"]

# What a tokenizer folder holds besides weights; each is copied when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def copy_tokenizer_files(tokenizer: str, path: str) -> list[str]:
    """Copies the tokenizer files next to `tokenizer` (a `tokenizer.json` or its folder) into `path`;
    `"char"` or `""` copies nothing. Returns the names copied."""
    if not tokenizer or tokenizer == "char":
        return []
    source = tokenizer if os.path.isdir(tokenizer) else os.path.dirname(os.path.abspath(tokenizer))
    if os.path.abspath(source) == os.path.abspath(path):
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(path, name))
            copied.append(name)
    return copied


def export_hf(module: Any, path: str, *, tokenizer: str = "", dtype: str | None = None) -> str:
    """Writes `module` (a `Decoder`) to `path` as a Hugging Face checkpoint, with the tokenizer files.

    `dtype` sets the stored tensor dtype (default: the model's parameter dtype). On several processes
    every process must call this; process 0 writes.
    """
    out = str(save_pretrained(module, module.config, path, dtype=dtype))
    if jax.process_index() == 0:
        copy_tokenizer_files(tokenizer, out)
    return out


def export_run(cfg: Any, parts: Any, params: Any, rest: Any, run_dir: str) -> dict[str, str]:
    """What a finished `sft` / `rl` run writes besides its checkpoints: the policy as a Hugging Face
    folder (`export.hf_dir`, merged LoRA weights) and, with `model.lora.rank > 0`, the adapters alone.
    Returns `{"hf_dir": ..., "lora_adapters": ...}` for the outputs written."""
    from jaxrl_llm.train.lora import save_run_adapters  # noqa: PLC0415

    out: dict[str, str] = {}
    export = cfg.get("export", {})
    if export.get("hf_dir", ""):
        out["hf_dir"] = export_hf(parts.merge(params, rest), str(export.hf_dir), tokenizer=str(cfg.data.tokenizer),
                                  dtype=str(export.get("dtype", "")) or None)
    adapters = save_run_adapters(cfg.model, params, run_dir)
    if adapters:
        out["lora_adapters"] = adapters
    return out


def run_export(cfg: Any) -> dict[str, Any]:
    """The `export` command: the policy of `cfg.model` (its `init_from`) written to `export.hf_dir`."""
    from jaxrl_llm.train.builders import build_policy, build_tokenizer  # noqa: PLC0415

    export: Mapping[str, Any] = cfg.get("export", {})
    path = str(export.get("hf_dir", ""))
    if not path:
        raise ValueError("export.hf_dir must name the output folder, e.g. --config.export.hf_dir=runs/x/hf")
    if not cfg.model.get("init_from", ""):
        raise ValueError("model.init_from must name what to export: orbax:RUN_DIR (a run of this package) or "
                         "hf:PATH; an empty init_from would export a random initialisation")
    tokenizer = build_tokenizer(cfg.data)
    _, parts, params, rest, _ = build_policy(cfg, tokenizer)
    dtype = str(export.get("dtype", "")) or None
    out = export_hf(parts.merge(params, rest), path, tokenizer=str(cfg.data.tokenizer), dtype=dtype)
    return {"hf_dir": out, "source": str(cfg.model.init_from)}
