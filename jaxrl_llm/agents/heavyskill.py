"""HeavySkill (arXiv 2605.02396): K parallel solutions, a trimmed cache, deliberations, a majority answer.

The method, for one problem (iterations = 1):

1. K = `num_solutions` solutions are sampled from the policy (no gradient; not trained on);
2. each is trimmed to `budget = (context - prompt - reserve) // K` tokens (`heavyskill_solution_budget`),
   keeping its tail up to and including its answer (`trim_solution`): context is the row length the
   model reads (`data.seq_len` by default), prompt the deliberation template with empty solutions,
   reserve the tokens left for the deliberation itself (`rl.max_new_tokens` by default);
3. `summary_k` deliberations are sampled on the deliberation prompt (`deliberation_prompt`), and the
   final answer is the majority of their answers (`heavyskill_aggregate`).

RL (RECON): GRPO on the deliberations only, reward = the task's correctness
(`deliberation_advantages`; `train/rl_step.py: sample_round` with `rl.heavyskill.enabled`).

Deliberation prompt layout (one line per solution; a solution's newlines become spaces)::

    {problem prompt}
    1) {trimmed solution 1}
    ...
    K) {trimmed solution K}
    Check the solutions and answer:
    {problem prompt}

The prompt ends with the problem again, so the deliberation is written exactly like a solution (for
ArithChain the worked steps and `#answer`) and the task scores it unchanged. Every character is in the
char tokenizer's alphabet (digits, letters, punctuation, space, newline).

`HeavySkillTask` (`data.task = "heavyskill"`) wraps a task so that an SFT warm-up can show the model
this layout: its `privileged_prompt(problem)` is a deliberation prompt over K synthetic candidates
(a random share correct, the others with one propagated arithmetic slip), so
`data.privileged_fraction` of the warm-up records are deliberation records whose target is the
correct worked solution. Everything else (sampling, scoring, step labels) is the base task's.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.tokenizer import stop_ids_of
from jaxrl_llm.envs.arith_chain import ANSWER_MARK, STEP_END, ArithChainTask, final_answer
from jaxrl_llm.envs.math_answer import answers_match, normalize_answer
from jaxrl_llm.envs.registry import build_task, register_task
from jaxrl_llm.envs.task import Problem, make_rng, stable_hash
from jaxrl_llm.objectives.advantages import grpo_advantages

__all__ = [
    "DELIBERATION_INSTRUCTION",
    "HEAVYSKILL_KEY_SALT",
    "HeavySkillResult",
    "HeavySkillSettings",
    "HeavySkillTask",
    "any_correct",
    "answer_char_end",
    "deliberation_advantages",
    "deliberation_problems",
    "deliberation_prompt",
    "deliberation_width",
    "heavyskill_aggregate",
    "heavyskill_settings",
    "heavyskill_solution_budget",
    "majority_answer_normalized",
    "solution_answer",
    "solution_ids",
    "trim_solution",
    "trim_to_tail",
]

DELIBERATION_INSTRUCTION = "Check the solutions and answer:"
HEAVYSKILL_KEY_SALT = 0x48534B  # folds the step's key for the K solutions (the deliberations keep the step's key)


class HeavySkillSettings(NamedTuple):
    """The `rl.heavyskill` section resolved: K, summary_k, the context and reserve of the budget."""

    num_solutions: int
    summary_k: int
    context: int
    reserve: int

    @property
    def width(self) -> int:
        """The deliberation prompt width (every row is padded to it: one update shape)."""
        return deliberation_width(self.context, self.reserve)


def heavyskill_settings(cfg: Any) -> HeavySkillSettings | None:
    """`rl.heavyskill` when enabled (context 0 -> `data.seq_len`, reserve 0 -> `rl.max_new_tokens`), else
    None (configs without the section have it off)."""
    hs = cfg.rl.get("heavyskill", None)
    if hs is None or not bool(hs.get("enabled", False)):
        return None
    return HeavySkillSettings(int(hs.get("num_solutions", 8)), int(hs.get("summary_k", 4)),
                              int(hs.get("context", 0)) or int(cfg.data.seq_len),
                              int(hs.get("reserve", 0)) or int(cfg.rl.max_new_tokens))


# ----------------------------------------------------------------------------- budget and trimming


def heavyskill_solution_budget(context: int, prompt: int, reserve: int, num_solutions: int) -> int:
    """Tokens each cached solution keeps: floor((context - prompt - reserve) / K), at least 1."""
    if num_solutions < 1:
        raise ValueError(f"heavyskill_solution_budget: num_solutions must be >= 1; got {num_solutions}")
    budget = (context - prompt - reserve) // num_solutions
    if budget < 1:
        raise ValueError(f"heavyskill_solution_budget: context {context} - prompt {prompt} - reserve {reserve} "
                         f"leaves no room for {num_solutions} solutions")
    return int(budget)


def trim_to_tail(tokens: Sequence, budget: int) -> list:
    """The last `budget` tokens of a solution: its tail holds the conclusion and the answer."""
    if budget < 1:
        raise ValueError(f"trim_to_tail: budget must be >= 1; got {budget}")
    return list(tokens[-budget:])


def trim_solution(tokens: Sequence, budget: int, answer_end: int | None = None) -> list:
    """The cached part of a solution: its last `budget` tokens ending at `answer_end` (the token index just
    past the answer), so the answer is kept even when text follows it; the plain tail without an answer."""
    end = len(tokens) if answer_end is None else min(max(int(answer_end), 0), len(tokens))
    return trim_to_tail(list(tokens[:end]), budget) if end else []


def deliberation_width(context: int, reserve: int) -> int:
    """The fixed (left-padded) prompt width of every deliberation row: context - reserve tokens."""
    if reserve < 1 or context - reserve < 1:
        raise ValueError(f"deliberation_width: need reserve >= 1 and context > reserve; got context {context}, "
                         f"reserve {reserve}")
    return int(context - reserve)


# ----------------------------------------------------------------------------- answers


def solution_answer(task: Any, text: str) -> str | None:
    """The answer a solution gives: `task.extract_answer(text)` when the task has one, else the integer after
    the last `#` (ArithChain's `final_answer`); None when there is none."""
    extract = getattr(task, "extract_answer", None)
    if extract is not None:
        return extract(text)
    value = final_answer(text)
    return None if value is None else str(value)


def answer_char_end(task: Any, text: str) -> int | None:
    """Index just past the answer in `text` (the `#`-marked integer, else the last occurrence of the task's
    extracted answer), or None when the solution gives no answer it can locate."""
    answer = solution_answer(task, text)
    if answer is None:
        return None
    mark = text.rfind(ANSWER_MARK)
    if mark >= 0 and final_answer(text) is not None:
        start = mark + 1
        digits = text[start:].lstrip()
        start += len(text[start:]) - len(digits)
        sign = 1 if digits.startswith("-") else 0
        end = start + sign
        while end < len(text) and text[end].isdigit():
            end += 1
        return end
    pos = text.rfind(answer)
    return None if pos < 0 else pos + len(answer)


def majority_answer_normalized(answers: Sequence[str | None]) -> str | None:
    """Most common answer after `normalize_answer` (so "12" and "12.0" agree), returned as first
    written; a tie goes to the answer seen first; None answers are ignored (all None => None)."""
    keyed = [(normalize_answer(a), a) for a in answers if a is not None]
    if not keyed:
        return None
    counts = Counter(k for k, _ in keyed)
    best = max(counts.values())
    return next(a for k, a in keyed if counts[k] == best)


def any_correct(answers: Sequence[str | None], truth: str) -> float:
    """pass@K of K solutions, all of them scored: 1.0 if any answer matches `truth`, else 0.0."""
    return float(any(answers_match(a, truth) for a in answers))


class HeavySkillResult(NamedTuple):
    """answer: majority of the deliberations; correct: whether it matches the truth; pass_at_k: whether
    any parallel solution did (the ceiling the deliberation could reach)."""

    answer: str | None
    correct: bool
    pass_at_k: float


def heavyskill_aggregate(deliberation_answers: Sequence[str | None], solution_answers: Sequence[str | None],
                         truth: str) -> HeavySkillResult:
    """HeavySkill's final answer (majority of deliberation answers) and the solutions' pass@K."""
    answer = majority_answer_normalized(deliberation_answers)
    return HeavySkillResult(answer, answers_match(answer, truth), any_correct(solution_answers, truth))


def deliberation_advantages(rewards, *, eps: float = 1e-8) -> np.ndarray:
    """GRPO advantages of one problem's deliberations (reward = correctness): (r - mean) / (std + eps),
    unbiased std, via `objectives.grpo_advantages`. rewards: [n >= 2]. Returns [n] float32."""
    r = jnp.asarray(rewards, jnp.float32)
    return np.asarray(grpo_advantages(r, jnp.zeros(r.shape, jnp.int32), num_groups=1, eps=eps))


# ----------------------------------------------------------------------------- the deliberation prompt


def deliberation_prompt(problem_prompt: str, solutions: Sequence[str]) -> str:
    """The deliberation prompt over `solutions` (the layout of the module docstring)."""
    lines = [problem_prompt]
    lines += [f"{i + 1}) {' '.join(s.splitlines()) if s else ''}" for i, s in enumerate(solutions)]
    lines += [DELIBERATION_INSTRUCTION, problem_prompt]
    return "\n".join(lines)


def solution_ids(response: Sequence[int], length: int, tokenizer: Any) -> list[int]:
    """A sampled solution's tokens: the first `length`, cut before the first stop id or an id outside the
    tokenizer's vocabulary (a padded model vocabulary), as `decode_responses` reads them."""
    stops = set(stop_ids_of(tokenizer))
    out = []
    for t in np.asarray(response)[:int(length)].tolist():
        if t in stops or not 0 <= t < tokenizer.vocab_size:
            break
        out.append(int(t))
    return out


def _answer_token_end(task: Any, tokenizer: Any, ids: Sequence[int]) -> int | None:
    """Token index just past the solution's answer (from its per-token texts), or None."""
    pieces = [tokenizer.decode([t]) for t in ids]
    end = answer_char_end(task, "".join(pieces))
    if end is None:
        return None
    offsets = np.cumsum([len(p) for p in pieces])
    return int(np.searchsorted(offsets, end, side="left")) + 1


def cached_solutions(task: Any, tokenizer: Any, problem: Problem, solutions: Sequence[Sequence[int]], *,
                     context: int, reserve: int) -> tuple[str, list[str], list[bool]]:
    """`(deliberation prompt, trimmed solution texts, trimmed flags)` of one problem's K solution token lists.

    The budget is `heavyskill_solution_budget(context, len(encode_prompt(template with empty solutions)),
    reserve, K)`; a tokenizer whose merges make the assembled prompt longer than `context - reserve`
    (never the char tokenizer) gets a smaller budget until it fits.
    """
    k = len(solutions)
    width = deliberation_width(context, reserve)
    overhead = len(tokenizer.encode_prompt(deliberation_prompt(problem.prompt, [""] * k)))
    budget = heavyskill_solution_budget(context, overhead, reserve, k)
    ends = [_answer_token_end(task, tokenizer, ids) for ids in solutions]
    while True:
        kept = [trim_solution(ids, budget, end) for ids, end in zip(solutions, ends)]
        texts = [tokenizer.decode(ids) for ids in kept]
        prompt = deliberation_prompt(problem.prompt, texts)
        if len(tokenizer.encode_prompt(prompt)) <= width or budget == 1:
            break
        budget -= 1
    return prompt, texts, [len(a) < len(b) for a, b in zip(kept, solutions)]


def deliberation_problems(task: Any, tokenizer: Any, problems: Sequence[Problem], response: np.ndarray,
                          lengths: np.ndarray, *, num_solutions: int, context: int, reserve: int,
                          ) -> tuple[list[Problem], dict[str, float]]:
    """Each problem with its deliberation prompt over its K sampled solutions, and the cache's metrics.

    response: `[P * K, N]` sampled solution tokens (row `p * K + j` is solution j of problem p);
    lengths: `[P * K]`. The problems keep their reference and metadata (so the task scores a
    deliberation as a solution); `metadata["heavyskill"]` holds the trimmed solutions and their scores.
    Metrics: `heavyskill/solution_accuracy`, `heavyskill/pass@K` (share of problems with a correct
    solution), `heavyskill/trimmed` (share of solutions cut to the budget), `heavyskill/prompt_tokens`.
    """
    k = int(num_solutions)
    if len(response) != len(problems) * k:
        raise ValueError(f"deliberation_problems: need {len(problems)} x {k} solutions; got {len(response)}")
    out, scores, trimmed, sizes = [], [], [], []
    for p, problem in enumerate(problems):
        ids = [solution_ids(response[p * k + j], lengths[p * k + j], tokenizer) for j in range(k)]
        full = [tokenizer.decode(x) for x in ids]
        prompt, texts, cut = cached_solutions(task, tokenizer, problem, ids, context=context, reserve=reserve)
        correct = [float(np.all(np.asarray(task.score(problem, t), np.float64) >= 1.0)) for t in full]
        scores.append(correct)
        trimmed += cut
        sizes.append(len(tokenizer.encode_prompt(prompt)))
        meta = {**problem.metadata, "heavyskill": {"solutions": texts, "solution_correct": correct}}
        out.append(dataclasses.replace(problem, prompt=prompt, metadata=meta))
    scores = np.asarray(scores)
    metrics = {"heavyskill/solution_accuracy": float(scores.mean()),
               f"heavyskill/pass@{k}": float(scores.max(axis=1).mean()),
               "heavyskill/trimmed": float(np.mean(trimmed)), "heavyskill/prompt_tokens": float(np.mean(sizes))}
    return out, metrics


# ----------------------------------------------------------------------------- the warm-up task wrapper


def wrong_solution(task: Any, problem: Problem, rng: np.random.Generator) -> str:
    """A plausible wrong solution: ArithChain's worked solution with one step result off by 1..3 and the
    error carried forward; an integer-answer task's reference off by 1..3."""
    delta = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 else -1)
    if isinstance(task, ArithChainTask):
        operands, ops = problem.metadata["operands"], problem.metadata["ops"]
        slip = int(rng.integers(0, len(ops)))
        value, steps = int(operands[0]), []
        for i, (op, x) in enumerate(zip(ops, operands[1:])):
            new = value + int(x) if op == "+" else value - int(x)
            new += delta if i == slip else 0
            steps.append(f"{value}{op}{int(x)}={new}")
            value = new
        return STEP_END.join(steps) + STEP_END + ANSWER_MARK + str(value)
    try:
        return str(int(problem.reference) + delta)
    except ValueError:
        raise ValueError(f"HeavySkillTask: no wrong-solution rule for task {getattr(task, 'name', task)!r} with "
                         f"reference {problem.reference!r} (ArithChain or integer answers)") from None


class HeavySkillTask:
    """A task whose privileged prompt is a HeavySkill deliberation prompt (`data.task = "heavyskill"`).

    Args:
      base: the registered task solved (`data.task` of the wrapped task), built with `base_kwargs`.
      num_solutions: K candidates per deliberation prompt (must equal `rl.heavyskill.num_solutions`).
      seq_len: the context the budget is computed for (filled from `data.seq_len`).
      reserve: tokens left for the deliberation (the recipe's `rl.max_new_tokens`).

    Candidates are counted in characters (one char-tokenizer token each, plus bos). For each problem
    (a seed from its prompt) a share q ~ U(0, 1) of the K candidates is the worked solution, the others
    `wrong_solution`s, in random order; each is trimmed as the RL step trims sampled ones.
    """

    name = "heavyskill"

    def __init__(self, base: str = "arith_chain", base_kwargs: Mapping[str, Any] | None = None,
                 num_solutions: int = 8, seq_len: int = 192, reserve: int = 22):
        if base == self.name:
            raise ValueError("HeavySkillTask: base must be another task, not 'heavyskill'")
        self.base = build_task({"task": base, "task_kwargs": dict(base_kwargs or {})})
        if getattr(self.base, "extract_answer", None) is None and not isinstance(self.base, ArithChainTask):
            raise ValueError(f"HeavySkillTask: base task {base!r} needs extract_answer(response) (or ArithChain's "
                             "#-marked answers) so that solutions can be trimmed and voted on")
        if int(num_solutions) < 1:
            raise ValueError(f"HeavySkillTask: num_solutions must be >= 1; got {num_solutions}")
        self.num_solutions, self.seq_len, self.reserve = int(num_solutions), int(seq_len), int(reserve)
        self.reward_names = self.base.reward_names

    def __getattr__(self, name: str) -> Any:
        # Everything but the deliberation prompt (sampling, scoring, step labels, ...) is the base task's.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def sample_batch(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        return self.base.sample_batch(n, seed, split)

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        return self.base.eval_set(n, seed)

    def score(self, problem: Problem, response: str) -> Any:
        return self.base.score(problem, response)

    def sft_target(self, problem: Problem) -> str:
        target = getattr(self.base, "sft_target", None)
        return target(problem) if target is not None else problem.reference

    def extract_answer(self, response: str) -> str | None:
        return solution_answer(self.base, response)

    def candidates(self, problem: Problem) -> list[str]:
        """The K synthetic candidates of `problem` (deterministic in its prompt)."""
        rng = make_rng(stable_hash(problem.prompt, "heavyskill") % 2**63)
        right = self.sft_target(problem)
        q = rng.random()
        return [right if rng.random() < q else wrong_solution(self.base, problem, rng)
                for _ in range(self.num_solutions)]

    def privileged_prompt(self, problem: Problem) -> str:
        """The deliberation prompt over `candidates(problem)`, each trimmed to the char budget."""
        k = self.num_solutions
        overhead = len(deliberation_prompt(problem.prompt, [""] * k)) + 1  # + bos
        budget = heavyskill_solution_budget(self.seq_len, overhead, self.reserve, k)
        texts = []
        for text in self.candidates(problem):
            texts.append("".join(trim_solution(list(text), budget, answer_char_end(self.base, text))))
        return deliberation_prompt(problem.prompt, texts)


register_task("heavyskill", HeavySkillTask, overwrite=True)
