"""Checkpoints: orbax `CheckpointManager` over the `TrainState` and the grain iterator state.

A checkpoint at step `s` holds the state after `s` updates and the data iterator positioned at the
next batch, so restoring and training `k` more steps reproduces the uninterrupted run bitwise.
A state with a non-finite floating-point leaf is never written.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxrl_llm.train.state import TrainState, abstract_train_state, all_finite


class NonFiniteStateError(RuntimeError):
    """Raised instead of writing a checkpoint whose state holds NaN or inf."""


class CheckpointReadError(RuntimeError):
    """A checkpoint's data cannot be read back (damaged or half-written); names the step and the path."""

    def __init__(self, step: int, path: str, cause: BaseException, earlier: list[int]):
        offer = (f"earlier checkpoints: {earlier}; set --config.checkpoint.fallback=true to resume from the "
                 "newest intact one" if earlier else "no earlier checkpoint exists")
        super().__init__(f"checkpoint step {step} at {path} cannot be read ({type(cause).__name__}: "
                         f"{str(cause)[:300]}); {offer}")
        self.step, self.path, self.earlier = step, path, earlier


class Checkpointer:
    """Save/restore `TrainState` (+ optional grain iterator) under `directory`, keeping `max_to_keep`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                save_interval_steps=save_interval_steps,
                create=True,
            ),
        )

    def save(self, step: int, state: TrainState, data_iterator: Any | None = None, *, force: bool = False) -> bool:
        """Save `state` (and the iterator) as `step`; returns whether a checkpoint was written."""
        if not all_finite(state):
            raise NonFiniteStateError(f"refusing to checkpoint step {step}: the train state holds NaN/inf")
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        saved = self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)
        self._manager.wait_until_finished()
        return bool(saved)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, like: TrainState, data_iterator: Any | None = None, *, step: int | None = None,
                fallback: bool = False) -> TrainState:
        """Restore into the structure/shardings of `like`; `data_iterator` is repositioned in place.

        A checkpoint whose data cannot be read raises `CheckpointReadError` (its step, its path and the
        earlier steps); with `fallback` the newest earlier one that reads is restored instead, with a
        warning naming the skipped step.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found under {self.directory}")
        earlier = sorted((s for s in self.all_steps() if s < step), reverse=True)
        try:
            return self._restore_step(int(step), like, data_iterator)
        except Exception as e:  # orbax / tensorstore raise many types for damaged files
            error = CheckpointReadError(int(step), os.path.join(self.directory, str(step)), e, earlier)
            if not fallback or not earlier:
                raise error from e
            warnings.warn(f"{error}; falling back", stacklevel=2)
            return self.restore(like, data_iterator, step=earlier[0], fallback=True)

    def _restore_step(self, step: int, like: TrainState, data_iterator: Any | None) -> TrainState:
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_train_state(like))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_params(self, like_params: Any, *, step: int | None = None) -> Any:
        """Only the parameters of a saved `TrainState`, placed as `like_params` (arrays or
        `ShapeDtypeStruct`s with shardings): a start point for another run, whose optimizer may differ."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found under {self.directory}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_params)
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract)
        try:
            restored = self._manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True)))
        except Exception as e:  # orbax / tensorstore raise many types for damaged or mismatched files
            raise CheckpointReadError(int(step), os.path.join(self.directory, str(step)), e, []) from e
        return restored["state"]["params"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
