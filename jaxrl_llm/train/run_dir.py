"""One guard for every trainer's run directory: a used directory resumes or refuses, nothing is lost.

`open_run_dir(cfg, command=...)` runs before anything is built. A directory that already holds a run
(checkpoints or `metrics.jsonl`) resumes only when `checkpoint.resume` is set and the config saved
there (`config.json`) agrees with this one on every field that shapes the run; otherwise it refuses,
naming the directory and the differing fields. Fields a resumed run may change (the step budget,
logging, checkpoint and evaluation cadence, the export path) are listed in `RESUMABLE_FIELDS`.

After a checkpoint is restored, `truncate_metrics(run_dir, step)` drops the records past that step,
so a resumed run's `metrics.jsonl` has each step exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["RESUMABLE_FIELDS", "RunDirError", "open_run_dir", "flat_config", "config_differences",
           "truncate_metrics", "CONFIG_FILE"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Prefixes of dotted fields that may differ between a run and its resumption.
RESUMABLE_FIELDS: tuple[str, ...] = (
    "output_dir", "checkpoint.", "train.steps", "rl.steps", "dpo.steps", "train.progress_bar",
    "rl.progress_bar", "dpo.progress_bar", "sft.train.progress_bar", "train.log_every", "rl.log_every",
    "dpo.log_every", "eval.", "export.", "distributed.", "rl.max_mismatch",
)


class RunDirError(FileExistsError):
    """The run directory holds another run (or an incompatible one) and cannot be used as asked."""


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{"rl.optimizer.learning_rate": 3e-4, ...}`: every leaf of a (nested) config as JSON values."""
    out: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, Mapping) or hasattr(cfg, "items") else []
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, (str, bytes))):
            out.update(flat_config(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def _resumable(field: str) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in RESUMABLE_FIELDS)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`"field: saved -> current"` for every non-resumable field that differs (or exists on one side)."""
    missing = object()
    lines = []
    for field in sorted(set(saved) | set(current)):
        if _resumable(field):
            continue
        old, new = saved.get(field, missing), current.get(field, missing)
        if old != new:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{field}: {show(old)} -> {show(new)}")
    return lines


def _has_run(run_dir: str) -> list[str]:
    """What in `run_dir` belongs to an earlier run (empty when nothing does)."""
    found = []
    ckpt = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        found.append(f"checkpoints ({', '.join(sorted(os.listdir(ckpt)))})")
    metrics = os.path.join(run_dir, METRICS_FILE)
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        found.append(METRICS_FILE)
    return found


def open_run_dir(cfg: Any, *, command: str) -> bool:
    """Checks `cfg.output_dir` and records the config there; returns True when the run resumes.

    Fresh directory: writes `config.json`, returns False. A used one without `checkpoint.resume`:
    raises `RunDirError` naming what it holds. With `checkpoint.resume`: compares the saved config
    (raises naming each differing field), clears `metrics.jsonl` if no checkpoint exists yet (the run
    restarts from step 0), and returns whether a checkpoint is there to restore. Only process 0 writes.
    """
    from jaxrl_llm.parallel.distributed import is_primary_process

    run_dir = os.path.abspath(cfg.output_dir)
    current = {"command": command, **flat_config(cfg)}
    found = _has_run(run_dir)
    resume = bool(cfg.checkpoint.resume)
    saved_path = os.path.join(run_dir, CONFIG_FILE)
    if found and not resume:
        raise RunDirError(f"output_dir {run_dir} already holds a run ({'; '.join(found)}); set "
                          "--config.checkpoint.resume=true to continue it, or choose another output_dir")
    if found and os.path.exists(saved_path):
        try:
            with open(saved_path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise RunDirError(f"{saved_path} (the saved config of the run to resume) is unreadable: {e}") from e
        diffs = config_differences(saved, json.loads(json.dumps(current, default=str)))
        if diffs:
            # The differing fields come last, where a reader of a traceback looks first.
            raise RunDirError(f"cannot resume the run in {run_dir} (use the saved values, or choose another "
                              f"output_dir for a new run): its config {saved_path} differs in {len(diffs)} "
                              "field(s) that shape the run:\n  " + "\n  ".join(diffs))
    has_checkpoint = any(part.startswith("checkpoints") for part in found)
    if is_primary_process():
        os.makedirs(run_dir, exist_ok=True)
        if resume and not has_checkpoint:
            truncate_metrics(run_dir, -1)  # crashed before its first checkpoint: start over cleanly
        tmp = saved_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(current, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, saved_path)
    return has_checkpoint


def truncate_metrics(run_dir: str, step: int) -> int:
    """Keeps the `metrics.jsonl` records with `step <= step` (atomically); returns how many were dropped."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            record_step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue  # a half-written last line from a crash
        if record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return len(lines) - len(kept)
