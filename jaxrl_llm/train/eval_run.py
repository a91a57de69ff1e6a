"""Held-out evaluation of a policy: greedy accuracy, pass@k, maj@k and response lengths (`cli eval`).

`evaluate(parts, params, rest, task, tokenizer, problems, k=..., ...)` decodes every problem
greedily (`train/evaluate.py`, exactly as the trainers' own held-out evaluation, so the numbers
agree) and draws `k` samples per problem with the rollout sampler (`rollout/sampler.py`). It reports

- `accuracy`: greedy exact match, the mean `task.score` of the greedy completions;
- `pass@j`, j = 1..k: the unbiased estimator `1 - C(n - c, j) / C(n, j)` of the chance that at least
  one of j samples is correct, from c correct of the n = k samples (Chen et al., 2021, "Evaluating
  large language models trained on code"), averaged over problems; `pass@1` is the share of
  correct samples;
- `maj@k`: the share of problems whose most common sampled answer is correct. Answers come from the
  task's `extract_answer(response) -> str | None` when it has one, else the whitespace-normalised
  response; ties go to the answer seen first, and an unparseable answer (None) never wins;
- `mean_length`, `max_length`: generated tokens per sample, the stop token included (the sampler's
  `Rollout.lengths`); `truncated`: the share of samples that hit `max_new_tokens` without a stop token.

A sample is correct when its score is >= 1 (every entry, for a reward vector), as for RL's
`eval/accuracy`. The RL loop's periodic evaluation (`train/rl.py: evaluate_policy`) calls
`evaluate`; `run_eval(cfg)` is the `eval` command, which writes the metrics and every problem's
samples as JSON and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxrl_llm.data.tokenizer import Tokenizer, stop_ids_of
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.models.lora import merge_lora
from jaxrl_llm.parallel.distributed import initialize_distributed, is_primary_process
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.quant.params import quantize_params
from jaxrl_llm.rollout.sampler import FINISH_LENGTH, Rollout, SamplingConfig
from jaxrl_llm.train.builders import build_model, build_policy, build_task, build_tokenizer, policy_model_section
from jaxrl_llm.train.evaluate import exact_match_accuracy, greedy_completions, make_greedy_generate
from jaxrl_llm.train.init_from import check_init_from
from jaxrl_llm.train.rl_rollout import concat_rollouts, decode_responses, sample_responses, select_rows

__all__ = ["pass_at_k", "majority_answer", "majority_vote", "length_stats", "response_answer", "is_correct",
           "sample_metrics", "Evaluation", "evaluate", "eval_key", "EvalSettings", "check_eval_config",
           "load_policy", "metrics_table", "run_eval"]

EVAL_KEY_SALT = 2**31 - 1  # eval sampling keys never coincide with a training step's key


def eval_key(seed: int) -> jax.Array:
    """The sampling key of held-out evaluation: the same at every evaluation of a run."""
    return jax.random.fold_in(jax.random.key(int(seed)), EVAL_KEY_SALT)


# ----------------------------------------------------------------------------- metric functions


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `c` correct of `n` samples: `1 - C(n - c, k) / C(n, k)`.

    Computed on exact integers, so the only rounding is the final division (no cancellation for
    large n): 0 when c = 0, 1 when n - c < k.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"pass_at_k: {name} must be an int; got {value!r}")
    n, c, k = int(n), int(c), int(k)
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n; got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n; got n={n}, k={k}")
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer; a tie goes to the one seen first. None if all are None."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def majority_vote(answers: Sequence[str | None], correct_fn: Callable[[str], bool]) -> float:
    """maj@k of one problem: 1.0 if `correct_fn(majority_answer(answers))`, else 0.0 (also when no
    answer parses)."""
    winner = majority_answer(answers)
    return 0.0 if winner is None else float(bool(correct_fn(winner)))


# Share of responses cut at the token limit above which a run warns: the reward then mostly scores
# unfinished answers, and the limit, not the policy, sets the accuracy.
TRUNCATION_WARNING = 0.2


def warn_truncated(fraction: float, *, field: str, limit: int, where: str,
                   threshold: float = TRUNCATION_WARNING) -> bool:
    """Warns (and returns True) when `fraction` of the responses hit `limit` new tokens without a stop
    token; the message names the config `field` that sets the limit."""
    if not fraction > threshold:
        return False
    warnings.warn(f"{where}: {fraction:.0%} of responses reached {field}={limit} tokens without a stop "
                  f"token (truncated; above {threshold:.0%}); raise {field}, or check the stop tokens "
                  "(data.chat, the tokenizer's eos)", stacklevel=2)
    return True


def length_stats(lengths: np.ndarray, finish_reasons: np.ndarray) -> dict[str, float | int]:
    """`mean_length`, `max_length` and `truncated` (share of `FINISH_LENGTH`: ran into max_new_tokens
    without a stop token) of `lengths [R]` generated tokens and `finish_reasons [R]` (`rollout/decode.py`)."""
    lengths, finish = np.asarray(lengths), np.asarray(finish_reasons)
    if lengths.ndim != 1 or lengths.shape != finish.shape or not lengths.size:
        raise ValueError(f"need lengths [R] and finish_reasons [R] with R >= 1; got {lengths.shape}, {finish.shape}")
    return {"mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
            "truncated": float(np.mean(finish == FINISH_LENGTH))}


def response_answer(task: Any, response: str) -> str | None:
    """The answer a response gives: `task.extract_answer(response)`, else the response with its
    whitespace runs collapsed (None when empty)."""
    extract = getattr(task, "extract_answer", None)
    if extract is not None:
        return extract(response)
    text = " ".join(response.split())
    return text or None


def is_correct(score: Any) -> bool:
    """A score (float or reward vector `[R]`) counts as correct when every entry is >= 1."""
    return bool(np.all(np.asarray(score, np.float64) >= 1.0))


def sample_metrics(correct: np.ndarray, answers: Sequence[Sequence[str | None]]) -> dict[str, float]:
    """`pass@1..k` and `maj@k` averaged over problems, from `correct [B, k]` bool and `answers[b][j]`.

    A problem's vote is scored by the correctness of the first sample giving the winning answer.
    """
    correct = np.asarray(correct, bool)
    k = correct.shape[1]
    counts = correct.sum(axis=1)
    out = {f"pass@{j}": float(np.mean([pass_at_k(k, int(c), j) for c in counts])) for j in range(1, k + 1)}
    votes = [majority_vote(row, lambda a, row=row, ok=ok: bool(ok[list(row).index(a)]))
             for row, ok in zip(answers, correct)]
    out[f"maj@{k}"] = float(np.mean(votes))
    return out


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class Evaluation:
    """What `evaluate` returns.

    metrics: `accuracy` (greedy), `pass@1..k`, `maj@k`, `mean_length`, `max_length`, `truncated`,
      `num_problems`, `samples` (k); the sample metrics only when k >= 1, `accuracy` only with greedy.
    records: one dict per problem: prompt, reference, greedy (text, score), samples (text, score,
      correct, answer, length, finish reason), num_correct, majority (the winning answer).
    greedy: `[B]` greedy completions ([] without greedy). samples: `[B * k]` texts, row `b * k + j`
      sample j of problem b. rollout: those samples' `Rollout` (host arrays), None when k = 0.
    """

    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    greedy: list[str]
    samples: list[str]
    rollout: Rollout | None


def _sample_all(parts: Any, params: Any, rest: Any, tokenizer: Tokenizer, prompts: Sequence[str], *,
                config: SamplingConfig, key: jax.Array, batch_size: int, mesh: Any,
                on_chunk: Callable[[int], None]) -> Rollout:
    """`config.n` samples of every prompt, `batch_size` prompts per sampler call (the last call padded
    with copies of its first prompt, so every call has one shape); chunk c draws with `fold_in(key, c)`.
    Prompts are encoded as the greedy completions' are (`tokenizer.encode_prompt`)."""
    ids = [tokenizer.encode_prompt(p) for p in prompts]
    n = config.n
    pieces = []
    for c, start in enumerate(range(0, len(ids), batch_size)):
        chunk = ids[start:start + batch_size]
        filler = [chunk[0]] * (batch_size - len(chunk))
        rollout = sample_responses(parts, params, rest, chunk + filler, key=jax.random.fold_in(key, c),
                                   config=config, mesh=mesh)
        pieces.append(select_rows(rollout, np.arange(len(chunk) * n)))
        on_chunk(len(chunk))
    return pieces[0] if len(pieces) == 1 else concat_rollouts(pieces, tokenizer.pad_id)


def evaluate(parts: Any, params: Any, rest: Any, task: Any, tokenizer: Tokenizer, problems: Sequence[Problem], *,
             k: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int, greedy: bool = True,
             top_k: int = 0, stop_ids: Sequence[int] | None = None, key: jax.Array | None = None,
             generate: Callable[..., jax.Array] | None = None, quant_format: str = "", mesh: Any = None,
             progress: bool = False) -> Evaluation:
    """Greedy accuracy and `k` samples per problem's metrics (see the module docstring).

    Args:
      parts, params, rest: the policy (`ModelParts`, parameter and non-parameter state).
      task: scores responses (`task.score`); `task.extract_answer` gives maj@k's answers if present.
      problems: the held-out problems (e.g. `task.eval_set(n, seed)`).
      k: samples per problem (0: greedy only). temperature, top_p, top_k: the sampler's knobs;
        stop_ids: a sample ends after one of these (default: the tokenizer's `stop_ids`).
      max_new_tokens: the longest greedy and sampled response. batch_size: problems per call.
      key: the sampling key (default `eval_key(0)`). generate: a ready `make_greedy_generate(parts,
        max_new_tokens)` (built here otherwise). quant_format: sample with quantized weights ("int8",
        "int4", "fp8"; greedy decodes the weights as given). mesh: shard the sampled rows.
      progress: show a tqdm bar over problems, labelled "eval".
    """
    problems = list(problems)
    k, batch_size, max_new_tokens = int(k), int(batch_size), int(max_new_tokens)
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if k < 0 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"evaluate needs k >= 0, batch_size >= 1, max_new_tokens >= 1; got {k}, {batch_size}, "
                         f"{max_new_tokens}")
    if not greedy and k == 0:
        raise ValueError("evaluate: nothing to do with greedy=False and k=0")
    from tqdm.auto import tqdm

    prompts = [p.prompt for p in problems]
    bar = tqdm(total=len(problems), desc="eval", unit="problem", disable=not progress, dynamic_ncols=True)
    try:
        completions: list[str] = []
        if greedy:
            # All prompts in one call, as the trainers' own evaluation does, so the completions agree.
            bar.set_postfix_str("greedy")
            generate = generate or make_greedy_generate(parts, max_new_tokens, valid_vocab_size=tokenizer.vocab_size)
            completions = greedy_completions(generate, params, rest, tokenizer, prompts, batch_size=batch_size)
        rollout, texts = None, []
        if k:
            bar.set_postfix_str(f"{k} samples/problem")
            stops = stop_ids_of(tokenizer) if stop_ids is None else tuple(stop_ids)
            config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                                    top_p=float(top_p), n=k, stop_ids=stops, pad_id=tokenizer.pad_id)
            # LoRA adapters merge first: the quantized sampler rounds the merged weights.
            sample_params = quantize_params(merge_lora(params), quant_format) if quant_format else params
            rollout = _sample_all(parts, sample_params, rest, tokenizer, prompts, config=config,
                                  key=eval_key(0) if key is None else key, batch_size=batch_size, mesh=mesh,
                                  on_chunk=bar.update)
            texts = decode_responses(tokenizer, rollout)
        else:
            bar.update(len(problems))
    finally:
        bar.close()
    return _collect(task, problems, completions, texts, rollout, k)


def _jsonable(score: Any) -> float | list[float]:
    arr = np.asarray(score, np.float64)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _collect(task: Any, problems: list[Problem], completions: list[str], texts: list[str], rollout: Rollout | None,
             k: int) -> Evaluation:
    """Scores, answers and metrics of the decoded greedy completions and samples."""
    metrics: dict[str, Any] = {"num_problems": len(problems), "samples": k}
    records = [{"prompt": p.prompt, "reference": p.reference} for p in problems]
    if completions:
        metrics["accuracy"] = exact_match_accuracy(task, problems, completions)
        for record, problem, text in zip(records, problems, completions):
            record["greedy"] = {"text": text, "score": _jsonable(task.score(problem, text))}
    if k:
        lengths, finish = np.asarray(rollout.lengths), np.asarray(rollout.finish_reasons)
        scores = [task.score(problems[i // k], t) for i, t in enumerate(texts)]
        correct = np.array([is_correct(s) for s in scores], bool).reshape(len(problems), k)
        answers = [[response_answer(task, texts[b * k + j]) for j in range(k)] for b in range(len(problems))]
        metrics.update(sample_metrics(correct, answers))
        metrics.update(length_stats(lengths, finish))
        for b, record in enumerate(records):
            rows = range(b * k, (b + 1) * k)
            record["samples"] = [{"text": texts[i], "score": _jsonable(scores[i]), "correct": bool(correct[b, i - b * k]),
                                  "answer": answers[b][i - b * k], "length": int(lengths[i]),
                                  "truncated": bool(finish[i] == FINISH_LENGTH)} for i in rows]
            record["num_correct"] = int(correct[b].sum())
            record["majority"] = majority_answer(answers[b])
    return Evaluation(metrics, records, completions, texts, rollout)


# ----------------------------------------------------------------------------- the `eval` command


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The `eval` command's resolved settings (`check_eval_config`)."""

    num_problems: int
    batch_size: int
    max_new_tokens: int
    samples: int
    temperature: float
    top_k: int
    top_p: float
    output: str
    checkpoint: str


def _int_field(section: Mapping[str, Any], name: str, low: int, where: str = "eval") -> int:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}.{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _sampling_fields(cfg: Any) -> tuple[str, int, float, int, float]:
    """`(prefix, k, temperature, top_k, top_p)` with the names they were read from in errors.

    An SFT-style config has the eval command's own `eval.samples`, `eval.temperature`, `eval.top_p`;
    an RL config's held-out samples are `eval.samples_per_prompt` at the rollout's knobs (`rl.*`).
    """
    ev = cfg.eval
    if "samples" in ev:
        return "eval", _int_field(ev, "samples", 0), float(ev.temperature), 0, float(ev.top_p)
    if "samples_per_prompt" in ev and "rl" in cfg:
        return ("rl", _int_field(ev, "samples_per_prompt", 0), float(cfg.rl.temperature), int(cfg.rl.top_k),
                float(cfg.rl.top_p))
    raise ValueError("the eval command needs eval.samples, eval.temperature and eval.top_p (see configs/sft_tiny.py)")


def check_eval_config(cfg: Any) -> EvalSettings:
    """Every field the `eval` command reads, checked before anything is built; errors name the field."""
    initialize_distributed(cfg.distributed)
    ev = cfg.eval
    for name in ("output", "checkpoint"):
        if name not in ev:
            raise ValueError(f"the eval command needs eval.{name} (see configs/sft_tiny.py)")
    num = _int_field(ev, "num_problems", 1)
    batch = _int_field(ev, "batch_size", 1)
    max_new = _int_field(ev, "max_new_tokens", 1)
    where, k, temperature, top_k, top_p = _sampling_fields(cfg)
    if not temperature >= 0.0:
        raise ValueError(f"{where}.temperature must be >= 0 (0: greedy); got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"{where}.top_p must be in (0, 1] (1: off); got {top_p}")
    if top_k < 0:
        raise ValueError(f"rl.top_k must be >= 0 (0: off); got {top_k}")
    output = str(ev.output) or os.path.join(str(cfg.output_dir), "eval.json")
    if os.path.isdir(output):
        raise ValueError(f"eval.output={output!r} is a directory; give the JSON file's path")
    checkpoint = str(ev.checkpoint)
    if checkpoint:
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"eval.checkpoint={checkpoint!r}: no such directory (expected a run's "
                                    "output_dir, its checkpoints/ folder or a step folder; '' = the config's model)")
        check_init_from({"init_from": f"orbax:{checkpoint}"}, "eval.checkpoint")  # holds step folders
    else:
        check_init_from(cfg.model)  # model.init_from's source must exist
    build_task(cfg.data)  # an unknown task or bad data.task_kwargs fails here
    return EvalSettings(num, batch, max_new, k, temperature, top_k, top_p, output, checkpoint)


def load_policy(cfg: Any, checkpoint: str, tokenizer: Tokenizer) -> tuple[Any, Any, Any, Any]:
    """`(mesh, parts, params, rest)`: `build_policy`'s model when `checkpoint` is "", else the
    parameters of that run's latest (or named) step, with the architecture the run saved."""
    model_cfg = policy_model_section(cfg)  # the critic's value head when the RL config has one
    if not checkpoint:
        mesh, parts, params, rest, _ = build_policy(cfg, tokenizer, model_cfg=model_cfg)
        return mesh, parts, params, rest
    mesh = mesh_from_config(cfg.mesh)
    section = {**dict(model_cfg), "init_from": f"orbax:{checkpoint}"}
    parts, params, rest, _ = build_model(section, tokenizer, mesh, seed=int(cfg.seed), field="eval.checkpoint")
    return mesh, parts, params, rest


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """`metric | value` rows, floats to 4 decimals."""
    rows = [(name, f"{v:.4f}" if isinstance(v, float) else str(v)) for name, v in metrics.items()]
    width = max(len("metric"), *(len(name) for name, _ in rows))
    lines = [f"{'metric':<{width}} | value", f"{'-' * width}-|-{'-' * 6}"]
    return "\n".join(lines + [f"{name:<{width}} | {value}" for name, value in rows])


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Writes `payload` to `path` atomically (a crash never leaves half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


def run_eval(cfg: Any) -> dict[str, Any]:
    """The `eval` command: `eval.num_problems` held-out problems of `data.task` (seed `cfg.seed`, the
    problems the trainers evaluate on), greedy plus `k` samples each; writes `eval.output` and prints
    the metrics table. Returns the metrics with `output`, `checkpoint` and `wall_time_s`."""
    t0 = time.perf_counter()
    settings = check_eval_config(cfg)
    tokenizer = build_tokenizer(cfg.data)
    task = build_task(cfg.data)
    problems = task.eval_set(settings.num_problems, seed=int(cfg.seed))
    mesh, parts, params, rest = load_policy(cfg, settings.checkpoint, tokenizer)
    primary = is_primary_process()
    progress = primary and bool(cfg.get("train", cfg.get("rl", {})).get("progress_bar", True))  # the config's bar switch
    result = evaluate(parts, params, rest, task, tokenizer, problems, k=settings.samples,
                      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                      key=eval_key(int(cfg.seed)), quant_format=str(cfg.get("rl", {}).get("rollout_quant", "")),
                      mesh=mesh, progress=progress)
    if settings.samples:
        warn_truncated(float(result.metrics["truncated"]), field="eval.max_new_tokens",
                       limit=settings.max_new_tokens, where="eval")
    if primary:
        payload = {"metrics": result.metrics, "settings": dataclasses.asdict(settings),
                   "task": cfg.data.task, "seed": int(cfg.seed), "problems": result.records}
        write_json(settings.output, payload)
        print(metrics_table(result.metrics))
    return {**result.metrics, "output": os.path.abspath(settings.output), "checkpoint": settings.checkpoint,
            "wall_time_s": time.perf_counter() - t0}
