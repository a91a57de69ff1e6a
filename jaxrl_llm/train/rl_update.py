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

With `rl.micro_batches = U > 1` each minibatch's gradient is accumulated over `U` strided
micro-batches (`make_rl_grad`) in two scans: a forward-only pass collects the learner's per-token
outputs of the whole minibatch, the objective runs once on them (so every normaliser, per-sequence
ratio and per-group statistic is the un-split one) and yields their cotangents, and a second pass
pulls each micro-batch's cotangents back to the parameters. The gradient, loss and metrics equal
the un-split minibatch's to float rounding; the price is one extra forward per micro-batch.

The gate statistic (`rl.dgg.statistic`) compares a minibatch with itself: the increment of the
head-gradient energy between consecutive passes (epoch k vs k - 1, "delta"), or the ratio to the
batch's first pass ("energy_ratio", "dwd"), so with several minibatches it compares like with like.
Per batch, `dwd/*` metrics log the head's and inner layers' relative weight change and the energy
ratio g_k / g_1 whether or not the gate is on. The gate is an optax transformation around the
optimizer (`rl_optimizer`, `objectives.dgg.dgg_wrapped`): its statistics persist across batches
in `state.opt_state`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxrl_llm.models.lora import join_trainable, merge_lora, split_trainable, trainable_value_and_grad
from jaxrl_llm.objectives.core import masked_mean
from jaxrl_llm.objectives.dgg import (
    STATISTICS,
    DGGWrappedState,
    gated_update,
    head_gradient_energy,
    relative_update_norms,
)
from jaxrl_llm.objectives.policy_losses import value_loss
from jaxrl_llm.objectives.registry import get_objective
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.batch import constrain_rows, merge_strided, place_rows, split_strided, to_host
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.rules import replicated
from jaxrl_llm.quant.params import fake_quant_params
from jaxrl_llm.rollout.qarl import model_token_stats
from jaxrl_llm.train.optim import dgg_optimizer
from jaxrl_llm.train.rl_batch import (
    RolloutBatch,
    check_rollout_batch,
    split_minibatches,
)
from jaxrl_llm.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class RLUpdateOptions:
    """Static knobs of the update.

    objective: registry name; objective_kwargs: its hyperparameters (e.g. `clip_low`, `kl_coef`).
    reuse_epochs: K, passes over the batch; minibatches: M optimizer steps per pass; micro_batches: U,
    strided micro-batches each minibatch's gradient is accumulated over (`make_rl_grad`).
    dgg: gate on; dgg_tau: z-score threshold; dgg_window: statistics window; dgg_statistic: one of
    `objectives.dgg.STATISTICS` ("delta", "energy", "energy_ratio", "dwd").
    logprob_chunk: vocabulary chunk of the log-prob helper; qarl_format: "" (off) or the rollout's
    weight format ("int8", "int4", "fp8") for a rollout-aligned learner forward.
    temperature: the policy is softmax(logits / temperature), the distribution rollouts sample from.
    student_logits: the learner hands `student_logits [B, T, V]` to the objective (AOPD, OPD-full).
    critic: the learner computes `values` with the value head and adds `critic_coef` x the clipped
    value loss (clip `critic_clip`) unless the objective is `ppo_value` itself.
    num_groups: passed to objectives that take it from the trainer (`bcpg_nsa`); 0 = not passed.
    """

    objective: str = "grpo"
    objective_kwargs: tuple[tuple[str, Any], ...] = ()
    reuse_epochs: int = 1
    minibatches: int = 1
    micro_batches: int = 1
    dgg: bool = True
    dgg_tau: float = 0.5
    dgg_window: int = 20
    dgg_statistic: str = "delta"
    logprob_chunk: int = 8192
    qarl_format: str = ""
    temperature: float = 1.0
    student_logits: bool = False
    critic: bool = False
    critic_coef: float = 0.5
    critic_clip: float = 0.2
    num_groups: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"rl.temperature must be > 0 (the policy is softmax(logits / T)); got {self.temperature}")
        if self.reuse_epochs < 1:
            raise ValueError(f"rl.reuse_epochs must be >= 1; got {self.reuse_epochs}")
        if self.minibatches < 1:
            raise ValueError(f"rl.minibatches must be >= 1; got {self.minibatches}")
        if self.micro_batches < 1:
            raise ValueError(f"rl.micro_batches must be >= 1; got {self.micro_batches}")
        if self.dgg_statistic not in STATISTICS:
            raise ValueError(f"rl.dgg.statistic must be one of {list(STATISTICS)}; got {self.dgg_statistic!r}")
        get_objective(self.objective)  # fails early, naming the registered objectives

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.objective_kwargs)


def learner_outputs(parts: ModelParts, params: Any, rest: Any, tokens: jax.Array, positions: jax.Array,
                    segment_ids: jax.Array, *, chunk_size: int = 8192, qarl_format: str = "",
                    temperature: float = 1.0, logits: bool = False, values: bool = False,
                    topk: int = 0) -> dict[str, jax.Array]:
    """`rollout.qarl.model_token_stats` (the one learner forward) of `parts.merge(params, rest)`.

    With `qarl_format` the forward uses fake-quantized weights (QaRL; gradients reach the master
    weights through the straight-through estimator).
    """
    if qarl_format:  # LoRA adapters merge first: the rollout quantized the merged weights
        params = fake_quant_params(merge_lora(params), qarl_format)
    return model_token_stats(parts.merge(params, rest), tokens, positions, segment_ids, chunk_size=chunk_size,
                             temperature=temperature, logits=logits, values=values, topk=topk)


def policy_token_stats(parts: ModelParts, params: Any, rest: Any, tokens: jax.Array, positions: jax.Array,
                       segment_ids: jax.Array, *, chunk_size: int = 8192, qarl_format: str = "",
                       temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """`(logp [B, T], entropy [B, T])` fp32 of `learner_outputs` (see there)."""
    out = learner_outputs(parts, params, rest, tokens, positions, segment_ids, chunk_size=chunk_size,
                          qarl_format=qarl_format, temperature=temperature)
    return out["logp"], out["entropy"]


def host_outputs(jitted: Callable) -> Callable:
    """`jitted` returning host arrays on every process (`parallel.batch.to_host`); `.lower` still
    reaches the compiled program (memory analysis), and `.dispatch(*args)` starts the program and
    returns a zero-argument callable that waits for its host arrays (see `dispatch`)."""
    def call(*args):
        return to_host(jitted(*args))

    def start(*args):
        out = jitted(*args)  # JAX dispatches asynchronously: this returns before the device is done
        return lambda: to_host(out)

    call.lower = jitted.lower
    call.dispatch = start
    return call


def dispatch(fn: Callable, *args: Any) -> Callable[[], Any]:
    """Start `fn(*args)` and return a zero-argument callable giving its host outputs.

    For a `host_outputs` function the device runs while the caller does host work (e.g. scoring)
    before calling the result; any other callable (e.g. a test double) runs now.
    """
    start = getattr(fn, "dispatch", None)
    if start is not None:
        return start(*args)
    out = fn(*args)
    return lambda: out


def make_logprob_fn(parts: ModelParts, *, chunk_size: int = 8192, qarl_format: str = "",
                    temperature: float = 1.0) -> Callable:
    """Jitted `(params, rest, tokens, positions, segment_ids) -> (logp [B, T], entropy [B, T])`.

    Used before an update for the proximal (`old_logprobs`) and reference (`ref_logprobs`) passes;
    returns host arrays on every process (`parallel.batch.to_host`).
    """
    def fn(params, rest, tokens, positions, segment_ids):
        return policy_token_stats(parts, params, rest, tokens, positions, segment_ids, chunk_size=chunk_size,
                                  qarl_format=qarl_format, temperature=temperature)

    return host_outputs(jax.jit(fn))


def make_pass_fn(parts: ModelParts, *, chunk_size: int = 8192, qarl_format: str = "", temperature: float = 1.0,
                 values: bool = False, topk: int = 0) -> Callable:
    """Jitted `(params, rest, tokens, positions, segment_ids) -> learner_outputs dict` for the extra
    passes before an update: the critic's `values` and a teacher's `topk_idx` / `topk_logp`."""
    def fn(params, rest, tokens, positions, segment_ids):
        return learner_outputs(parts, params, rest, tokens, positions, segment_ids, chunk_size=chunk_size,
                               qarl_format=qarl_format, temperature=temperature, values=values, topk=topk)

    return host_outputs(jax.jit(fn))


# RolloutBatch field -> the name objectives read it under (see objectives/registry.py).
BATCH_TO_OBJECTIVE = {"old_logprobs": "old_logp", "rollout_logprobs": "rollout_logp", "ref_logprobs": "ref_logp",
                      "teacher_logprobs": "teacher_logp", "teacher_topk_idx": "teacher_topk_idx",
                      "teacher_topk_logp": "teacher_topk_logp", "loss_mask": "mask", "advantages": "advantages",
                      "rewards": "rewards", "group_ids": "group_ids", "cond": "cond", "old_values": "old_values",
                      "returns": "returns", "step_id": "step_id", "step_ok": "step_ok", "aux_scale": "aux_scale"}


def objective_inputs(mb: RolloutBatch, learner: Mapping[str, jax.Array]) -> dict[str, Any]:
    """The mapping an objective reads: the batch's fields under their objective names plus the learner's."""
    inputs = {name: getattr(mb, field) for field, name in BATCH_TO_OBJECTIVE.items() if getattr(mb, field) is not None}
    inputs.update({k: v for k, v in learner.items() if k in ("logp", "entropy", "student_logits", "values")})
    return inputs


def make_objective_loss(options: RLUpdateOptions) -> Callable:
    """`loss(learner, minibatch) -> (loss, (metrics, mean entropy))` of the learner's outputs
    (`learner_outputs`: logp, entropy `[B, T]`, optionally student_logits `[B, T, V]`, values `[B, T]`):
    the objective, plus the critic's clipped value loss (`value/`, weight `critic_coef`) when the critic is on."""
    objective = get_objective(options.objective)
    kwargs = options.kwargs
    if options.num_groups:
        kwargs = {**kwargs, "num_groups": options.num_groups}
    critic_in_objective = options.objective == "ppo_value"

    def loss_fn(learner, mb: RolloutBatch):
        out = objective(objective_inputs(mb, learner), **kwargs)
        loss, metrics = out.loss, dict(out.metrics)
        if options.critic and not critic_in_objective:
            value = value_loss(learner["values"], mb.old_values, mb.returns, mb.loss_mask, clip=options.critic_clip)
            loss = loss + options.critic_coef * value.loss
            metrics.update({"value/loss": value.loss, "value/clipfrac": value.metrics["vf_clipfrac"]})
        return loss, (metrics, masked_mean(jax.lax.stop_gradient(learner["entropy"]), mb.loss_mask))

    return loss_fn


def make_learner_forward(parts: ModelParts, options: RLUpdateOptions) -> Callable:
    """`forward(params, rest, tokens, positions, segment_ids) -> learner_outputs dict` with the update's settings."""
    def forward(params, rest, tokens, positions, segment_ids):
        return learner_outputs(parts, params, rest, tokens, positions, segment_ids, chunk_size=options.logprob_chunk,
                               qarl_format=options.qarl_format, temperature=options.temperature,
                               logits=options.student_logits, values=options.critic)

    return forward


def make_rl_loss(parts: ModelParts, options: RLUpdateOptions) -> Callable:
    """`loss(params, rest, minibatch) -> (loss, (metrics, mean entropy))`: `make_objective_loss` of
    the learner's forward on the minibatch."""
    forward, objective_loss = make_learner_forward(parts, options), make_objective_loss(options)

    def loss_fn(params, rest, mb: RolloutBatch):
        return objective_loss(forward(params, rest, mb.tokens, mb.positions, mb.segment_ids), mb)

    return loss_fn


def make_rl_grad(parts: ModelParts, options: RLUpdateOptions, *, mesh: Mesh | None = None) -> Callable:
    """`grad(params, rest, minibatch) -> ((loss, (metrics, mean entropy)), grads)`, like
    `jax.value_and_grad(make_rl_loss(...), has_aux=True)` (which it is for `micro_batches == 1`).

    With `U = options.micro_batches > 1` the minibatch's `[b, T]` rows are split into `U` strided
    micro-batches of `b / U` rows (`parallel.batch.split_strided`): a forward-only scan gathers the
    learner outputs of all rows, the objective (`make_objective_loss`) runs on the whole minibatch
    and differentiates with respect to those outputs, and a second scan pulls each micro-batch's
    output cotangents back through its forward (`jax.vjp`), summing fp32 parameter gradients. Only
    one micro-batch's activations are live at a time; the result equals the un-split gradient for
    any objective, whatever it normalises by (tokens, sequences, groups) or couples across rows.
    `mesh`: micro-batch rows are pinned back to the batch layout after slicing the scanned axis.
    """
    objective_loss = make_objective_loss(options)
    n_micro = options.micro_batches
    if n_micro == 1:
        return trainable_value_and_grad(make_rl_loss(parts, options))
    forward = make_learner_forward(parts, options)

    def grad(params, rest, mb: RolloutBatch):
        params, frozen = split_trainable(params)  # the gradient's view: with LoRA only the adapters
        rows = {"tokens": mb.tokens, "positions": mb.positions, "segment_ids": mb.segment_ids}
        micro = split_strided(rows, n_micro, field="rl.micro_batches")  # each [U, b / U, T]

        def run_forward(p, x):
            x = constrain_rows(x, mesh)  # slicing the scanned axis can lose the batch layout
            return forward(join_trainable(p, frozen), rest, x["tokens"], x["positions"], x["segment_ids"])

        _, outs = jax.lax.scan(lambda c, x: (c, run_forward(params, x)), None, micro)
        learner = constrain_rows(merge_strided(outs), mesh)  # [b, T, ...] in the minibatch's row order
        (loss, aux), cotangents = jax.value_and_grad(objective_loss, has_aux=True)(learner, mb)

        def pull_back(acc, xs):
            x, cot = xs
            _, vjp = jax.vjp(lambda p: run_forward(p, x), params)
            (g,) = vjp(constrain_rows(cot, mesh))
            return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads, _ = jax.lax.scan(pull_back, zeros, (micro, split_strided(cotangents, n_micro)))
        return (loss, aux), jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    return grad


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def rl_optimizer(optimizer: optax.GradientTransformation, options: RLUpdateOptions) -> optax.GradientTransformation:
    """The optimizer an RL `TrainState` is created with: `optimizer` behind the DGG gate when `options.dgg`
    (the gate statistics then live in `state.opt_state`, a `DGGWrappedState`)."""
    if not options.dgg:
        return optimizer
    return dgg_optimizer(optimizer, tau=options.dgg_tau, window=options.dgg_window, statistic=options.dgg_statistic,
                         num_minibatches=options.minibatches)


def build_update_fn(parts: ModelParts, optimizer: optax.GradientTransformation, options: RLUpdateOptions, *,
                    mesh: Mesh | None = None) -> Callable[[TrainState, Any, RolloutBatch], tuple[TrainState, dict]]:
    """The un-jitted `update(state, rest, batch) -> (state, metrics)` (see the module docstring).

    `optimizer` is `rl_optimizer(base, options)`, the one `state.opt_state` was made by; `mesh`
    (optional) keeps micro-batch rows on the batch layout (`make_rl_grad`).
    """
    grad_fn = make_rl_grad(parts, options, mesh=mesh)
    guarded = gated_update(optimizer)  # the non-finite guard when the gate is off
    k_epochs, n_mb = options.reuse_epochs, options.minibatches

    def apply(grads, opt_state, params, k, m, finite):
        """`(updates, opt_state, gated, skipped, z, stat)`: one guarded (and, with DGG, gated) optimizer step."""
        if not options.dgg:
            updates, new_opt = guarded.update(grads, opt_state, params, gated=~finite)
            return updates, new_opt, jnp.bool_(False), ~finite, jnp.float32(0.0), jnp.float32(0.0)
        updates, new_opt = optimizer.update(grads, opt_state, params, reuse_index=k + 1, minibatch_index=m,
                                            skip=~finite)
        gate = new_opt.gate
        return updates, new_opt, gate.last_gated, new_opt.skipped, gate.last_z, gate.last_stat

    def update(state: TrainState, rest: Any, batch: RolloutBatch):
        check_rollout_batch(batch)
        if options.dgg and not isinstance(state.opt_state, DGGWrappedState):
            raise ValueError("options.dgg needs a state created with rl_optimizer(optimizer, options) "
                             f"(a DGGWrappedState opt_state); got {type(state.opt_state).__name__}")
        rows = int(jnp.shape(batch.tokens)[0])
        if rows % n_mb == 0 and (rows // n_mb) % options.micro_batches:
            raise ValueError(f"rl.micro_batches={options.micro_batches} must divide the rows per minibatch: "
                             f"{rows} batch rows / rl.minibatches={n_mb} = {rows // n_mb}")
        minibatches = split_minibatches(batch, n_mb)

        def run_step(carry, k, m, mb):
            params, opt_state, _ = carry
            (loss, (obj_metrics, entropy)), grads = grad_fn(params, rest, mb)
            params, frozen = split_trainable(params)  # grads and the optimizer cover this view (LoRA: adapters)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, new_opt, gated, skip, z, stat = apply(grads, opt_state, params, k, m, finite)
            new_params = join_trainable(_select(skip, params, optax.apply_updates(params, updates)), frozen)
            if frozen is None:
                energy = head_gradient_energy(grads)
                head_rel, inner_rel = relative_update_norms(updates, params)
            else:  # LoRA freezes the head: no head gradient; the adapters' relative change as "inner"
                energy, head_rel = jnp.float32(0.0), jnp.float32(0.0)
                inner_rel = optax.tree.norm(updates) / (optax.tree.norm(params) + 1e-12)
            metrics = {"loss": loss, "entropy": entropy, "grad_norm": grad_norm, "lmhead_energy": energy,
                       "head_rel": head_rel, "inner_rel": inner_rel, "stat": stat,
                       "z": z, "gated": gated.astype(jnp.float32), "nonfinite": (~finite).astype(jnp.float32),
                       "applied": (~skip).astype(jnp.float32), "executed": jnp.float32(1.0), "obj": obj_metrics}
            return (new_params, new_opt, gated), metrics

        def epoch(carry, k):
            def minibatch(carry, xs):
                m, mb = xs
                probe = jax.eval_shape(lambda c: run_step(c, k, m, mb)[1], carry)
                noop = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe)
                # A stopped batch takes the no-op branch: no forward, no backward, no state change.
                return jax.lax.cond(carry[2], lambda c: (c, noop), lambda c: run_step(c, k, m, mb), carry)

            return jax.lax.scan(minibatch, carry, (jnp.arange(n_mb), minibatches))

        init = (state.params, state.opt_state, jnp.bool_(False))
        (params, opt_state, stopped), per_step = jax.lax.scan(epoch, init, jnp.arange(k_epochs))
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
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

    # Objective metrics keep their standard names (pg/clipfrac, pg/kl, ref/kl, ...; objectives/registry.py).
    obj = {k: mean_applied(v) for k, v in per_step["obj"].items()}
    out = {"loss": mean_applied(per_step["loss"]), "pg/entropy": mean_applied(per_step["entropy"]),
           "grad_norm": mean_applied(per_step["grad_norm"]),
           "gate/lmhead_energy": mean_applied(per_step["lmhead_energy"]),
           "gate/events": jnp.sum(per_step["gated"]), "gate/stopped": stopped.astype(jnp.float32),
           "gate/z": per_step["z"].reshape(-1)[last],
           "gate/z_max": jnp.max(jnp.where(executed > 0, per_step["z"], -jnp.inf)),
           "gate/stat_max": _max_over_reuse(per_step["stat"], executed > 0),
           "reuse/epochs_used": jnp.sum(jnp.max(applied, axis=1)),
           "reuse/steps_applied": jnp.sum(applied), "nonfinite_steps": jnp.sum(per_step["nonfinite"])}
    return {**out, **dwd_metrics(per_step), **obj}


def _max_over_reuse(x: jax.Array, where: jax.Array) -> jax.Array:
    """Max of `[K, M]` values over the passes k > 1 selected by `where` (0 when none is)."""
    top = jnp.max(x[1:], initial=-jnp.inf, where=where[1:])
    return jnp.where(jnp.isfinite(top), top, 0.0)


def dwd_metrics(per_step: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Divergence diagnostics of one batch from `[K, M]` per-step values (DGG's DWD phenomenon).

    dwd/head_rel_update, dwd/inner_rel_update: mean relative weight change per applied step of the
    head and of the inner matrices; dwd/ratio: mean head / inner ratio; dwd/ratio_first: at pass 1;
    dwd/ratio_reuse_max: max over applied passes k > 1; dwd/energy_ratio_max, dwd/energy_ratio_last:
    head-gradient energy at a pass k > 1 (max, last executed) over the same minibatch's pass-1 energy.
    """
    applied, executed = per_step["applied"], per_step["executed"] > 0
    n_applied = jnp.maximum(jnp.sum(applied), 1.0)
    ratio = per_step["head_rel"] / (per_step["inner_rel"] + 1e-12)
    energy = per_step["lmhead_energy"]
    e_ratio = energy / (energy[:1] + 1e-30)
    last = jnp.maximum(jnp.sum(executed, axis=0) - 1, 0)  # [M] last executed pass per minibatch
    e_last = jnp.take_along_axis(e_ratio, last[None], axis=0)[0]
    return {"dwd/head_rel_update": jnp.sum(per_step["head_rel"] * applied) / n_applied,
            "dwd/inner_rel_update": jnp.sum(per_step["inner_rel"] * applied) / n_applied,
            "dwd/ratio": jnp.sum(ratio * applied) / n_applied,
            "dwd/ratio_first": jnp.sum(ratio[0] * applied[0]) / jnp.maximum(jnp.sum(applied[0]), 1.0),
            "dwd/ratio_reuse_max": _max_over_reuse(ratio, applied > 0),
            "dwd/energy_ratio_max": _max_over_reuse(e_ratio, executed),
            "dwd/energy_ratio_last": jnp.mean(e_last)}


def make_rl_update(parts: ModelParts, optimizer: optax.GradientTransformation, options: RLUpdateOptions, *,
                   rest: Any = None, mesh: Mesh | None = None,
                   state_shardings: TrainState | None = None) -> Callable[[TrainState, RolloutBatch], tuple]:
    """Jitted, state-donating `rl_update(state, batch) -> (new_state, metrics)`.

    `optimizer` is `rl_optimizer(base, options)` (the DGG gate's statistics live in the optimizer
    state) and `state` was created with it. With
    `mesh` and `state_shardings`, the state keeps its shardings and the batch rows are split over
    the `batch` rule. Metrics (scalars): loss, pg/entropy, grad_norm, gate/events, gate/z, gate/z_max, gate/stat_max,
    gate/stopped, gate/lmhead_energy, reuse/epochs_used, reuse/steps_applied, nonfinite_steps and
    the objective's metrics under their standard names (pg/clipfrac, pg/kl, ref/kl, value/loss, ...).
    """
    on_mesh = mesh is not None and state_shardings is not None
    update = build_update_fn(parts, optimizer, options, mesh=mesh if on_mesh else None)
    rest = {} if rest is None else rest
    if not on_mesh:
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
            batch = place_rows(batch, mesh)
            return jitted(state, rest, batch)

    rl_update.jitted = jitted  # type: ignore[attr-defined]
    return rl_update
