"""Skill1 (arXiv 2605.06130): one policy queries a skill bank, re-ranks, solves and distils a skill.

An episode has four segments, each one generation (or, for solve, the usual turn loop) of the same
policy with its own plain-text prompt:

    query     "Write search words ..." + goal           -> "put hot apple cabinet 1"
    retrieve  the bank's top-k = 3 skills for the query (D2Skill's retrieval score; its UCB bonus in
              training, 0 in evaluation = greedy)
    rerank    the goal and the numbered candidates       -> "2"  (only with >= 2 candidates)
    solve     the turn loop with "Skill for <when>: <strategy>" as the skill block
    distil    the goal, the actions taken, the outcome   -> "<when>: <strategy>", added to the bank

Credit from the single outcome r in {0, 1} (PAPER in words; the formulas RECON): the picked skill's
utility U_s <- 0.95 U_s + 0.05 r; selection credit r_sel = U_picked - mean_j U_j over the shown
candidates; distillation credit r_dist = r - max_j U_j over the retrieved ones (r when none were
retrieved); segment rewards exec R, query R, select R + 0.3 r_sel, distil R + 0.3 r_dist, where R
is the trainer's episode reward (the score minus the invalid-action penalty; R = r for a clean
TextHouse win). Utilities are read before this step's updates, so every episode of a step sees the
same bank. Each segment is then group-normalised on its own (GRPO per segment).

RECON choices: the query segment shares the episode reward; a new skill starts at U = 0 and by
default only successful episodes add theirs (`add_failed`); an unparsable rerank falls back to the
top-ranked candidate; a skill's title is the task type of the episode that distilled it (never shown
to the policy; it only scores the selection accuracy).

Host-side numpy; the trainer (`train/agent_skills.py: skill1_play`) supplies the sampler.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxrl_llm.agents.skill_bank import Skill, SkillBank, embed_text, select_skills
from jaxrl_llm.analysis.retrieval import cosine_matrix, tokenize

__all__ = [
    "SKILL1_EMA_RATE", "SKILL1_LAMBDA", "SEGMENTS", "Skill1Bank", "Skill1Episodes", "Skill1Rewards", "Skill1Step",
    "distil_prompt", "distillation_credit", "full_groups", "oracle_query", "oracle_skill", "parse_pick", "parse_query",
    "parse_skill", "plan_summary", "query_prompt", "rerank_prompt", "segment_records", "selection_accuracy",
    "selection_credit", "skill1_segment_rewards", "skill1_update", "skill_block", "skill_line", "skill_text", "skill_utility_update",
]

SKILL1_EMA_RATE = 0.05  # Skill1 code config: utility EMA rate
SKILL1_LAMBDA = 0.3  # Skill1 code config: lambda_rerank = lambda_distill
SEGMENTS = ("execute", "query", "select", "distill")  # the row order of a Skill1 update batch

QUERY_INSTRUCTION = "Write search words for a skill that fits the goal."
RERANK_INSTRUCTION = "Pick the skill that fits the goal. Reply with its number."
DISTIL_INSTRUCTION = "Write a skill from this episode: search words, a colon, then the steps."
_PLAN_SKIP = ("go", "look", "inventory", "close")  # moves and checks: not part of a type's strategy


# ----------------------------------------------------------------------------- credits (pure)


def skill_utility_update(utility, reward, rate: float = SKILL1_EMA_RATE):
    """U_s <- (1 - rate) U_s + rate r. utility: scalar or [S] (the skills used); reward: scalar or [S].
    Returns float64 of the broadcast shape (a float for scalars)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"skill_utility_update: rate must lie in (0, 1]; got {rate}")
    out = (1.0 - rate) * np.asarray(utility, np.float64) + rate * np.asarray(reward, np.float64)
    return float(out) if out.ndim == 0 else out


def _utilities(name: str, utilities) -> np.ndarray:
    u = np.asarray(utilities, np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"{name}: utilities must be a non-empty [k] array; got shape {u.shape}")
    return u


def selection_credit(utilities, selected: int) -> float:
    """r_sel = U_selected - mean_j U_j over the k re-ranked candidates (utilities before this episode's
    update). utilities: [k]; selected: index of the chosen candidate."""
    u = _utilities("selection_credit", utilities)
    if not 0 <= selected < u.size:
        raise ValueError(f"selection_credit: selected must lie in [0, {u.size}); got {selected}")
    return float(u[selected] - u.mean())


def distillation_credit(reward: float, utilities) -> float:
    """r_dist = r - max_j U_j: the new skill is credited only for beating the best retrieved one.
    utilities: [k] of the retrieved skills (before this episode's update)."""
    return float(reward - _utilities("distillation_credit", utilities).max())


class Skill1Rewards(NamedTuple):
    """Per-segment rewards of one Skill1 episode (each segment gets its own GRPO advantage)."""

    execute: float
    select: float
    distill: float


def skill1_segment_rewards(reward: float, r_sel: float, r_dist: float, *, lambda_rerank: float = SKILL1_LAMBDA,
                           lambda_distill: float = SKILL1_LAMBDA) -> Skill1Rewards:
    """exec r; select r + lambda_rerank * r_sel; distil r + lambda_distill * r_dist."""
    return Skill1Rewards(float(reward), float(reward + lambda_rerank * r_sel),
                         float(reward + lambda_distill * r_dist))


def full_groups(present, group_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of one segment that GRPO can normalise: `present [E]` bool over `E = G * group_size`
    episodes (group = consecutive `group_size`). Returns `(index [K], group_ids [K] in 0..P-1, P)`:
    the present episodes of the groups with >= 2 of them, groups renumbered in order."""
    present = np.asarray(present, bool)
    if present.ndim != 1 or group_size < 1 or present.size % group_size:
        raise ValueError(f"present must be [G * group_size] with group_size={group_size}; got {present.shape}")
    counts = present.reshape(-1, group_size).sum(1)
    keep = np.repeat(counts >= 2, group_size) & present
    index = np.flatnonzero(keep)
    old = index // group_size
    _, new = np.unique(old, return_inverse=True)
    return index, new.astype(np.int32), int(len(np.unique(old)))


# ----------------------------------------------------------------------------- segment texts


def oracle_query(goal: str) -> str:
    """The goal's key words (`analysis.retrieval.tokenize`: lower case, function words dropped)."""
    return " ".join(tokenize(goal))


def plan_summary(actions: Sequence[str]) -> str:
    """A type's strategy from a trajectory: the verbs of its actions (moves and checks left out,
    repeats merged), e.g. `open, take, heat, put`."""
    verbs: list[str] = []
    for a in actions:
        words = a.lower().split()
        if words and words[0] not in _PLAN_SKIP and (not verbs or verbs[-1] != words[0]):
            verbs.append(words[0])
    return ", ".join(verbs)


def oracle_skill(goal: str, actions: Sequence[str]) -> str:
    """The distil segment's target: `<the goal's key words>: <plan summary>`."""
    return f"{oracle_query(goal)}: {plan_summary(actions)}"


def query_prompt(goal: str) -> str:
    return f"{QUERY_INSTRUCTION}\nGoal: {goal}\n"


def skill_line(skill: Skill) -> str:
    return f"{skill.when_to_apply}: {skill.principle}"


def rerank_prompt(goal: str, candidates: Sequence[Skill]) -> str:
    """The goal, then the candidates numbered from 1 as `k. <when>: <strategy>`."""
    lines = [RERANK_INSTRUCTION, f"Goal: {goal}"]
    lines += [f"{k + 1}. {skill_line(s)}" for k, s in enumerate(candidates)]
    return "\n".join(lines) + "\n"


def distil_prompt(goal: str, actions: Sequence[str], won: bool) -> str:
    did = " | ".join(a for a in actions if a) or "nothing"
    return f"{DISTIL_INSTRUCTION}\nGoal: {goal}\nDid: {did}\nOutcome: {'success' if won else 'failure'}\n"


def segment_records(goal: str, task_type: str, actions: Sequence[str], others: Sequence[tuple[str, str]],
                    rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """`(segment, prompt, target)` SFT records of one oracle episode (goal, task type, its oracle
    `actions`): the query (the goal's key words), the distil (`oracle_skill`) and, when `others` holds
    `(task_type, skill text)` of other types, a rerank over the episode's own skill and up to two of
    theirs (one per type) in a random order, answered with the own skill's number."""
    own = oracle_skill(goal, actions)
    records = [("query", query_prompt(goal), oracle_query(goal)), ("distill", distil_prompt(goal, actions, True), own)]
    foreign = list({t: s for t, s in others if t != task_type}.values())
    if foreign:
        picks = [foreign[int(i)] for i in rng.permutation(len(foreign))[:2]]
        texts = [own, *picks]
        order = rng.permutation(len(texts))
        cands = []
        for k in order:
            when, strategy = parse_skill(texts[k])
            cands.append(Skill(f"oracle-{k}", "", strategy, when, when))
        records.append(("select", rerank_prompt(goal, cands), str(int(np.flatnonzero(order == 0)[0]) + 1)))
    return records


def skill_text(when: str, strategy: str) -> str:
    return f"Skill for {when}: {strategy}"


def skill_block(skill: Skill | None) -> str:
    """The solve segment's skill block ("" without a skill)."""
    return "" if skill is None else skill_text(skill.when_to_apply, skill.principle)


def parse_query(text: str) -> str:
    return " ".join(text.replace("\ufffd", " ").split())


def parse_pick(text: str, k: int) -> int | None:
    """The 0-based candidate index of a rerank response (its first integer, 1..k); None if invalid."""
    m = re.search(r"\d+", text)
    if m is None:
        return None
    pick = int(m.group()) - 1
    return pick if 0 <= pick < k else None


def parse_skill(text: str) -> tuple[str, str] | None:
    """`(when, strategy)` of a distil response `<when>: <strategy>`; None without both parts."""
    when, sep, strategy = text.replace("\ufffd", " ").partition(":")
    when, strategy = " ".join(when.split()), " ".join(strategy.split())
    return (when, strategy) if sep and when and strategy else None


# ----------------------------------------------------------------------------- the bank


def _text_key(when: str, strategy: str) -> tuple[str, str]:
    return tuple(" ".join(re.findall(r"[a-z0-9]+", t.lower())) for t in (when, strategy))


@dataclasses.dataclass
class Skill1Bank:
    """Skill1's bank: one pool of `Skill(title=source task type, principle=strategy,
    when_to_apply=search words)` in a D2Skill `SkillBank` (dedupe, eviction, JSON), retrieved by
    D2Skill's score with the UCB bonus `c` in training and without it in evaluation."""

    bank: SkillBank = dataclasses.field(default_factory=SkillBank)
    rate: float = SKILL1_EMA_RATE

    def __post_init__(self):
        self._keys: dict[str, np.ndarray] = {}
        self._texts = {_text_key(s.when_to_apply, s.principle) for s in self.skills}

    @property
    def skills(self) -> list[Skill]:
        return self.bank.task_pool

    def _key(self, skill: Skill) -> np.ndarray:
        if skill.id not in self._keys:
            self._keys[skill.id] = embed_text(skill.when_to_apply, self.bank.dim)
        return self._keys[skill.id]

    def candidates(self, query: str, *, explore: bool) -> list[Skill]:
        """The top-k skills for `query` (best first); `explore`: with the UCB bonus (training)."""
        pool = self.skills
        if not pool:
            return []
        b = self.bank
        sims = cosine_matrix(embed_text(query, b.dim)[None], np.stack([self._key(s) for s in pool]))[0]
        idx = select_skills(sims, [s.utility for s in pool], [s.count for s in pool], top_candidates=b.top_candidates,
                            top_k=b.top_k, min_sim=b.min_sim, alpha=b.alpha, c=b.c if explore else 0.0)
        return [pool[i] for i in idx]

    def use(self, skill_id: str, reward: float) -> None:
        """The used skill's utility EMA (`skill_utility_update`) and count."""
        skill = self.bank.get(skill_id)
        if skill is not None:  # evicted since it was retrieved: nothing to credit
            skill.utility = skill_utility_update(skill.utility, reward, self.rate)
            skill.count += 1

    def add(self, when: str, strategy: str, task_type: str, *, step: int) -> Skill | None:
        """A distilled skill (None when a skill with the same words is in the bank, whatever its type)."""
        key = _text_key(when, strategy)
        if key in self._texts:
            return None
        skill = self.bank.add("task", title=task_type, principle=strategy, when_to_apply=when, retrieval_obs=when,
                              step=step)
        if skill is not None:
            self._texts.add(key)
        return skill

    def evict(self, step: int) -> list[Skill]:
        gone = self.bank.evict(step)
        for s in gone:
            self._keys.pop(s.id, None)
            self._texts.discard(_text_key(s.when_to_apply, s.principle))
        return gone

    def metrics(self) -> dict[str, float]:
        pool = self.skills
        return {"skill1/bank_size": float(len(pool)),
                "skill1/mean_utility": float(np.mean([s.utility for s in pool])) if pool else 0.0}

    def to_json(self) -> str:
        return json.dumps({"rate": self.rate, "bank": self.bank.to_json()})

    @classmethod
    def from_json(cls, text: str) -> Skill1Bank:
        data = json.loads(text)
        return cls(SkillBank.from_json(data["bank"]), float(data["rate"]))


# ----------------------------------------------------------------------------- one step's episodes


@dataclasses.dataclass
class Skill1Episodes:
    """The segments of `E` episodes (per episode i): the query text, the retrieved candidates, the
    0-based pick (None without a skill), whether a rerank was generated and parsed, the distilled
    `(when, strategy)` (None if unparsable), and each generated segment's sampler payload."""

    goals: list[str]
    queries: list[str]
    candidates: list[list[Skill]]
    picks: list[int | None]
    reranked: np.ndarray
    rerank_valid: np.ndarray
    distilled: list[tuple[str, str] | None]
    payloads: dict[str, list]  # "query" / "select" / "distill" -> [E] payload (None where not generated)

    def picked(self, i: int) -> Skill | None:
        return None if self.picks[i] is None else self.candidates[i][self.picks[i]]


@dataclasses.dataclass
class Skill1Step:
    """Per segment (`SEGMENTS[1:]`, the execute rewards being the episode rewards): rewards [E] and
    present [E] (the segment was generated); the skills added; the metrics."""

    rewards: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    added: list[Skill]
    metrics: dict[str, float]


def skill1_update(bank: Skill1Bank, eps: Skill1Episodes, success, returns, task_types: Sequence[str], *, step: int,
                  lambda_rerank: float = SKILL1_LAMBDA, lambda_distill: float = SKILL1_LAMBDA,
                  add_failed: bool = False) -> Skill1Step:
    """Credits of one step's episodes (module docstring), then the bank's updates: the picked skills'
    utilities (episode order), the distilled skills added (successful episodes only unless
    `add_failed`). success [E] in {0, 1}; returns [E] the episode rewards R; task_types [E]."""
    success, returns = np.asarray(success, np.float64), np.asarray(returns, np.float64)
    e = len(eps.goals)
    if success.shape != (e,) or returns.shape != (e,) or len(task_types) != e:
        raise ValueError(f"success, returns and task_types must have one entry per episode ({e}); got "
                         f"{success.shape}, {returns.shape}, {len(task_types)}")
    select, distill = np.zeros(e), np.zeros(e)
    for i in range(e):
        u = [s.utility for s in eps.candidates[i]]
        r_sel = selection_credit(u, eps.picks[i]) if eps.reranked[i] else 0.0
        r_dist = distillation_credit(success[i], u) if u else float(success[i])
        seg = skill1_segment_rewards(returns[i], r_sel, r_dist, lambda_rerank=lambda_rerank,
                                     lambda_distill=lambda_distill)
        select[i], distill[i] = seg.select, seg.distill
    picked = [eps.picked(i) for i in range(e)]
    for i, skill in enumerate(picked):
        if skill is not None:
            bank.use(skill.id, success[i])
    added = []
    for i, d in enumerate(eps.distilled):
        if d is not None and (add_failed or success[i] >= 1.0):
            skill = bank.add(d[0], d[1], task_types[i], step=step)
            if skill is not None:
                added.append(skill)
    with_skill = [i for i in range(e) if picked[i] is not None]
    metrics = {
        **bank.metrics(), "skill1/added": float(len(added)), "skill1/success": float(success.mean()),
        "skill1/with_skill_frac": len(with_skill) / e,
        "skill1/selection_accuracy": selection_accuracy(eps, task_types),
        "skill1/rerank_frac": float(np.mean(eps.reranked)),
        "skill1/rerank_valid": float(eps.rerank_valid[eps.reranked].mean()) if eps.reranked.any() else 0.0,
        "skill1/distil_valid": float(np.mean([d is not None for d in eps.distilled])),
        "skill1/reward_select": float(select[eps.reranked].mean()) if eps.reranked.any() else 0.0,
        "skill1/reward_distill": float(distill.mean()),
    }
    present = {"query": np.ones(e, bool), "select": np.asarray(eps.reranked, bool), "distill": np.ones(e, bool)}
    rewards = {"query": returns.astype(np.float32), "select": select.astype(np.float32),
               "distill": distill.astype(np.float32)}
    return Skill1Step(rewards, present, added, metrics)


def selection_accuracy(eps: Skill1Episodes, task_types: Sequence[str]) -> float:
    """Share of episodes with a skill whose skill's source task type is the episode's (0 when none)."""
    hits = [eps.picked(i).title == t for i, t in enumerate(task_types) if eps.picked(i) is not None]
    return float(np.mean(hits)) if hits else 0.0
