"""Train and evaluate the PRM head (`analysis/prm_head.py`); the "prm_head" step scorer of BCPG-NSA.

    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py
    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py --config.prm.labels=first_error

`run_prm(cfg)` (the `prm` command):

1. Data: `prm.num_train` training problems of `data.task` (a task with a step checker and
   ArithChain metadata), each with `prm.samples_per_prompt` responses: injected-error traces
   (`prm.source="traces"`, `analysis.prm_head.injected_error_trace`) or samples of the trunk policy
   (`"policy"`, at `prm.temperature`). Step labels (`prm.labels`): "propagation" (error propagation
   and cessation, `analysis.prm.label_steps`), "first_error", or "monte_carlo" (a step is 1 iff one
   of `prm.mc_samples` completions of the policy from the prefix ending at it is right).
2. Training: the decoder of `model` (`model.init_from`: a policy checkpoint, `orbax:RUN` or
   `hf:PATH`) plus the head, per-step BCE, `train.steps` optax steps through `train/loop.py: drive`
   (progress bar, `metrics.jsonl`, `checkpoints/`); `prm.train_trunk=False` freezes the decoder and
   trains the head alone. `<output_dir>/prm_head.json` records what `load_prm_head` needs.
3. Evaluation on `prm.eval.num_problems` held-out problems with `max(prm.eval.n)` responses each
   (same source): step precision / recall / F1 (erroneous steps are the positive class) and AUC
   against the propagation labels, and PRM@N (best-of-N by the final step's score), for the head
   and, as references, the rule-based propagation labels and the first-error labels used as
   scores. Written to `prm.eval.output` (JSON; keys in `REPORT_KEYS`).

`prm.head_path` set: no training, the trained PRM in that run directory is evaluated.

`rl.step_labels.prm="prm_head"` with `rl.step_labels.prm_path=<a prm run directory>` makes this
head BCPG-NSA's second step judge (`configs/bcpg_offline_prm.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrl_llm.analysis.prm import final_step_scores, monte_carlo_labels, prm_at_n, step_prf
from jaxrl_llm.analysis.prm_head import (
    LABEL_KINDS,
    StepExample,
    encode_steps,
    init_head,
    injected_error_trace,
    pack_examples,
    prm_step_logits,
    step_auc,
    step_bce,
    truth_labels,
)
from jaxrl_llm.data.tokenizer import Tokenizer, stop_ids_of
from jaxrl_llm.envs.step_labels import has_step_labels, register_step_scorer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.objectives.dgg import gated_update
from jaxrl_llm.parallel.batch import place_rows
from jaxrl_llm.parallel.distributed import is_primary_process
from jaxrl_llm.parallel.init import abstract_model, split_module, state_shardings
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.parallel.rules import replicated
from jaxrl_llm.rollout.prompts import round_up
from jaxrl_llm.rollout.sampler import SamplingConfig
from jaxrl_llm.train.builders import build_optimizer, build_policy, build_schedule, build_task, build_tokenizer
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.eval_run import write_json
from jaxrl_llm.train.init_from import check_init_from
from jaxrl_llm.train.loop import drive
from jaxrl_llm.train.metrics import MetricsWriter
from jaxrl_llm.train.rl_rollout import decode_responses, sample_responses
from jaxrl_llm.train.run_dir import open_run_dir, truncate_metrics
from jaxrl_llm.train.state import TrainState, create_train_state

__all__ = ["HEAD_FILE", "PRM_SOURCES", "REPORT_KEYS", "PRMHead", "build_examples", "check_prm_config",
           "evaluate_prm", "load_prm_head", "make_prm_step", "prm_head_scorer", "run_prm"]

HEAD_FILE = "prm_head.json"
PRM_SOURCES = ("traces", "policy")
REPORT_KEYS = ("labels", "source", "gold", "threshold", "num_problems", "num_responses", "num_steps", "step",
               "solution_auc", "distinct_per_problem",
               "prm_at_n", "head_path")
# Rows of the report: the trained head and the label rules used as scores (references).
REPORT_ROWS = ("prm_head", "rule_based", "first_error", "all_correct")
_SCORE_BATCH = 64  # responses per scoring call
_TRAIN_SALT, _EVAL_SALT, _SAMPLE_SALT = 0x9A11, 0xE7A1, 0x5A3F


# ------------------------------------------------------------------------------------------ config


def _int(section: Mapping[str, Any], name: str, low: int, where: str) -> int:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}.{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def check_prm_config(cfg: Any) -> None:
    """Fail before anything is built, naming the field, when the `prm` command's config does not fit."""
    prm = cfg.prm
    if prm.labels not in LABEL_KINDS:
        raise ValueError(f"prm.labels must be one of {LABEL_KINDS}; got {prm.labels!r}")
    if prm.source not in PRM_SOURCES:
        raise ValueError(f"prm.source must be one of {PRM_SOURCES}; got {prm.source!r}")
    if not isinstance(prm.train_trunk, bool):
        raise ValueError(f"prm.train_trunk must be true or false; got {prm.train_trunk!r}")
    for name in ("num_train", "samples_per_prompt", "max_steps", "max_new_tokens", "mc_samples"):
        _int(prm, name, 1, "prm")
    for name in ("steps", "batch_size", "log_every"):
        _int(cfg.train, name, 1, "train")
    _int(cfg.data, "seq_len", 2, "data")
    _int(prm.eval, "num_problems", 1, "prm.eval")
    ns = tuple(prm.eval.n)
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise ValueError(f"prm.eval.n must be a non-empty tuple of integers >= 1 (PRM@N); got {ns!r}")
    if not 0.0 <= float(prm.eval.threshold) <= 1.0:
        raise ValueError(f"prm.eval.threshold must be in [0, 1]; got {prm.eval.threshold}")
    tr = prm.traces
    if not (0.0 <= float(tr.error_prob) <= 1.0 and 0.0 <= float(tr.fix_prob) <= 1.0):
        raise ValueError(f"prm.traces.error_prob and prm.traces.fix_prob must be in [0, 1]; got "
                         f"{tr.error_prob}, {tr.fix_prob}")
    _int(tr, "max_delta", 1, "prm.traces")
    if int(cfg.model.get("lora", {}).get("rank", 0)):
        raise ValueError("model.lora.rank must be 0 for the prm command (the trunk is frozen or fully trained)")
    check_init_from(cfg.model)
    if prm.head_path and not os.path.isfile(os.path.join(prm.head_path, HEAD_FILE)):
        raise FileNotFoundError(f"prm.head_path={prm.head_path!r}: no {HEAD_FILE} (expected a prm run's output_dir)")
    task = build_task(cfg.data)
    if not has_step_labels(task):
        raise ValueError(f"data.task={cfg.data.task!r} has no step checker (step_labels); the PRM scores its steps")


# -------------------------------------------------------------------------------------------- data


def _chain(problem: Problem) -> tuple[Sequence[int], Sequence[str]]:
    meta = problem.metadata
    if "operands" not in meta or "ops" not in meta:
        raise ValueError(f"problem {problem.prompt!r} has no operands/ops metadata: PRM labels read ArithChain truth")
    return meta["operands"], meta["ops"]


def trace_responses(problems: Sequence[Problem], n: int, seed: int, traces: Mapping[str, Any], salt: int
                    ) -> list[list[str]]:
    """`[P][n]` injected-error traces (`injected_error_trace`), one seeded generator per call."""
    rng = np.random.default_rng([seed, salt])
    kw = {"error_prob": float(traces["error_prob"]), "fix_prob": float(traces["fix_prob"]),
          "max_delta": int(traces["max_delta"])}
    return [[injected_error_trace(*_chain(p), rng, **kw) for _ in range(n)] for p in problems]


def sample_texts(parts: Any, params: Any, rest: Any, tokenizer: Tokenizer, prompt_ids: Sequence[Sequence[int]], *,
                 n: int, max_new_tokens: int, temperature: float, key: jax.Array, mesh: Any,
                 batch_size: int = 256) -> list[list[str]]:
    """`[len(prompt_ids)][n]` sampled continuations (text up to the stop id) of each token prompt."""
    config = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), n=int(n),
                            stop_ids=stop_ids_of(tokenizer), pad_id=tokenizer.pad_id)
    out: list[list[str]] = []
    for c, start in enumerate(range(0, len(prompt_ids), batch_size)):
        chunk = list(prompt_ids[start:start + batch_size])
        rollout = sample_responses(parts, params, rest, chunk, key=jax.random.fold_in(key, c), config=config, mesh=mesh)
        texts = decode_responses(tokenizer, rollout)
        out.extend(texts[i * n:(i + 1) * n] for i in range(len(chunk)))
    return out


def monte_carlo_step_labels(policy: tuple, tokenizer: Tokenizer, task: Any, problems: Sequence[Problem],
                            responses: Sequence[str], *, samples: int, max_new_tokens: int, temperature: float,
                            key: jax.Array, mesh: Any) -> list[np.ndarray]:
    """Per response `[K]` int32: step k is 1 iff one of `samples` policy completions of `prompt +
    response[:end_k]` scores 1 (`analysis.prm.monte_carlo_labels`)."""
    parts, params, rest = policy
    prefixes, owners = [], []
    for i, (p, r) in enumerate(zip(problems, responses)):
        for s in task.step_labels(p, r):
            prefixes.append(tokenizer.encode_prompt(p.prompt) + tokenizer.encode(r[:s.end]))
            owners.append((i, r[:s.end]))
    texts = sample_texts(parts, params, rest, tokenizer, prefixes, n=samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, key=key, mesh=mesh) if prefixes else []
    correct: list[list[list[float]]] = [[] for _ in responses]
    for (i, prefix), completions in zip(owners, texts):
        correct[i].append([task.score(problems[i], prefix + c) for c in completions])
    return [monte_carlo_labels(np.asarray(c).reshape(-1, samples)) if c else np.zeros((0,), np.int32)
            for c in correct]


def build_examples(task: Any, tokenizer: Tokenizer, problems: Sequence[Problem], responses: Sequence[str],
                   labels: Sequence[np.ndarray]) -> list[StepExample]:
    """One `StepExample` per response (responses without a step are dropped); `labels[i]` `[K_i]`."""
    out = []
    for p, r, y in zip(problems, responses, labels):
        spans = [(s.start, s.end) for s in task.step_labels(p, r)]
        if not spans:
            continue
        if len(y) != len(spans):
            raise ValueError(f"{len(y)} labels for {len(spans)} steps of {r!r}")
        tokens, end = encode_steps(tokenizer, p.prompt, r, spans)
        out.append(StepExample(tokens, end.tolist(), [int(v) for v in y]))
    return out


# ------------------------------------------------------------------------------------------- model


def head_optimizer(opt_cfg: Mapping[str, Any], steps: int, *, train_trunk: bool) -> optax.GradientTransformation:
    """The `optimizer` section's AdamW over the head (and the trunk when `train_trunk`); a frozen
    trunk gets `set_to_zero` (no update, no moments)."""
    tx = build_optimizer(opt_cfg, steps)
    if train_trunk:
        return tx

    def labels(params):
        return {"trunk": jax.tree.map(lambda _: "frozen", params["trunk"]),
                "head": jax.tree.map(lambda _: "train", params["head"])}

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_prm_step(parts: Any, rest: Any, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                  state_shardings: TrainState, mesh: Any, *, train_trunk: bool):
    """Jitted `step(state, batch) -> (state, metrics)` of per-step BCE; `state.params` is
    `{"trunk": decoder params, "head": {"w", "b"}}`. A non-finite loss or gradient leaves the state
    unchanged (`finite` = 0). Metrics: loss, step_accuracy (threshold 0.5), grad_norm,
    learning_rate, steps (labelled steps in the batch), finite."""
    guarded = gated_update(optimizer)
    rep = replicated(mesh)

    def loss_fn(params, rest, batch):
        trunk = params["trunk"] if train_trunk else jax.lax.stop_gradient(params["trunk"])
        logits = prm_step_logits(parts.merge(trunk, rest), params["head"], batch["tokens"], batch["positions"],
                                 batch["segment_ids"], batch["end_idx"])
        return step_bce(logits, batch["labels"], batch["step_mask"]), logits

    def step(state: TrainState, rest: Any, batch: Mapping[str, jax.Array]):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, rest, batch)
        grad_norm = optax.tree.norm(grads["head"] if not train_trunk else grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = guarded.update(grads, state.opt_state, state.params, gated=~finite)
        new_params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), optax.apply_updates(state.params, updates),
                                  state.params)
        mask = batch["step_mask"]
        hit = ((logits >= 0).astype(jnp.float32) == batch["labels"]).astype(jnp.float32)
        metrics = {"loss": loss, "step_accuracy": jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0),
                   "grad_norm": grad_norm, "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                   "steps": jnp.sum(mask), "finite": finite.astype(jnp.float32)}
        return state.replace(params=new_params, opt_state=new_opt, step=state.step + 1), metrics

    rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
    jitted = jax.jit(step, in_shardings=(state_shardings, rest_shardings, None), out_shardings=(state_shardings, rep),
                     donate_argnums=(0,))

    def prm_step(state: TrainState, batch: Mapping[str, np.ndarray]):
        return jitted(state, rest, place_rows(dict(batch), mesh))

    return prm_step


@dataclasses.dataclass
class PRMHead:
    """A trained PRM: decoder (`parts`, `rest`) + `params = {"trunk", "head"}` and its tokenizer.

    `score(prompts, responses, spans)` -> per response `[K]` float32 step scores in [0, 1].
    """

    parts: Any
    rest: Any
    params: Any
    tokenizer: Tokenizer

    def __post_init__(self):
        parts = self.parts

        def scores(params, rest, tokens, positions, segment_ids, end_idx):
            model = parts.merge(params["trunk"], rest)
            return jax.nn.sigmoid(prm_step_logits(model, params["head"], tokens, positions, segment_ids, end_idx))

        self._scores = jax.jit(scores)

    def score(self, prompts: Sequence[str], responses: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
              ) -> list[np.ndarray]:
        """Scores of each response's steps (`spans`: its steps' character spans, from `task.step_labels`).
        Batches are padded to multiples of 32 tokens / 8 steps, so few shapes compile."""
        out: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(responses)
        # U+FFFD stands for ids outside the tokenizer (decode_responses): read it as "?", one character, so
        # the step spans stay aligned and the head sees junk as junk.
        items = [(i, *encode_steps(self.tokenizer, p, r.replace("\ufffd", "?"), s))
                 for i, (p, r, s) in enumerate(zip(prompts, responses, spans)) if len(s)]
        for start in range(0, len(items), _SCORE_BATCH):
            chunk = items[start:start + _SCORE_BATCH]
            examples = [StepExample(t, e.tolist(), [0] * len(e)) for _, t, e in chunk]
            seq = round_up(max(len(ex.tokens) for ex in examples), 32)
            k = round_up(max(len(ex.end_idx) for ex in examples), 8)
            rows = round_up(len(examples), 8)
            examples += [examples[0]] * (rows - len(examples))
            b = pack_examples(examples, seq_len=seq, max_steps=k, pad_id=self.tokenizer.pad_id)
            s = np.asarray(self._scores(self.params, self.rest, b["tokens"], b["positions"], b["segment_ids"],
                                        b["end_idx"]))
            for row, (i, _, e) in enumerate(chunk):
                out[i] = s[row, :len(e)].astype(np.float32)
        return out


def _model_config_json(config: ModelConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> PRMHead:
    with open(os.path.join(path, HEAD_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_config"].items()}
    config = ModelConfig(**fields)
    tokenizer = build_tokenizer(meta["data"])
    mesh = mesh_from_config(meta["mesh"])
    factory = lambda: Decoder(config, rngs=nnx.Rngs(0))  # noqa: E731
    parts = abstract_model(factory)
    trunk_shardings = state_shardings(parts.abstract_params, mesh)
    rep = replicated(mesh)
    like = {"trunk": jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  parts.param_shapes(), trunk_shardings),
            "head": {"w": jax.ShapeDtypeStruct((config.hidden_size,), jnp.float32, sharding=rep),
                     "b": jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)}}
    rest = jax.jit(lambda: split_module(factory())[1])()
    checkpointer = Checkpointer(os.path.join(path, "checkpoints"), max_to_keep=None)
    try:
        params = checkpointer.restore_params(like, step=int(meta["step"]))
    finally:
        checkpointer.close()
    return PRMHead(parts, rest, params, tokenizer)


def load_prm_head(path: str) -> PRMHead:
    """The trained PRM of a `prm` run directory (its `prm_head.json` and checkpoint; cached per path)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(os.path.join(path, HEAD_FILE)):
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}; expected the output_dir of a finished prm run")
    return _load(path)


@register_step_scorer("prm_head", options=True)
def prm_head_scorer(problem: Problem, response: str, steps: Sequence[Any], *, options: Mapping[str, Any]
                    ) -> np.ndarray:
    """`[K]` scores of the trained PRM at `options["prm_path"]` (`rl.step_labels.prm_path`)."""
    path = str(options.get("prm_path", "") or "")
    if not path:
        raise ValueError("rl.step_labels.prm='prm_head' needs rl.step_labels.prm_path: the output_dir of a prm run")
    if not steps:
        return np.zeros((0,), np.float32)
    return load_prm_head(path).score([problem.prompt], [response], [[(s.start, s.end) for s in steps]])[0]


# -------------------------------------------------------------------------------------- evaluation


def _row(pred: np.ndarray, scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    p, r, f1 = step_prf(pred, gold, positive=0)
    return {"precision": p, "recall": r, "f1": f1, "auc": step_auc(scores, gold, positive=0),
            "accuracy": float((pred == gold).mean()) if gold.size else 0.0}


def evaluate_prm(head: PRMHead, task: Any, problems: Sequence[Problem], responses: Sequence[Sequence[str]], *,
                 n_values: Sequence[int], threshold: float = 0.5) -> dict[str, Any]:
    """Step metrics and PRM@N of `head` on `responses [P][N]` (N >= max(n_values)) against the
    propagation labels, with the rule-based, first-error and all-correct rows as references."""
    flat_p = [p for p, rs in zip(problems, responses) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    n = len(responses[0])
    if any(len(rs) != n for rs in responses) or n < max(n_values):
        raise ValueError(f"evaluate_prm: need the same N >= max(n_values)={max(n_values)} responses per problem")
    spans = [[(s.start, s.end) for s in task.step_labels(p, r)] for p, r in zip(flat_p, flat_r)]
    head_scores = head.score([p.prompt for p in flat_p], flat_r, spans)
    gold = [truth_labels(*_chain(p), r, "propagation") for p, r in zip(flat_p, flat_r)]
    first = [truth_labels(*_chain(p), r, "first_error") for p, r in zip(flat_p, flat_r)]
    per_row = {"prm_head": head_scores, "rule_based": [g.astype(np.float32) for g in gold],
               "first_error": [f.astype(np.float32) for f in first],
               "all_correct": [np.ones(len(g), np.float32) for g in gold]}
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0,))  # noqa: E731
    gold_all = cat(gold).astype(int)
    step = {name: _row((cat(s) >= threshold).astype(int), cat(s), gold_all) for name, s in per_row.items()}
    correct = np.asarray([task.score(p, r) for p, r in zip(flat_p, flat_r)], np.float64).reshape(len(problems), n)
    width = max([len(s) for s in spans] + [1])
    at_n: dict[str, dict[str, float]] = {}
    finals = {}
    for name, s in per_row.items():
        padded = np.zeros((len(flat_r), width))
        mask = np.zeros((len(flat_r), width), bool)
        for i, v in enumerate(s):
            padded[i, :len(v)], mask[i, :len(v)] = v, True
        mask[:, 0] |= ~mask.any(1)  # a response without steps scores 0 (its padded first slot)
        finals[name] = final_step_scores(padded, mask).reshape(len(problems), n)
    # Whether the final-step score judges whole solutions: its AUC at telling right answers from wrong
    # ones. A step-level AUC well above 0.5 with this near 0.5 is a head that ranks solutions by noise.
    solution_auc = {name: step_auc(f.ravel(), (correct > 0).ravel().astype(int), positive=1)
                    for name, f in finals.items() if name != "all_correct"}
    # Best-of-N over a weak scorer favours the class with more distinct texts (more draws of its noise):
    # correct traces of one problem are often one text repeated, wrong ones rarely are.
    distinct = {kind: float(np.mean([len({r for r, c in zip(rs, row) if (c > 0) == want}) for rs, row
                                     in zip(responses, correct)]))
                for kind, want in (("correct", True), ("wrong", False))}
    for k in n_values:
        row = {name: prm_at_n(f[:, :k], correct[:, :k]) for name, f in finals.items() if name != "all_correct"}
        row["pass@n"] = float(correct[:, :k].max(1).mean())
        row["random"] = float(correct[:, :k].mean())
        at_n[str(k)] = row
    return {"gold": "propagation", "threshold": float(threshold), "num_problems": len(problems),
            "num_responses": len(flat_r), "num_steps": int(gold_all.size), "step": step, "prm_at_n": at_n,
            "solution_accuracy": float(correct.mean()), "solution_auc": solution_auc,
            "distinct_per_problem": distinct}


def report_table(report: Mapping[str, Any]) -> str:
    """Markdown table: one row per scorer, step P/R/F1/AUC, solution AUC and PRM@N columns."""
    ns = list(report["prm_at_n"])
    head = "| scorer | step P | step R | step F1 | AUC | solution AUC | " + " | ".join(f"PRM@{k}" for k in ns) + " |"
    lines = [head, "|" + "---|" * (6 + len(ns))]
    for name, m in report["step"].items():
        at = [report["prm_at_n"][k].get(name) for k in ns]
        sol = report.get("solution_auc", {}).get(name)
        cells = [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", f"{m['auc']:.3f}",
                 "-" if sol is None else f"{sol:.3f}"]
        cells += ["-" if a is None else f"{a:.3f}" for a in at]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for extra in ("pass@n", "random"):
        lines.append(f"| {extra} | - | - | - | - | - | "
                     + " | ".join(f"{report['prm_at_n'][k][extra]:.3f}" for k in ns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the run


def _responses(cfg: Any, task: Any, tokenizer: Tokenizer, problems: Sequence[Problem], n: int, salt: int,
               policy: tuple | None, mesh: Any) -> list[list[str]]:
    prm = cfg.prm
    if prm.source == "traces":
        return trace_responses(problems, n, int(cfg.seed), prm.traces, salt)
    parts, params, rest = policy
    return sample_texts(parts, params, rest, tokenizer, [tokenizer.encode_prompt(p.prompt) for p in problems], n=n,
                        max_new_tokens=int(prm.max_new_tokens), temperature=float(prm.temperature),
                        key=jax.random.key(int(cfg.seed) * 7919 + salt), mesh=mesh)


def _labels(cfg: Any, task: Any, tokenizer: Tokenizer, problems: Sequence[Problem], responses: Sequence[str],
            policy: tuple | None, mesh: Any) -> list[np.ndarray]:
    prm = cfg.prm
    if prm.labels == "monte_carlo":
        return monte_carlo_step_labels(policy, tokenizer, task, problems, responses, samples=int(prm.mc_samples),
                                       max_new_tokens=int(prm.max_new_tokens), temperature=float(prm.temperature),
                                       key=jax.random.key(int(cfg.seed) * 7919 + _SAMPLE_SALT), mesh=mesh)
    return [truth_labels(*_chain(p), r, prm.labels) for p, r in zip(problems, responses)]


def _eval_data(cfg: Any, task: Any, tokenizer: Tokenizer, policy: tuple | None, mesh: Any):
    problems = task.eval_set(int(cfg.prm.eval.num_problems), seed=int(cfg.seed))
    return problems, _responses(cfg, task, tokenizer, problems, max(cfg.prm.eval.n), _EVAL_SALT, policy, mesh)


def _write_report(cfg: Any, report: dict[str, Any]) -> str:
    path = cfg.prm.eval.output or os.path.join(cfg.output_dir, "prm_report.json")
    if is_primary_process():
        write_json(path, report)
        print(report_table(report))
    return os.path.abspath(path)


def run_prm(cfg: Any) -> dict[str, Any]:
    """The `prm` command: train the PRM head (unless `prm.head_path`), evaluate it, write the report.
    Returns the report's step metrics and PRM@N, `report`, `run_dir` and `wall_time_s`."""
    t0 = time.perf_counter()
    check_prm_config(cfg)
    prm = cfg.prm
    task, tokenizer = build_task(cfg.data), build_tokenizer(cfg.data)
    needs_policy = prm.source == "policy" or prm.labels == "monte_carlo"
    if prm.head_path:
        head = load_prm_head(prm.head_path)
        mesh, parts, params, rest, _ = build_policy(cfg, tokenizer) if needs_policy else (None,) * 5
        problems, responses = _eval_data(cfg, task, tokenizer, (parts, params, rest), mesh)
        report = {"labels": prm.labels, "source": prm.source, "head_path": os.path.abspath(prm.head_path),
                  **evaluate_prm(head, task, problems, responses, n_values=tuple(prm.eval.n),
                                 threshold=float(prm.eval.threshold))}
        return {"report": _write_report(cfg, report), "step": report["step"], "prm_at_n": report["prm_at_n"],
                "wall_time_s": time.perf_counter() - t0}

    run_dir = os.path.abspath(cfg.output_dir)
    resume = open_run_dir(cfg, command="prm")
    mesh, parts, trunk, rest, trunk_shardings = build_policy(cfg, tokenizer)
    model_config = parts.merge(trunk, rest).config
    policy = (parts, trunk, rest)
    # Data from the starting policy (before its trunk is trained), training and held-out.
    train_problems = task.sample_batch(int(prm.num_train), int(cfg.seed), "train")
    n = int(prm.samples_per_prompt)
    grouped = _responses(cfg, task, tokenizer, train_problems, n, _TRAIN_SALT, policy if needs_policy else None, mesh)
    rows = [p for p in train_problems for _ in range(n)]
    flat = [r for rs in grouped for r in rs]
    examples = build_examples(task, tokenizer, rows, flat, _labels(cfg, task, tokenizer, rows, flat, policy, mesh))
    if len(examples) < int(cfg.train.batch_size):
        raise ValueError(f"only {len(examples)} training responses have steps; train.batch_size="
                         f"{cfg.train.batch_size} needs at least that many (raise prm.num_train)")
    eval_problems, eval_responses = _eval_data(cfg, task, tokenizer, policy if needs_policy else None, mesh)

    steps, train_trunk = int(cfg.train.steps), bool(prm.train_trunk)
    optimizer = head_optimizer(cfg.optimizer, steps, train_trunk=train_trunk)
    schedule = build_schedule(cfg.optimizer, steps)
    rep = replicated(mesh)
    params = {"trunk": trunk, "head": jax.device_put(init_head(model_config.hidden_size), rep)}
    shardings = {"trunk": trunk_shardings, "head": {"w": rep, "b": rep}}
    state = create_train_state(params, optimizer, mesh, shardings, seed=int(cfg.seed))
    step_fn = make_prm_step(parts, rest, optimizer, schedule, jax.tree.map(lambda x: x.sharding, state), mesh,
                            train_trunk=train_trunk)
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=int(cfg.checkpoint.max_to_keep))
    primary = is_primary_process()
    if resume:
        state = checkpointer.restore(state)
        if primary:
            truncate_metrics(run_dir, int(state.step))
    seq_len, max_steps, batch = int(cfg.data.seq_len), int(prm.max_steps), int(cfg.train.batch_size)

    def step(state):
        # The batch of step s depends on (seed, s) only: a resumed run sees the same batches.
        idx = np.random.default_rng([int(cfg.seed), _TRAIN_SALT, int(state.step)]).choice(
            len(examples), batch, replace=False)
        b = pack_examples([examples[i] for i in idx], seq_len=seq_len, max_steps=max_steps, pad_id=tokenizer.pad_id)
        state, metrics = step_fn(state, b)
        return state, {k: float(v) for k, v in metrics.items()}, int(b["segment_ids"].sum())

    writer = MetricsWriter(run_dir, tensorboard=primary) if primary else None
    every = int(cfg.checkpoint.every)
    try:
        state, records = drive(state, step, max(steps - int(state.step), 0), phase="PRM", total=steps,
                               progress=primary and bool(cfg.train.progress_bar), writer=writer,
                               log_every=int(cfg.train.log_every), checkpointer=checkpointer,
                               checkpoint_at=lambda s: bool(every) and s % every == 0)
        if int(state.step) not in checkpointer.all_steps():
            checkpointer.save(int(state.step), state, force=True)
        if primary:
            meta = {"model_config": _model_config_json(model_config), "data": cfg.data.to_dict(),
                    "mesh": cfg.mesh.to_dict(), "step": int(state.step), "labels": prm.labels,
                    "source": prm.source, "train_trunk": train_trunk}
            write_json(os.path.join(run_dir, HEAD_FILE), meta)
        head = PRMHead(parts, rest, state.params, tokenizer)
        report = {"labels": prm.labels, "source": prm.source, "head_path": run_dir,
                  **evaluate_prm(head, task, eval_problems, eval_responses, n_values=tuple(prm.eval.n),
                                 threshold=float(prm.eval.threshold))}
        if writer is not None:
            writer.write(int(state.step), {f"eval/step_{k}": v for k, v in report["step"]["prm_head"].items()}
                         | {f"eval/prm@{k}": v["prm_head"] for k, v in report["prm_at_n"].items()})
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()
    summary = {"run_dir": run_dir, "steps": int(state.step), "report": _write_report(cfg, report),
               "step": report["step"], "prm_at_n": report["prm_at_n"], "num_train_responses": len(examples),
               "wall_time_s": time.perf_counter() - t0}
    if records:
        summary.update(first_loss=records[0]["loss"], final_loss=records[-1]["loss"])
    return summary
