"""The jitted RL update: K reuse epochs over a rollout batch in minibatches, DGG-gated on device.

`make_rl_update(parts, optimizer, options)` returns `rl_update(state, batch) -> (state, metrics)`,
one compiled, donated function. Inside, a `lax.scan` over reuse epochs `k = 1..K` wraps a scan over
the `M` minibatches of the batch; each minibatch is one optimizer step (PPO-style):

1. per-token log-probs and entropy of the current params with the chunked helper
   (`hidden_token_stats`: the `[B, T, V]` logits are never materialised), optionally through
   `fake_quant_params` (QaRL: the learner sees the rollout's quantized weights, STE backward);
2. the configured objective from the registry (`grpo`, `dapo`, `gspo`, `tbpo`, ...);
3. the DGG gate on the lm_head (or tied embedding) gradient: at `k > 1` with a full window, a
   z-score above `tau` skips this optimizer step (params and optimizer state bit-identical) and
   sets a carried `stopped` flag; every later step of the batch then runs the no-op branch of a
   `lax.cond`, so reuse stops on device without a host round-trip.

The gate statistic is the increment of the head-gradient energy between consecutive passes over
the *same* minibatch (epoch k vs k - 1), so with several minibatches the increment compares like
with like. Gate statistics persist across batches in `state.extras` (keys `dgg_*`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxrl_llm.objectives.core import masked_mean
from jaxrl_llm.objectives.dgg import DGGState, dgg_gate, dgg_init, gated_update, head_gradient_energy
from jaxrl_llm.objectives.registry import get_objective
from jaxrl_llm.objectives.token_stats import hidden_token_stats
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.rules import logical_to_sharding, replicated
from jaxrl_llm.quant.params import fake_quant_params
from jaxrl_llm.train.rl_batch import RolloutBatch, check_rollout_batch, split_minibatches
from jaxrl_llm.train.state import TrainState

_DGG_PREFIX = "dgg_"


@dataclasses.dataclass(frozen=True)
class RLUpdateOptions:
    """Static knobs of the update.

    objective: registry name; objective_kwargs: its hyperparameters (e.g. `clip_low`, `kl_coef`).
    reuse_epochs: K, passes over the batch; minibatches: M optimizer steps per pass.
    dgg: gate on; dgg_tau: z-score threshold; dgg_statistic: "delta" or "energy".
    logprob_chunk: vocabulary chunk of the log-prob helper; qarl_format: "" (off) or the rollout's
    weight format ("int8", "int4", "fp8") for a rollout-aligned learner forward.
    temperature: the policy is softmax(logits / temperature), the distribution rollouts sample from.
    """

    objective: str = "grpo"
    objective_kwargs: tuple[tuple[str, Any], ...] = ()
    reuse_epochs: int = 1
    minibatches: int = 1
    dgg: bool = True
    dgg_tau: float = 0.5
    dgg_statistic: str = "delta"
    logprob_chunk: int = 8192
    qarl_format: str = ""
    temperature: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"rl.temperature must be > 0 (the policy is softmax(logits / T)); got {self.temperature}")
        if self.reuse_epochs < 1:
            raise ValueError(f"rl.reuse_epochs must be >= 1; got {self.reuse_epochs}")
        if self.minibatches < 1:
            raise ValueError(f"rl.minibatches must be >= 1; got {self.minibatches}")
        if self.dgg_statistic not in ("delta", "energy"):
            raise ValueError(f"rl.dgg.statistic must be 'delta' or 'energy'; got {self.dgg_statistic!r}")
        get_objective(self.objective)  # fails early, naming the registered objectives

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.objective_kwargs)


def dgg_extras(window: int) -> dict[str, jax.Array]:
    """Initial gate statistics as flat `TrainState.extras` entries (`dgg_window`, `dgg_count`, ...)."""
    # Copies: dgg_init shares one zero scalar between fields, and a donated state needs distinct buffers.
    return {_DGG_PREFIX + k: jnp.array(v, copy=True) for k, v in dgg_init(window)._asdict().items()}


def gate_from_extras(extras: Mapping[str, Any]) -> DGGState:
    missing = [k for k in DGGState._fields if _DGG_PREFIX + k not in extras]
    if missing:
        raise ValueError(f"state.extras lacks DGG statistics {[_DGG_PREFIX + k for k in missing]}; "
                         "create the state with extras=dgg_extras(window)")
    return DGGState(**{k: extras[_DGG_PREFIX + k] for k in DGGState._fields})


def gate_to_extras(extras: Mapping[str, Any], gate: DGGState) -> dict[str, Any]:
    return {**extras, **{_DGG_PREFIX + k: v for k, v in gate._asdict().items()}}


def policy_token_stats(parts: ModelParts, params: Any, rest: Any, tokens: jax.Array, positions: jax.Array,
                       segment_ids: jax.Array, *, chunk_size: int = 8192, qarl_format: str = "",
                       temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """`(logp [B, T], entropy [B, T])` fp32, aligned with `tokens` (entry 0 is 0: nothing predicts it).

    logp[:, t] = log pi(tokens[:, t] | tokens[:, :t]) with pi = softmax(logits / temperature);
    entropy[:, t] is that distribution's entropy. With `qarl_format` the forward uses
    fake-quantized weights (gradients reach the master weights).
    """
    if qarl_format:
        params = fake_quant_params(params, qarl_format)
    model = parts.merge(params, rest)
    _, _, hidden = model(tokens, positions, segment_ids=segment_ids, return_hidden=True, return_logits=False)
    logp, entropy = hidden_token_stats(hidden[:, :-1], model.lm_head_weight(), tokens[:, 1:], chunk_size=chunk_size,
                                       temperature=temperature)
    zero = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    return jnp.concatenate([zero, logp], axis=1), jnp.concatenate([zero, entropy], axis=1)


def make_logprob_fn(parts: ModelParts, *, chunk_size: int = 8192, qarl_format: str = "",
                    temperature: float = 1.0) -> Callable:
    """Jitted `(params, rest, tokens, positions, segment_ids) -> (logp [B, T], entropy [B, T])`.

    Used before an update for the proximal (`old_logprobs`) and reference (`ref_logprobs`) passes.
    """
    def fn(params, rest, tokens, positions, segment_ids):
        return policy_token_stats(parts, params, rest, tokens, positions, segment_ids, chunk_size=chunk_size,
                                  qarl_format=qarl_format, temperature=temperature)

    return jax.jit(fn)


def make_rl_loss(parts: ModelParts, options: RLUpdateOptions) -> Callable:
    """`loss(params, rest, minibatch) -> (loss, (objective metrics, mean entropy))`."""
    objective = get_objective(options.objective)
    kwargs = options.kwargs

    def loss_fn(params, rest, mb: RolloutBatch):
        logp, entropy = policy_token_stats(parts, params, rest, mb.tokens, mb.positions, mb.segment_ids,
                                           chunk_size=options.logprob_chunk, qarl_format=options.qarl_format,
                                           temperature=options.temperature)
        inputs = {"logp": logp, "old_logp": mb.old_logprobs, "rollout_logp": mb.rollout_logprobs,
                  "ref_logp": mb.ref_logprobs, "mask": mb.loss_mask, "advantages": mb.advantages,
                  "entropy": entropy, "rewards": mb.rewards, "group_ids": mb.group_ids}
        out = objective(inputs, **kwargs)
        return out.loss, (out.metrics, masked_mean(jax.lax.stop_gradient(entropy), mb.loss_mask))

    return loss_fn


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _first_key(metrics: Mapping[str, Any], suffix: str) -> str | None:
    return next((k for k in sorted(metrics) if k.endswith(suffix)), None)


def build_update_fn(parts: ModelParts, optimizer: optax.GradientTransformation,
                    options: RLUpdateOptions) -> Callable[[TrainState, Any, RolloutBatch], tuple[TrainState, dict]]:
    """The un-jitted `update(state, rest, batch) -> (state, metrics)` (see the module docstring)."""
    grad_fn = jax.value_and_grad(make_rl_loss(parts, options), has_aux=True)
    gated_opt = gated_update(optimizer)
    k_epochs, n_mb = options.reuse_epochs, options.minibatches

    def update(state: TrainState, rest: Any, batch: RolloutBatch):
        check_rollout_batch(batch)
        minibatches = split_minibatches(batch, n_mb)
        gate0 = gate_from_extras(state.extras) if options.dgg else None

        def run_step(carry, k, m, mb):
            params, opt_state, gate, prev, _ = carry
            (loss, (obj_metrics, entropy)), grads = grad_fn(params, rest, mb)
            grad_norm = optax.tree.norm(grads)
            energy = head_gradient_energy(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            if options.dgg:
                gated, gate, gm = dgg_gate(grads, gate._replace(prev_energy=prev[m]), k + 1, tau=options.dgg_tau,
                                           statistic=options.dgg_statistic)
                prev = prev.at[m].set(gate.prev_energy)
                z = gm["dgg/z"]
            else:
                gated, z = jnp.bool_(False), jnp.float32(0.0)
            skip = gated | ~finite
            updates, new_opt = gated_opt.update(grads, opt_state, params, gated=skip)
            new_params = _select(skip, params, optax.apply_updates(params, updates))
            metrics = {"loss": loss, "entropy": entropy, "grad_norm": grad_norm, "lmhead_energy": energy,
                       "z": z, "gated": gated.astype(jnp.float32), "nonfinite": (~finite).astype(jnp.float32),
                       "applied": (~skip).astype(jnp.float32), "executed": jnp.float32(1.0), "obj": obj_metrics}
            return (new_params, new_opt, gate, prev, gated), metrics

        def epoch(carry, k):
            def minibatch(carry, xs):
                m, mb = xs
                probe = jax.eval_shape(lambda c: run_step(c, k, m, mb)[1], carry)
                noop = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe)
                # A stopped batch takes the no-op branch: no forward, no backward, no state change.
                return jax.lax.cond(carry[4], lambda c: (c, noop), lambda c: run_step(c, k, m, mb), carry)

            return jax.lax.scan(minibatch, carry, (jnp.arange(n_mb), minibatches))

        init = (state.params, state.opt_state, gate0, jnp.zeros((n_mb,), jnp.float32), jnp.bool_(False))
        (params, opt_state, gate, _, stopped), per_step = jax.lax.scan(epoch, init, jnp.arange(k_epochs))
        extras = gate_to_extras(state.extras, gate) if options.dgg else state.extras
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, extras=extras)
        return new_state, summarize_steps(per_step, stopped)

    return update


def summarize_steps(per_step: Mapping[str, Any], stopped: jax.Array) -> dict[str, jax.Array]:
    """Reduce `[K, M]` per-step metrics to scalars: means over applied steps, gate and reuse counts."""
    applied = per_step["applied"]
    n_applied = jnp.maximum(jnp.sum(applied), 1.0)
    # Executed steps form a prefix of the (epoch, minibatch) order: after a gate all are no-ops.
    executed = per_step["executed"]
    last = jnp.maximum(jnp.sum(executed).astype(jnp.int32) - 1, 0)

    def mean_applied(x):
        return jnp.sum(x * applied) / n_applied

    obj = {f"obj/{k}": mean_applied(v) for k, v in per_step["obj"].items()}
    out = {"loss": mean_applied(per_step["loss"]), "entropy": mean_applied(per_step["entropy"]),
           "grad_norm": mean_applied(per_step["grad_norm"]),
           "gate/lmhead_energy": mean_applied(per_step["lmhead_energy"]),
           "gate/events": jnp.sum(per_step["gated"]), "gate/stopped": stopped.astype(jnp.float32),
           "gate/z": per_step["z"].reshape(-1)[last],
           "gate/z_max": jnp.max(jnp.where(executed > 0, per_step["z"], -jnp.inf)),
           "reuse/epochs_used": jnp.sum(jnp.max(applied, axis=1)),
           "reuse/steps_applied": jnp.sum(applied), "nonfinite_steps": jnp.sum(per_step["nonfinite"])}
    kl_key = _first_key(per_step["obj"], "kl/kl") or _first_key(per_step["obj"], "ppo_kl")
    clip_key = _first_key(per_step["obj"], "clipfrac") or _first_key(per_step["obj"], "frac_clipped_pos")
    out["kl"] = obj[f"obj/{kl_key}"] if kl_key else jnp.float32(0.0)
    out["clip_fraction"] = obj[f"obj/{clip_key}"] if clip_key else jnp.float32(0.0)
    return {**out, **obj}


def rollout_batch_shardings(mesh: Mesh, batch: RolloutBatch) -> RolloutBatch:
    """Rows over the `batch` rule (data x fsdp), everything else replicated."""
    def one(x):
        names = ("batch",) + (None,) * (len(jnp.shape(x)) - 1)
        return logical_to_sharding(names, mesh, shape=jnp.shape(x))

    return jax.tree.map(one, batch)


def make_rl_update(parts: ModelParts, optimizer: optax.GradientTransformation, options: RLUpdateOptions, *,
                   rest: Any = None, mesh: Mesh | None = None,
                   state_shardings: TrainState | None = None) -> Callable[[TrainState, RolloutBatch], tuple]:
    """Jitted, state-donating `rl_update(state, batch) -> (new_state, metrics)`.

    `state.extras` must hold the DGG statistics (`dgg_extras(window)`) when `options.dgg`. With
    `mesh` and `state_shardings`, the state keeps its shardings and the batch rows are split over
    the `batch` rule. Metrics (scalars): loss, kl, clip_fraction, entropy, grad_norm, gate/events,
    gate/z, gate/z_max, gate/stopped, gate/lmhead_energy, reuse/epochs_used, reuse/steps_applied,
    nonfinite_steps and the objective's own metrics under `obj/`.
    """
    update = build_update_fn(parts, optimizer, options)
    rest = {} if rest is None else rest
    if mesh is None or state_shardings is None:
        jitted = jax.jit(update, donate_argnums=(0,))

        def rl_update(state, batch):
            return jitted(state, rest, batch)
    else:
        rest_shardings = jax.tree.map(lambda x: x.sharding, rest)

        def update_on_mesh(state, rest, batch):
            with activation_mesh(mesh):  # traced here: the model pins its residual stream to the mesh
                return update(state, rest, batch)

        jitted = jax.jit(update_on_mesh, in_shardings=(state_shardings, rest_shardings, None),
                         out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))

        def rl_update(state, batch):
            batch = jax.device_put(batch, rollout_batch_shardings(mesh, batch))
            return jitted(state, rest, batch)

    rl_update.jitted = jitted  # type: ignore[attr-defined]
    return rl_update
