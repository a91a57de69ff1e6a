"""Multi-host start-up: one process per host, `jax.distributed.initialize` behind a config flag.

On a single host (the default) nothing happens, so the same entry point runs on a laptop CPU, one
GPU box or a TPU pod slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

_initialized = False


def initialize_distributed(cfg: Mapping[str, Any] | None) -> bool:
    """Call `jax.distributed.initialize` when `cfg.enabled` is true, or a `coordinator_address` and
    `num_processes > 1` are given; return whether it ran.

    `cfg` fields: `enabled` (bool), and optionally `coordinator_address` (`"host:port"`),
    `num_processes`, `process_id`; empty/None values let JAX auto-detect them (TPU pods, SLURM,
    Kubernetes). Must run before any other JAX call touches the devices. Calling it twice is a
    no-op the second time.
    """
    global _initialized
    # An explicit coordinator with several processes is a multi-process launch even without `enabled`.
    explicit = cfg is not None and bool(cfg.get("coordinator_address", "")) and int(cfg.get("num_processes", -1)) > 1
    if cfg is None or not (cfg.get("enabled", False) or explicit):
        return False
    if _initialized:
        return True
    kwargs: dict[str, Any] = {}
    for field in ("coordinator_address", "num_processes", "process_id"):
        value = cfg.get(field, None)
        if value not in (None, "", -1):
            kwargs[field] = value
    jax.distributed.initialize(**kwargs)
    _initialized = True
    return True


def is_primary_process() -> bool:
    """True on the process that writes logs, plots and progress bars (process 0)."""
    return jax.process_index() == 0
