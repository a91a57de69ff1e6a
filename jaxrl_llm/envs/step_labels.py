"""Process (step) labels from a task's own step checker, mapped onto response tokens.

A task with a step checker defines `step_labels(problem, response) -> steps`, each step having
`start`, `end` (its character span `[start, end)` in the response) and `ok` (the checker's
verdict; e.g. `ArithChainTask`: steps end at `;`, error propagation). The trainers need them per
token: `step_id [B, N]` (the step each response token belongs to, -1 outside every step) and
`step_ok [B, N]` (one label per step, padded with False to the response width).

A PRM-style second judge plugs in through `register_step_scorer`: a scorer gives each step a score
in [0, 1] and the trainer keeps a step correct only when the checker says so and the score reaches
a threshold theta (BCPG-NSA's consensus, `objectives.preference.nsa_step_consensus`). A scorer
registered with `options=True` also gets the `rl.step_labels` section (e.g. the trained PRM head
of `train/prm_run.py`, "prm_head", reads its run directory from `rl.step_labels.prm_path`).

Plain NumPy: this runs on the host between rollout and update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.envs.task import Problem

__all__ = [
    "get_step_scorer",
    "has_step_labels",
    "list_step_scorers",
    "prm_step_scores",
    "register_step_scorer",
    "step_accuracy",
    "task_step_labels",
    "token_step_ids",
    "with_judge_false_positives",
]

# (problem, response, steps) -> one score in [0, 1] per step.
StepScorer = Callable[[Problem, str, Sequence[Any]], Sequence[float]]
_STEP_SCORERS: dict[str, StepScorer] = {}
_TAKES_OPTIONS: set[str] = set()  # scorers called with `options=` (the rl.step_labels section)


def has_step_labels(task: Any) -> bool:
    """The task has its own step checker (`step_labels(problem, response)`)."""
    return callable(getattr(task, "step_labels", None))


def token_step_ids(piece_texts: Sequence[str], spans: Sequence[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """`[num_tokens]` int32: the step of each token, -1 outside every step and past the response.

    piece_texts: the decoded text of each response token, in order (their concatenation is the
    response text the spans refer to); spans: `(start, end)` character spans of the steps. A token
    belongs to the step that holds its first character (a token straddling a boundary goes to the
    step it starts in).
    """
    if len(piece_texts) > num_tokens:
        raise ValueError(f"response has {len(piece_texts)} tokens > num_tokens={num_tokens}")
    out = np.full((num_tokens,), -1, np.int32)
    offset = 0
    for t, piece in enumerate(piece_texts):
        for k, (start, end) in enumerate(spans):
            if start <= offset < end:
                out[t] = k
                break
        offset += len(piece)
    return out


def _steps(task: Any, problem: Problem, pieces: Sequence[str]) -> tuple[str, list[Any]]:
    if not has_step_labels(task):
        raise ValueError(f"task {getattr(task, 'name', type(task).__name__)!r} has no step_labels(problem, response)")
    text = "".join(pieces)
    return text, list(task.step_labels(problem, text))


def task_step_labels(task: Any, problems: Sequence[Problem], piece_texts: Sequence[Sequence[str]], *,
                     num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`(step_id [B, num_steps] int32, step_ok [B, num_steps] bool)` from `task.step_labels`.

    problems: `[B]`, the problem of each response; piece_texts: per response, the text of each of
    its tokens (eos excluded). `num_steps` is the response width N: a response has at most N
    tokens, and steps no token starts in carry no loss, so N labels per row always suffice.
    """
    b = len(piece_texts)
    if len(problems) != b:
        raise ValueError(f"need one problem per response: {len(problems)} problems for {b} responses")
    step_id = np.full((b, num_steps), -1, np.int32)
    step_ok = np.zeros((b, num_steps), bool)
    for i, (problem, pieces) in enumerate(zip(problems, piece_texts)):
        _, steps = _steps(task, problem, pieces)
        kept = steps[:num_steps]  # a step past the N-th has no token of its own (see docstring)
        step_id[i] = token_step_ids(pieces, [(s.start, s.end) for s in kept], num_steps)
        step_ok[i, :len(kept)] = [bool(s.ok) for s in kept]
    return step_id, step_ok


def with_judge_false_positives(step_id: np.ndarray, step_ok: np.ndarray, rate: float,
                               rng: np.random.Generator) -> np.ndarray:
    """`step_ok [B, N]` as a first judge that errs would give it: each wrong step that has a token in
    `step_id [B, T]` is called correct with probability `rate` (correct steps stay correct).

    A simulation knob (`rl.step_labels.judge_false_positive`): the task's checker is exact, the
    paper's LLM judge is not, and the PRM consensus exists to catch those false positives.

    Example: `step_id = [[0, 0, 1, -1]]`, `step_ok = [[True, False, False]]`, rate 1 ->
    `[[True, True, False]]` (step 2 has no token, so it is left as it is).
    """
    step_ok = np.asarray(step_ok, bool)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"judge false-positive rate must be in [0, 1]; got {rate}")
    present = np.zeros(step_ok.shape, bool)
    rows, cols = np.nonzero(np.asarray(step_id) >= 0)
    present[rows, np.asarray(step_id)[rows, cols]] = True
    flip = present & ~step_ok & (rng.random(step_ok.shape) < rate)
    return step_ok | flip


def register_step_scorer(name: str, *, overwrite: bool = False, options: bool = False
                         ) -> Callable[[StepScorer], StepScorer]:
    """Decorator: `@register_step_scorer("my_prm")` on `fn(problem, response, steps) -> [K] scores`
    in [0, 1]; `rl.step_labels.prm="my_prm"` then joins it to the checker's labels. With
    `options=True` the scorer is called as `fn(problem, response, steps, options=...)` with the
    `rl.step_labels` section (a mapping), so its settings live in the config."""
    def wrap(fn: StepScorer) -> StepScorer:
        if name in _STEP_SCORERS and not overwrite:
            raise ValueError(f"step scorer {name!r} is already registered (pass overwrite=True to replace it)")
        _STEP_SCORERS[name] = fn
        (_TAKES_OPTIONS.add if options else _TAKES_OPTIONS.discard)(name)
        return fn

    return wrap


def get_step_scorer(name: str) -> StepScorer:
    if name not in _STEP_SCORERS:
        raise KeyError(f"unknown step scorer {name!r}; registered: {sorted(_STEP_SCORERS)}")
    return _STEP_SCORERS[name]


def list_step_scorers() -> list[str]:
    return sorted(_STEP_SCORERS)


def prm_step_scores(name: str, task: Any, problems: Sequence[Problem], piece_texts: Sequence[Sequence[str]], *,
                    num_steps: int, options: Any = None) -> np.ndarray:
    """`[B, num_steps]` float32: the registered scorer's score of each step of `task.step_labels`
    (the same segmentation as `task_step_labels`), 0 past the last step. `options` (the
    `rl.step_labels` section) reaches scorers registered with `options=True`."""
    scorer = get_step_scorer(name)
    if name in _TAKES_OPTIONS:
        scorer = functools.partial(scorer, options=options if options is not None else {})
    out = np.zeros((len(piece_texts), num_steps), np.float32)
    for i, (problem, pieces) in enumerate(zip(problems, piece_texts)):
        text, steps = _steps(task, problem, pieces)
        scores = np.asarray(scorer(problem, text, steps), np.float32).reshape(-1)
        if scores.shape[0] != len(steps):
            raise ValueError(f"step scorer {name!r} returned {scores.shape[0]} scores for {len(steps)} steps")
        k = min(len(steps), num_steps)
        out[i, :k] = scores[:k]
    return out


def step_accuracy(task: Any, problems: Sequence[Problem], texts: Sequence[str]) -> tuple[int, int]:
    """`(correct steps, steps)` over `texts` by `task.step_labels` (problems `[B]`, one per text)."""
    ok = total = 0
    for problem, text in zip(problems, texts):
        steps = _steps(task, problem, [text])[1]
        ok += sum(bool(s.ok) for s in steps)
        total += len(steps)
    return ok, total
