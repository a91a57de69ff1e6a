"""Offline preference training (DPO and other registered pair objectives) on the shared train state and loop.

`run_dpo(cfg)` (the `dpo` CLI command) reads `{"prompt", "chosen", "rejected"}` pairs (a JSONL file,
or pairs built from the built-in task: chosen = the reference answer, rejected = that answer with
one digit changed), optionally warms the model up with the SFT trainer (`cfg.sft`), then runs
`cfg.dpo.steps` jitted steps through the SFT loop driver `train_loop`. The reference policy is the
initial (post-warm-up) policy, a frozen copy of its parameters.

A pair batch of `N` pairs is one `TokenBatch` of `2N` rows, chosen rows first:
`tokens, positions, segment_ids, loss_mask: [2N, T] int32`, each row `[bos + prompt | response |
eos | padding]` with `loss_mask` 1 on the response and its eos (the SFT record encoding), so the
sequence log-prob of a response is the sum of its token log-probs over `loss_mask`.

Held-out evaluation before and after training: `pref_accuracy` is the share of held-out pairs whose
implicit reward margin z = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l)) is > 0
(0 before training, where pi = pi_ref), `margin` the mean z, `policy_accuracy` the share with
log pi(y_w) > log pi(y_l); for the built-in task also greedy exact-match accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxrl_llm.data.pipeline import BATCH_KEYS, pad_example, tokenize_record
from jaxrl_llm.data.tokenizer import Tokenizer
from jaxrl_llm.models.lora import join_trainable, split_trainable, trainable_value_and_grad
from jaxrl_llm.objectives.dgg import gated_update
from jaxrl_llm.objectives.preference import sequence_logp
from jaxrl_llm.objectives.registry import get_objective, list_objectives, objective_spec
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.batch import constrain_rows
from jaxrl_llm.parallel.distributed import initialize_distributed, is_primary_process
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.rules import replicated
from jaxrl_llm.train.builders import build_optimizer, build_policy, build_schedule, build_task, build_tokenizer
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.evaluate import exact_match_accuracy, greedy_completions, make_greedy_generate
from jaxrl_llm.train.metrics import MetricsWriter
from jaxrl_llm.train.rl import initial_policy
from jaxrl_llm.train.rl_update import make_logprob_fn, policy_token_stats
from jaxrl_llm.train.sft import shard_batch, split_micro_batches
from jaxrl_llm.train.sft_run import train_loop
from jaxrl_llm.train.state import TrainState, create_train_state

PAIR_KEYS: tuple[str, ...] = ("prompt", "chosen", "rejected")
SEQUENCE_KEYS: tuple[str, ...] = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp",
                                  "ref_rejected_logp")

Batch = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------- data

def read_pairs(path: str) -> list[dict[str, str]]:
    """The `{"prompt", "chosen", "rejected"}` records of a JSONL file (blank lines skipped).

    Raises `ValueError` naming the file, the 1-based line and the missing or non-string key.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"preference pairs file {path!r} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: must hold a JSON object; got {type(record).__name__}")
            for key in PAIR_KEYS:
                if key not in record:
                    raise ValueError(f"{path}:{line_no}: missing key {key!r} (a pair needs {list(PAIR_KEYS)}); "
                                     f"got keys {sorted(record)}")
                if not isinstance(record[key], str):
                    raise ValueError(f"{path}:{line_no}: key {key!r} must be a string; "
                                     f"got {type(record[key]).__name__}")
            pairs.append({k: record[k] for k in PAIR_KEYS})
    if not pairs:
        raise ValueError(f"preference pairs file {path!r} holds no records")
    return pairs


def corrupt_answer(answer: str, rng: np.random.Generator) -> str:
    """`answer` with one digit replaced by a different one: a wrong answer of the same form.

    The new digit is never a leading zero, so the text still reads as one integer ("82" -> "32",
    never "02") and a task that compares integers scores it wrong.
    """
    digits = [i for i, ch in enumerate(answer) if ch.isdigit()]
    if not digits:
        raise ValueError(f"answer {answer!r} has no digit to change")
    i = digits[int(rng.integers(len(digits)))]
    leading = i == digits[0] and (len(digits) > 1 or answer.startswith("-"))
    choices = [d for d in "0123456789" if d != answer[i] and not (leading and d == "0")]
    return answer[:i] + choices[int(rng.integers(len(choices)))] + answer[i + 1:]


def task_pairs(problems: Sequence[Any], seed: int) -> list[dict[str, str]]:
    """Pairs from task problems: chosen = `problem.reference`, rejected = `corrupt_answer` of it."""
    rng = np.random.default_rng(seed)
    return [{"prompt": p.prompt, "chosen": p.reference, "rejected": corrupt_answer(p.reference, rng)}
            for p in problems]


def encode_pairs(pairs: Sequence[Mapping[str, str]], tokenizer: Tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """Token arrays of `P` pairs: `{tokens, positions, segment_ids, loss_mask}` each `[P, 2, T]` int32.

    Axis 1 is (chosen, rejected); each row is the SFT encoding of `{prompt, completion=response}`
    padded to `T = seq_len`. A pair too long for `seq_len` raises, naming its index.
    """
    rows = []
    for i, pair in enumerate(pairs):
        both = []
        for side in ("chosen", "rejected"):
            try:
                example = tokenize_record({"prompt": pair["prompt"], "completion": pair[side]}, tokenizer,
                                          max_len=seq_len)
            except ValueError as e:
                raise ValueError(f"pair {i} ({side}): {e}") from None
            both.append(pad_example(example, seq_len, tokenizer.pad_id))
        rows.append({k: np.stack([both[0][k], both[1][k]]) for k in BATCH_KEYS})
    return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in BATCH_KEYS}


def stack_pairs(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{key: [N, 2, T]}` -> `{key: [2N, T]}`, the N chosen rows first, then the N rejected rows."""
    return {k: np.concatenate([np.asarray(v)[:, 0], np.asarray(v)[:, 1]]) for k, v in arrays.items()}


def pair_dataset(encoded: Mapping[str, np.ndarray], *, batch_size: int, seed: int) -> grain.IterDataset:
    """A grain dataset of `[2 * batch_size, T]` pair batches, reshuffled every epoch, repeated forever.

    Its iterator has `get_state()` / `set_state()`, so checkpoints carry the data position.
    """
    num = encoded["tokens"].shape[0]
    if batch_size < 1 or num < batch_size:
        raise ValueError(f"dpo.batch_size={batch_size} must be in [1, number of training pairs = {num}]")
    rows = [{k: v[i] for k, v in encoded.items()} for i in range(num)]
    ds = grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None).to_iter_dataset()
    return ds.batch(batch_size, drop_remainder=True).map(stack_pairs)


# ---------------------------------------------------------------------------------------------- step

def split_pair_logps(seq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[2N]` per-row values of a pair batch -> `(chosen [N], rejected [N])`."""
    n = seq.shape[0] // 2
    return seq[:n], seq[n:]


def pair_sequence_logps(parts: ModelParts, params: Any, rest: Any, batch: Batch, *,
                        chunk_size: int = 8192) -> tuple[jax.Array, jax.Array]:
    """`(chosen [N], rejected [N])` response log-probs log pi(y | x) of a `[2N, T]` pair batch."""
    logp, _ = policy_token_stats(parts, params, rest, batch["tokens"], batch["positions"], batch["segment_ids"],
                                 chunk_size=chunk_size)
    return split_pair_logps(sequence_logp(logp, batch["loss_mask"]))


def make_preference_loss(parts: ModelParts, objective: str, objective_kwargs: Mapping[str, Any] | None = None, *,
                         chunk_size: int = 8192) -> Callable:
    """`loss(params, rest, batch, ref) -> (loss, metrics)`; `ref` = the reference's `(chosen [N], rejected [N])`.

    The registered `objective` reads the four `[N]` sequence log-probs (`SEQUENCE_KEYS`). Metrics:
    the objective's own under `obj/`, and `margin`, the mean implicit margin z (see module docstring).
    """
    fn = get_objective(objective)
    kwargs = dict(objective_kwargs or {})

    def loss_fn(params, rest, batch, ref):
        chosen, rejected = pair_sequence_logps(parts, params, rest, batch, chunk_size=chunk_size)
        ref_chosen, ref_rejected = jax.lax.stop_gradient(ref)
        out = fn(dict(zip(SEQUENCE_KEYS, (chosen, rejected, ref_chosen, ref_rejected))), **kwargs)
        z = jax.lax.stop_gradient((chosen - rejected) - (ref_chosen - ref_rejected))
        return out.loss, {**{f"obj/{k}": v for k, v in out.metrics.items()}, "margin": jnp.mean(z)}

    return loss_fn


def make_dpo_step(parts: ModelParts, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                  state_shardings: TrainState, mesh: Mesh, *, ref_params: Any, rest: Any = None,
                  objective: str = "dpo", objective_kwargs: Mapping[str, Any] | None = None,
                  num_micro_batches: int = 1, chunk_size: int = 8192) -> Callable[[TrainState, Batch], tuple]:
    """Jitted `dpo_step(state, batch) -> (new_state, metrics)`; `state` is donated, `ref_params` kept.

    `batch`: a `[2N, T]` pair batch (`stack_pairs`), host numpy or global arrays. It is split into
    `num_micro_batches` strided micro-batches (N must be a multiple, so each keeps its pairs whole);
    the reference pass runs per micro-batch without gradient; the objective's loss of each is
    averaged, exact for objectives that average over pairs. A non-finite loss or gradient leaves
    params and optimizer state unchanged. Metrics (scalars): `loss`, `obj/*`, `margin`,
    `grad_norm`, `learning_rate`, `pairs`, `finite` (1.0 when the update was applied).
    `dpo_step(state, batch, ref=params)` uses another reference (same shardings), without recompiling.
    """
    # Gradients of the trainable view (with LoRA only the adapters, models/lora.py).
    grad_fn = trainable_value_and_grad(make_preference_loss(parts, objective, objective_kwargs, chunk_size=chunk_size))
    guarded = gated_update(optimizer)
    rest = {} if rest is None else rest
    m = int(num_micro_batches)

    def step(state: TrainState, ref_params: Any, rest: Any, batch: Batch):
        n_pairs = batch["tokens"].shape[0] // 2
        if n_pairs % m:
            raise ValueError(f"dpo.micro_batches={m} must divide the pairs per batch {n_pairs}")
        params, frozen = split_trainable(state.params)
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

        def accumulate(grads, mb):
            # Slicing the scanned axis can lose the batch layout; pin it back to the batch rule.
            mb = constrain_rows(mb, mesh)
            ref = pair_sequence_logps(parts, ref_params, rest, mb, chunk_size=chunk_size)
            (loss, metrics), g = grad_fn(state.params, rest, mb, ref)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32) / m, grads, g)
            return grads, {"loss": loss, **metrics}

        with activation_mesh(mesh):  # traced here: the model pins its residual stream to the mesh
            grads, per_micro = jax.lax.scan(accumulate, zeros, split_micro_batches(batch, m))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        metrics = jax.tree.map(jnp.mean, per_micro)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, new_opt = guarded.update(grads, state.opt_state, params, gated=~finite)
        new_params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), optax.apply_updates(params, updates), params)
        new_state = state.replace(params=join_trainable(new_params, frozen), opt_state=new_opt, step=state.step + 1)
        metrics.update(grad_norm=grad_norm, learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
                       pairs=jnp.float32(n_pairs), finite=finite.astype(jnp.float32))
        return new_state, metrics

    rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
    jitted = jax.jit(step, in_shardings=(state_shardings, state_shardings.params, rest_shardings, None),
                     out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))

    def dpo_step(state: TrainState, batch: Batch, *, ref: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        if not isinstance(next(iter(batch.values())), jax.Array):
            batch = shard_batch(batch, mesh)
        return jitted(state, ref_params if ref is None else ref, rest, batch)

    dpo_step.jitted = jitted  # type: ignore[attr-defined]
    return dpo_step


# ---------------------------------------------------------------------------------------------- eval

def eval_pair_logps(logprob_fn: Callable, params: Any, rest: Any, encoded: Mapping[str, np.ndarray], *,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(chosen [P], rejected [P])` float32 response log-probs of `P` encoded pairs (`[P, 2, T]` arrays).

    `logprob_fn` is `make_logprob_fn(parts)`. The last batch is padded with copies of the first
    pair so every call has `2 * batch_size` rows and compiles once.
    """
    num = encoded["tokens"].shape[0]
    chosen, rejected = [], []
    for start in range(0, num, batch_size):
        idx = np.arange(start, start + batch_size)
        idx = np.where(idx < num, idx, 0)
        rows = stack_pairs({k: v[idx] for k, v in encoded.items()})
        logp, _ = logprob_fn(params, rest, rows["tokens"], rows["positions"], rows["segment_ids"])
        c, r = split_pair_logps(sequence_logp(logp, jnp.asarray(rows["loss_mask"])))
        keep = min(batch_size, num - start)
        chosen.append(np.asarray(c)[:keep])
        rejected.append(np.asarray(r)[:keep])
    return np.concatenate(chosen), np.concatenate(rejected)


def preference_metrics(policy_chosen: np.ndarray, policy_rejected: np.ndarray, ref_chosen: np.ndarray,
                       ref_rejected: np.ndarray) -> dict[str, float]:
    """Held-out pair metrics from `[P]` sequence log-probs: `pref_accuracy`, `margin`, `policy_accuracy`."""
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    return {"pref_accuracy": float(np.mean(z > 0)), "margin": float(np.mean(z)),
            "policy_accuracy": float(np.mean(policy_chosen > policy_rejected))}


# ---------------------------------------------------------------------------------------------- run

def check_dpo_config(cfg: Any) -> None:
    """Fail before anything is built when a field is out of range, naming it."""
    dpo = cfg.dpo
    for name in ("steps", "batch_size", "micro_batches", "log_every"):
        if int(dpo[name]) < 1:
            raise ValueError(f"dpo.{name} must be >= 1; got {dpo[name]}")
    if int(dpo.batch_size) % int(dpo.micro_batches):
        raise ValueError(f"dpo.micro_batches={dpo.micro_batches} must divide dpo.batch_size={dpo.batch_size}")
    for name in ("num_pairs", "num_problems", "batch_size"):
        if int(cfg.eval[name]) < 0:
            raise ValueError(f"eval.{name} must be >= 0; got {cfg.eval[name]}")
    if (int(cfg.eval.num_pairs) or int(cfg.eval.num_problems)) and int(cfg.eval.batch_size) < 1:
        raise ValueError(f"eval.batch_size must be >= 1 to evaluate; got {cfg.eval.batch_size}")
    spec = objective_spec(dpo.objective)  # fails naming the registered objectives
    if spec.trainer != "dpo":
        preference = [n for n in list_objectives() if objective_spec(n).trainer == "dpo"]
        raise ValueError(f"dpo.objective={dpo.objective!r} is trained by the {spec.trainer!r} command, not on "
                         f"preference pairs; preference objectives: {preference}")
    kwargs = dict(dpo.objective_kwargs)
    spec.check_hparams(kwargs, "dpo.objective_kwargs")
    missing = spec.missing_inputs(SEQUENCE_KEYS, kwargs)
    if missing:
        raise ValueError(f"dpo.objective={dpo.objective!r} reads {missing}; the preference trainer provides "
                         f"{list(SEQUENCE_KEYS)}")


def load_pairs(cfg: Any, task: Any | None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """`(train_pairs, eval_pairs)` per `cfg.data` / `cfg.eval.num_pairs` (see configs/dpo_tiny.py)."""
    data, n_eval = cfg.data, int(cfg.eval.num_pairs)
    if data.pairs_path:
        pairs = read_pairs(data.pairs_path)
        if data.eval_pairs_path:
            return pairs, read_pairs(data.eval_pairs_path)[:n_eval]
        if n_eval >= len(pairs):
            raise ValueError(f"eval.num_pairs={n_eval} leaves no training pairs of the {len(pairs)} in "
                             f"{data.pairs_path!r}; lower it or set data.eval_pairs_path")
        return (pairs[:-n_eval], pairs[-n_eval:]) if n_eval else (pairs, [])
    seed = int(cfg.seed)
    train = task_pairs(task.sample_batch(int(data.num_pairs), seed, "train"), seed)
    held_out = task_pairs(task.eval_set(n_eval, seed=seed), seed + 1) if n_eval else []
    return train, held_out


def preference_policy(cfg: Any, tokenizer: Tokenizer) -> tuple[Any, Any, Any, Any, Any]:
    """`(mesh, parts, params, rest, params_shardings)`: after the SFT warm-up if `sft.train.steps > 0`, else fresh."""
    if int(cfg.sft.train.steps) > 0:
        return initial_policy(cfg, warm_up=True)
    return build_policy(cfg, tokenizer)


def dpo_trainer(cfg: Any, tokenizer: Tokenizer, initial: tuple | None = None
                ) -> tuple[Mesh, ModelParts, Any, Any, TrainState, Callable]:
    """`(mesh, parts, rest, ref_params, state, step_fn)`: the initial policy (`preference_policy`), a frozen
    copy of its params as the reference, its train state and `make_dpo_step`, scheduled over `cfg.dpo.steps`.

    `initial`: a ready `(mesh, parts, params, rest, shardings)` policy (`train.rl.initial_policy`, e.g. a
    warm-up shared with RL runs) in place of `preference_policy`; its params are copied, not donated."""
    dpo = cfg.dpo
    if initial is None:
        mesh, parts, params, rest, shardings = preference_policy(cfg, tokenizer)
    else:
        mesh, parts, params, rest, shardings = initial
        params = jax.tree.map(lambda x: x.copy(), params)  # the state is donated; keep the caller's
    ref_params = jax.tree.map(lambda x: x.copy(), params)  # the state is donated; the reference stays
    steps = int(dpo.steps)
    optimizer, schedule = build_optimizer(dpo.optimizer, steps), build_schedule(dpo.optimizer, steps)
    state = create_train_state(params, optimizer, mesh, shardings, seed=int(cfg.seed))
    step_fn = make_dpo_step(parts, optimizer, schedule, jax.tree.map(lambda x: x.sharding, state), mesh,
                            ref_params=ref_params, rest=rest, objective=dpo.objective,
                            objective_kwargs=dict(dpo.objective_kwargs), num_micro_batches=int(dpo.micro_batches),
                            chunk_size=int(dpo.logprob_chunk))
    return mesh, parts, rest, ref_params, state, step_fn


@dataclasses.dataclass
class DPOSetup:
    """Everything a preference run needs, built from one config.

    eval_pairs: `[P, 2, T]` encoded held-out pairs (None without any); eval_ref_logps: their
    reference `(chosen [P], rejected [P])`; eval_problems: held-out task problems for greedy accuracy.
    """

    cfg: Any
    mesh: Mesh
    tokenizer: Tokenizer
    task: Any
    parts: ModelParts
    rest: Any
    ref_params: Any
    state: TrainState
    step_fn: Any
    dataset: grain.IterDataset
    logprob_fn: Any
    eval_pairs: dict[str, np.ndarray] | None
    eval_ref_logps: tuple[np.ndarray, np.ndarray] | None
    eval_problems: list
    eval_generate: Any


def setup_dpo(cfg: Any) -> DPOSetup:
    """Check `cfg`, read and encode the pairs (all before any compile), then build policy, state and step."""
    check_dpo_config(cfg)
    tokenizer = build_tokenizer(cfg.data)
    task = None if cfg.data.pairs_path else build_task(cfg.data)
    train_pairs, eval_pairs = load_pairs(cfg, task)
    seq_len, dpo = int(cfg.data.seq_len), cfg.dpo
    train_encoded = encode_pairs(train_pairs, tokenizer, seq_len)
    eval_encoded = encode_pairs(eval_pairs, tokenizer, seq_len) if eval_pairs else None
    initialize_distributed(cfg.distributed)  # before anything asks JAX about processes or devices
    if int(dpo.batch_size) % jax.process_count():
        raise ValueError(f"dpo.batch_size={dpo.batch_size} must be a multiple of the {jax.process_count()} processes")
    local_batch = int(dpo.batch_size) // jax.process_count()  # each process feeds its own rows
    dataset = pair_dataset(train_encoded, batch_size=local_batch, seed=int(cfg.seed) + jax.process_index())

    mesh, parts, rest, ref_params, state, step_fn = dpo_trainer(cfg, tokenizer)
    logprob_fn = make_logprob_fn(parts, chunk_size=int(dpo.logprob_chunk))
    ev = cfg.eval
    ref_logps = (eval_pair_logps(logprob_fn, ref_params, rest, eval_encoded, batch_size=int(ev.batch_size))
                 if eval_pairs else None)
    problems = task.eval_set(int(ev.num_problems), seed=int(cfg.seed)) if task and int(ev.num_problems) else []
    generate = make_greedy_generate(parts, int(ev.max_new_tokens), valid_vocab_size=tokenizer.vocab_size)
    return DPOSetup(cfg, mesh, tokenizer, task, parts, rest, ref_params, state, step_fn, dataset, logprob_fn,
                    eval_encoded, ref_logps, problems, generate)


def evaluate_dpo(setup: DPOSetup, params: Any) -> dict[str, float]:
    """Held-out `eval/pref_accuracy`, `eval/margin`, `eval/policy_accuracy` and `eval/greedy_accuracy`."""
    batch_size = int(setup.cfg.eval.batch_size)
    out = {}
    if setup.eval_pairs is not None:
        policy = eval_pair_logps(setup.logprob_fn, params, setup.rest, setup.eval_pairs, batch_size=batch_size)
        out.update({f"eval/{k}": v for k, v in preference_metrics(*policy, *setup.eval_ref_logps).items()})
    if setup.eval_problems:
        completions = greedy_completions(setup.eval_generate, params, setup.rest, setup.tokenizer,
                                         [p.prompt for p in setup.eval_problems], batch_size=batch_size)
        out["eval/greedy_accuracy"] = exact_match_accuracy(setup.task, setup.eval_problems, completions)
    return out


def run_dpo(cfg: Any) -> dict[str, Any]:
    """A DPO run per `cfg` (see the module docstring and configs/dpo_tiny.py); returns a summary dict.

    Keys: steps, first_loss, final_loss, pref_accuracy_before/after, margin_before/after,
    policy_accuracy_before/after, eval_num_pairs, with the built-in task greedy_accuracy_before/after
    (and eval_accuracy = greedy_accuracy_after, eval_num_problems), run_dir, checkpoint_dir, wall_time_s.
    """
    t0 = time.perf_counter()
    run_dir = os.path.abspath(cfg.output_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints; choose another output_dir")
    setup = setup_dpo(cfg)
    primary = is_primary_process()
    writer = MetricsWriter(run_dir, tensorboard=primary) if primary else None
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=int(cfg.checkpoint.max_to_keep))
    iterator = iter(setup.dataset)
    try:
        before = evaluate_dpo(setup, setup.state.params)
        if writer is not None and before:
            writer.write(0, before)
        state, records = train_loop(setup.state, setup.step_fn, iterator, int(cfg.dpo.steps), writer=writer,
                                    checkpointer=checkpointer, checkpoint_every=int(cfg.checkpoint.every),
                                    log_every=int(cfg.dpo.log_every), progress=primary and bool(cfg.dpo.progress_bar))
        if int(state.step) not in checkpointer.all_steps():
            checkpointer.save(int(state.step), state, iterator, force=True)
        after = evaluate_dpo(setup, state.params)
        if writer is not None and after:
            writer.write(int(state.step), after)
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()

    n_pairs = 0 if setup.eval_pairs is None else int(setup.eval_pairs["tokens"].shape[0])
    summary: dict[str, Any] = {"steps": int(state.step), "first_loss": records[0]["loss"],
                               "final_loss": records[-1]["loss"], "eval_num_pairs": n_pairs}
    for key in ("pref_accuracy", "margin", "policy_accuracy", "greedy_accuracy"):
        if f"eval/{key}" in before:
            summary[f"{key}_before"], summary[f"{key}_after"] = before[f"eval/{key}"], after[f"eval/{key}"]
    if setup.eval_problems:
        summary.update(eval_accuracy=after["eval/greedy_accuracy"], eval_num_problems=len(setup.eval_problems))
    summary.update(run_dir=run_dir, checkpoint_dir=checkpointer.directory, wall_time_s=time.perf_counter() - t0)
    return summary
