"""D2Skill: a dynamic dual-granularity skill bank for agentic RL (arXiv 2603.28716).

Two pools of learned skills: task skills (retrieved once per episode with the goal text) and step
skills (retrieved every turn with "goal + current observation"). The bank starts empty and is
maintained during training:

    split      the first round(0.5 G) rollouts of a group get skills, the rest none
    retrieve   top-2k candidates by cosine similarity, ranked by
               alpha (sim + 1) / 2 + (1 - alpha) (u + c sqrt(log max(2, 1 + N) / (1 + n))),
               top_k kept, then the sim >= min_sim filter (after ranking, as in the official code)
    credit     per group: b = mean success of skill-free rollouts (0 if none); task skills get
               mean success(with) - b, the step skills of rollout i get s_i - b; u <- EMA, n += 1
    reward     intrinsic r_i += kappa (s_i - b) (affine in s for binary s: GRPO advantages unchanged)
    reflect    for groups with success rate <= 0.5, one failed skill-injected rollout is reflected
               into one step skill and one task skill (deduplicated)
    evict      after validation, a pool above max_size drops the lowest u + c sqrt(log(1 + N)/(1 + n))
               among skills at least min_age steps old

Host-side numpy, deterministic. The embedding is a hashed bag of words (a CPU stand-in for the
paper's sentence encoder). Everything the bank renders is ASCII.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from jaxrl_llm.agents.prompt import Turn  # one past turn (observation, action, oracle action)

from jaxrl_llm.analysis.retrieval import cosine_matrix, tokenize
from jaxrl_llm.envs.task import make_rng, stable_hash

__all__ = [
    "POOLS",
    "GroupCredit",
    "OracleReflector",
    "Reflection",
    "Reflector",
    "Skill",
    "SkillBank",
    "Trajectory",
    "Turn",
    "ema_update",
    "embed_text",
    "evict",
    "eviction_keys",
    "group_credits",
    "intrinsic_rewards",
    "reflect_step",
    "retrieval_scores",
    "retrieve",
    "select_skills",
    "skill_split",
    "to_ascii",
]

POOLS: tuple[str, ...] = ("task", "step")


def to_ascii(text: str) -> str:
    """`text` with accents folded (NFKD) and any other non-ASCII character dropped."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(to_ascii(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3].rstrip() + "..."


@dataclass
class Skill:
    """One learned skill. `when_to_apply` is the retrieval text; `retrieval_obs` the situation it was
    written in (the goal for task skills, the observation for step skills). `utility` u and
    `count` n are the credit EMA and the number of credit updates."""

    id: str
    title: str
    principle: str
    when_to_apply: str
    retrieval_obs: str
    utility: float = 0.0
    count: int = 0
    created_at_step: int = 0
    pool: str = "task"

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"Skill.pool must be one of {POOLS}; got {self.pool!r}")


# ----------------------------------------------------------------------------- embedding and retrieval


def embed_text(text: str, dim: int = 256) -> np.ndarray:
    """Hashed bag-of-words embedding [dim] float64, L2-normalised (zeros for a text with no words).

    Words are `analysis.retrieval.tokenize`'s (lower-case, function words dropped), bucketed by the
    process-stable `stable_hash`, so an embedding is the same in every run.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1; got {dim!r}")
    vec = np.zeros(dim)
    for word in tokenize(text):
        vec[stable_hash(word, salt="d2skill") % dim] += 1.0
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def retrieval_scores(sims, utilities, counts, *, total_count: float | None = None, alpha: float = 0.1,
                     c: float = 0.05) -> np.ndarray:
    """Retrieval score [K] of candidates with cosine sims [K], utilities u [K] and counts n [K]:
    alpha (sim + 1)/2 + (1 - alpha)(u + c sqrt(log max(2, 1 + N) / (1 + n))).

    N = `total_count`, the sum of counts over the whole pool (default: sum of `counts`).
    """
    sims, utilities, counts = (np.asarray(x, np.float64) for x in (sims, utilities, counts))
    if not sims.shape == utilities.shape == counts.shape or sims.ndim != 1:
        raise ValueError(f"sims, utilities, counts must all be [K]; got {sims.shape}, {utilities.shape}, "
                         f"{counts.shape}")
    n_total = counts.sum() if total_count is None else float(total_count)
    bonus = c * np.sqrt(math.log(max(2.0, 1.0 + n_total)) / (1.0 + counts))
    return alpha * (sims + 1.0) / 2.0 + (1.0 - alpha) * (utilities + bonus)


def select_skills(sims, utilities, counts, *, top_candidates: int = 10, top_k: int = 3, min_sim: float = 0.7,
                  alpha: float = 0.1, c: float = 0.05) -> np.ndarray:
    """Indices [<= top_k] int64 into a pool with sims/utilities/counts [P], best score first.

    The `top_candidates` most similar skills are ranked by `retrieval_scores` (N over the whole
    pool), the best `top_k` kept, and only then those with sim < `min_sim` dropped. Ties keep the
    earlier (more similar, then older) skill.
    """
    sims, utilities, counts = (np.asarray(x, np.float64) for x in (sims, utilities, counts))
    if not sims.shape == utilities.shape == counts.shape or sims.ndim != 1:
        raise ValueError(f"sims, utilities, counts must all be [P]; got {sims.shape}, {utilities.shape}, "
                         f"{counts.shape}")
    if top_candidates < 1 or top_k < 1:
        raise ValueError(f"top_candidates and top_k must be >= 1; got {top_candidates}, {top_k}")
    cand = np.argsort(-sims, kind="stable")[:top_candidates]
    scores = retrieval_scores(sims[cand], utilities[cand], counts[cand], total_count=counts.sum(),
                              alpha=alpha, c=c)
    ranked = cand[np.argsort(-scores, kind="stable")][:top_k]
    return ranked[sims[ranked] >= min_sim].astype(np.int64)


def retrieve(pool: Sequence[Skill], query: str, *, top_candidates: int = 10, top_k: int = 3,
             min_sim: float = 0.7, alpha: float = 0.1, c: float = 0.05, dim: int = 256) -> list[Skill]:
    """Skills of `pool` for a query text (similarity against each skill's `when_to_apply`)."""
    if not pool:
        return []
    keys = np.stack([embed_text(s.when_to_apply, dim) for s in pool])
    return _retrieve(pool, keys, query, top_candidates=top_candidates, top_k=top_k, min_sim=min_sim,
                     alpha=alpha, c=c, dim=dim)


def _retrieve(pool, keys, query, *, dim, **kw) -> list[Skill]:
    sims = cosine_matrix(embed_text(query, dim)[None], keys)[0]
    idx = select_skills(sims, [s.utility for s in pool], [s.count for s in pool], **kw)
    return [pool[i] for i in idx]


# ----------------------------------------------------------------------------- eviction


def eviction_keys(utilities, counts, *, c: float = 0.05, scale: float = 1.0) -> np.ndarray:
    """Keep-priority [P] = u + scale c sqrt(log(1 + N) / (1 + n)), N = sum of counts; lowest goes first."""
    utilities, counts = np.asarray(utilities, np.float64), np.asarray(counts, np.float64)
    if utilities.shape != counts.shape or utilities.ndim != 1:
        raise ValueError(f"utilities and counts must both be [P]; got {utilities.shape}, {counts.shape}")
    return utilities + scale * c * np.sqrt(math.log(1.0 + counts.sum()) / (1.0 + counts))


def evict(pool: Sequence[Skill], *, step: int, max_size: int = 300, min_age: int = 10, c: float = 0.05,
          scale: float = 1.0) -> tuple[list[Skill], list[Skill]]:
    """`(kept, removed)`: while the pool exceeds `max_size`, drop the lowest `eviction_keys` among
    skills with step - created_at_step >= `min_age` (keys computed once, on the full pool; ties
    drop the older skill). Younger skills are never dropped, so the pool may stay above max_size."""
    excess = len(pool) - max_size
    if excess <= 0:
        return list(pool), []
    keys = eviction_keys([s.utility for s in pool], [s.count for s in pool], c=c, scale=scale)
    eligible = [i for i, s in enumerate(pool) if step - s.created_at_step >= min_age]
    order = sorted(eligible, key=lambda i: (keys[i], i))
    drop = set(order[:excess])
    return [s for i, s in enumerate(pool) if i not in drop], [s for i, s in enumerate(pool) if i in drop]


# ----------------------------------------------------------------------------- credit


class GroupCredit(NamedTuple):
    baseline: float  # b_g, mean success of the skill-free rollouts (0 if none)
    task_credit: float  # mean success of the skill-injected rollouts - b_g (0 if none)
    step_credits: np.ndarray  # [G] s_i - b_g


def group_credits(success, with_skill) -> GroupCredit:
    """Credits of one task group. success: [G] float (1[won] or a score); with_skill: [G] bool."""
    success = np.asarray(success, np.float64)
    with_skill = np.asarray(with_skill)
    if success.ndim != 1 or with_skill.shape != success.shape:
        raise ValueError(f"success and with_skill must both be [G]; got {success.shape}, {with_skill.shape}")
    if with_skill.dtype != bool:
        raise TypeError(f"with_skill must be bool; got {with_skill.dtype}")
    free = success[~with_skill]
    baseline = float(free.mean()) if free.size else 0.0
    task = float(success[with_skill].mean()) - baseline if with_skill.any() else 0.0
    return GroupCredit(baseline, task, success - baseline)


def ema_update(u, credit, beta: float = 0.5):
    """u <- (1 - beta) u + beta credit (scalars or arrays)."""
    return (1.0 - beta) * u + beta * credit


def intrinsic_rewards(success, baseline, kappa: float = 1.0) -> np.ndarray:
    """kappa (s_i - b_g) [G], added to each rollout's reward at its last token."""
    return kappa * (np.asarray(success, np.float64) - np.asarray(baseline, np.float64))


def skill_split(group_size: int, *, fraction: float = 0.5) -> np.ndarray:
    """bool [G]: the first round_half_up(fraction G) rollouts get skills (validation: fraction=1)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1; got {group_size!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
    return np.arange(group_size) < math.floor(fraction * group_size + 0.5)


# ----------------------------------------------------------------------------- reflection


@dataclass(frozen=True)
class Trajectory:
    """One rollout as the bank sees it: what happened and which skills it was shown."""

    goal: str
    task_type: str
    turns: tuple[Turn, ...]
    success: float = 0.0
    with_skill: bool = False
    task_skill_ids: tuple[str, ...] = ()
    step_skill_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reflection:
    """A reflector's diagnosis: the first wrong turn and one skill per pool (dicts of Skill text fields)."""

    first_error_turn: int
    step_skill: dict[str, str]
    task_skill: dict[str, str]


@runtime_checkable
class Reflector(Protocol):
    def reflect(self, trajectory: Trajectory) -> Reflection | None: ...


def _verb(action: str) -> str:
    words = re.split(r"[\s\[]+", action.strip().lower())
    return " ".join(words[:2]) if words[:2] == ["go", "to"] else words[0]


def _same_action(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


class OracleReflector:
    """Rule-based CPU reflector: the first turn whose action differs from the env's oracle action.

    Step skill: "When <obs summary>, do <oracle>, not <taken>." (retrieval text goal + observation,
    retrieval_obs = that observation). Task skill: the task type's plan as the verbs of the
    trajectory's oracle actions (retrieval text and retrieval_obs = goal). None when no turn deviates.
    """

    def __init__(self, *, obs_chars: int = 80):
        self.obs_chars = obs_chars

    def reflect(self, trajectory: Trajectory) -> Reflection | None:
        turns = trajectory.turns
        err = next((k for k, t in enumerate(turns)
                    if t.oracle_action is not None and not _same_action(t.action, t.oracle_action)), None)
        if err is None:
            return None
        turn, goal, kind = turns[err], _one_line(trajectory.goal), _one_line(trajectory.task_type)
        oracle, taken = _one_line(turn.oracle_action), _one_line(turn.action, 60) or "nothing"
        step = {"title": _one_line(f"{kind}: {oracle}", 80),
                "principle": f"When {_one_line(turn.observation, self.obs_chars)}, do {oracle}, not {taken}.",
                "when_to_apply": _one_line(f"{goal} {turn.observation}"),
                "retrieval_obs": _one_line(turn.observation)}
        verbs: list[str] = []
        for t in turns:
            if t.oracle_action and (not verbs or verbs[-1] != _verb(t.oracle_action)):
                verbs.append(_verb(t.oracle_action))
        task = {"title": f"{kind} plan",
                "principle": _one_line(f"For {kind} tasks: {' -> '.join(verbs)}; check each step before "
                                       f"acting, e.g. {oracle} instead of {taken}.", 240),
                "when_to_apply": goal, "retrieval_obs": goal}
        return Reflection(err, step, task)


# ----------------------------------------------------------------------------- the bank


def _dedupe_key(title: str, principle: str, when_to_apply: str) -> tuple[str, str, str]:
    return tuple(" ".join(re.findall(r"[a-z0-9]+", to_ascii(t).lower())) for t in (title, principle, when_to_apply))


@dataclass
class SkillBank:
    """The two pools and the D2Skill knobs (config: `agent.d2skill.*`). Starts empty."""

    dim: int = 256
    top_candidates: int = 10
    top_k: int = 3
    min_sim: float = 0.7
    alpha: float = 0.1
    c: float = 0.05
    beta: float = 0.5
    max_size: int = 300
    min_age: int = 10
    evict_scale: float = 1.0
    pools: dict[str, list[Skill]] = field(default_factory=lambda: {p: [] for p in POOLS})
    next_id: int = 0

    def __post_init__(self):
        if set(self.pools) != set(POOLS):
            raise ValueError(f"pools must have exactly the keys {POOLS}; got {sorted(self.pools)}")
        self._keys = {p: [embed_text(s.when_to_apply, self.dim) for s in self.pools[p]] for p in POOLS}
        self._seen = {_dedupe_key(s.title, s.principle, s.when_to_apply) for p in POOLS for s in self.pools[p]}

    @property
    def task_pool(self) -> list[Skill]:
        return self.pools["task"]

    @property
    def step_pool(self) -> list[Skill]:
        return self.pools["step"]

    def _retrieve(self, pool: str, query: str) -> list[Skill]:
        if not self.pools[pool]:
            return []
        return _retrieve(self.pools[pool], np.stack(self._keys[pool]), query, dim=self.dim,
                         top_candidates=self.top_candidates, top_k=self.top_k, min_sim=self.min_sim,
                         alpha=self.alpha, c=self.c)

    def retrieve_task(self, goal: str) -> list[Skill]:
        """Task skills for an episode, queried once with the goal text."""
        return self._retrieve("task", goal)

    def retrieve_step(self, goal: str, observation: str) -> list[Skill]:
        """Step skills for one turn, queried with goal + current observation."""
        return self._retrieve("step", f"{goal} {observation}")

    @staticmethod
    def render(task_skills: Sequence[Skill], step_skills: Sequence[Skill]) -> str:
        """Prompt block: "Task-level experience:" / "Step-level experience:" sections of
        "- title: principle" lines; an empty section is left out ("" when both are empty)."""
        parts = []
        for header, skills in (("Task-level experience:", task_skills), ("Step-level experience:", step_skills)):
            if skills:
                parts.append("\n".join([header, *(f"- {_one_line(s.title)}: {_one_line(s.principle)}"
                                                  for s in skills)]))
        return "\n".join(parts)

    def add(self, pool: str, *, title: str, principle: str, when_to_apply: str, retrieval_obs: str = "",
            step: int = 0) -> Skill | None:
        """Adds a skill (texts folded to ASCII); None when a skill with the same normalised
        (title, principle, when_to_apply) is already in the bank."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}; got {pool!r}")
        title, principle, when_to_apply = _one_line(title), _one_line(principle), _one_line(when_to_apply)
        key = _dedupe_key(title, principle, when_to_apply)
        if key in self._seen:
            return None
        skill = Skill(f"{pool}-{self.next_id}", title, principle, when_to_apply, _one_line(retrieval_obs),
                      created_at_step=int(step), pool=pool)
        self.next_id += 1
        self._seen.add(key)
        self.pools[pool].append(skill)
        self._keys[pool].append(embed_text(when_to_apply, self.dim))
        return skill

    def get(self, skill_id: str) -> Skill | None:
        return next((s for p in POOLS for s in self.pools[p] if s.id == skill_id), None)

    def _credit(self, skill_id: str, credit: float) -> None:
        skill = self.get(skill_id)
        if skill is not None:  # evicted since it was retrieved: nothing to credit
            skill.utility = float(ema_update(skill.utility, credit, self.beta))
            skill.count += 1

    def update_credits(self, success, with_skill, *, task_skill_ids: Sequence[str] = (),
                       step_skill_ids: Sequence[Sequence[str]] = ()) -> GroupCredit:
        """Credit one task group. success, with_skill: [G]; task_skill_ids: task skills shown to
        the group; step_skill_ids: per rollout [G], the step skills it was shown (any turn).

        Each task skill gets one EMA update with the task credit; each distinct step skill of a
        skill-injected rollout i one update with s_i - b (rollouts in order). Returns the credits.
        """
        with_skill = np.asarray(with_skill)
        credit = group_credits(success, with_skill)
        if with_skill.any():
            for sid in dict.fromkeys(task_skill_ids):
                self._credit(sid, credit.task_credit)
        if step_skill_ids and len(step_skill_ids) != len(credit.step_credits):
            raise ValueError(f"step_skill_ids must list one entry per rollout ({len(credit.step_credits)}); "
                             f"got {len(step_skill_ids)}")
        for i, ids in enumerate(step_skill_ids):
            if with_skill[i]:
                for sid in dict.fromkeys(ids):
                    self._credit(sid, float(credit.step_credits[i]))
        return credit

    def update_group(self, group: Sequence[Trajectory]) -> GroupCredit:
        """`update_credits` from the group's `Trajectory` records."""
        task_ids = [sid for t in group if t.with_skill for sid in t.task_skill_ids]
        return self.update_credits([t.success for t in group], np.array([t.with_skill for t in group], bool),
                                   task_skill_ids=task_ids, step_skill_ids=[t.step_skill_ids for t in group])

    def evict(self, step: int) -> list[Skill]:
        """Evicts each pool down to `max_size` (after validation); returns the removed skills."""
        removed: list[Skill] = []
        for p in POOLS:
            kept, gone = evict(self.pools[p], step=step, max_size=self.max_size, min_age=self.min_age, c=self.c,
                               scale=self.evict_scale)
            if gone:
                self.pools[p] = kept
                self._keys[p] = [embed_text(s.when_to_apply, self.dim) for s in kept]
                removed += gone
        return removed

    def metrics(self) -> dict[str, float]:
        out = {}
        for p in POOLS:
            pool = self.pools[p]
            out[f"d2skill/{p}_pool_size"] = float(len(pool))
            out[f"d2skill/{p}_mean_utility"] = float(np.mean([s.utility for s in pool])) if pool else 0.0
            out[f"d2skill/{p}_mean_count"] = float(np.mean([s.count for s in pool])) if pool else 0.0
        return out

    _CONFIG = ("dim", "top_candidates", "top_k", "min_sim", "alpha", "c", "beta", "max_size", "min_age",
               "evict_scale", "next_id")

    def to_json(self) -> str:
        """The whole bank (knobs, counter, both pools) as a JSON string, for checkpoints."""
        data = {k: getattr(self, k) for k in self._CONFIG}
        data["pools"] = {p: [asdict(s) for s in self.pools[p]] for p in POOLS}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SkillBank:
        """Inverse of `to_json`."""
        data = json.loads(text)
        missing = [k for k in (*cls._CONFIG, "pools") if k not in data]
        if missing:
            raise ValueError(f"skill bank JSON is missing the keys {missing}")
        pools = {p: [Skill(**s) for s in data["pools"].get(p, [])] for p in POOLS}
        return cls(**{k: data[k] for k in cls._CONFIG}, pools=pools)


def reflect_step(bank: SkillBank, groups: Sequence[Sequence[Trajectory]], *, rng, step: int,
                 reflector: Reflector | None = None, max_reflections: int = 10,
                 max_success_rate: float = 0.5) -> list[Skill]:
    """One reflection round; returns the skills added.

    Groups with mean success <= `max_success_rate` that hold a failed (success < 1) skill-injected
    rollout are visited in a random order (at most `max_reflections`); one such rollout per group is
    drawn at random and reflected; its step and task skills are added (duplicates skipped).
    `rng`: an int seed or a numpy Generator.
    """
    rng = make_rng(rng)
    reflector = OracleReflector() if reflector is None else reflector
    candidates = []
    for group in groups:
        failed = [t for t in group if t.with_skill and t.success < 1.0]
        if group and failed and np.mean([t.success for t in group]) <= max_success_rate:
            candidates.append(failed)
    added: list[Skill] = []
    for gi in rng.permutation(len(candidates))[:max_reflections]:
        failed = candidates[gi]
        reflection = reflector.reflect(failed[int(rng.integers(len(failed)))])
        if reflection is None:
            continue
        for pool, fields in (("step", reflection.step_skill), ("task", reflection.task_skill)):
            skill = bank.add(pool, step=step, **fields)
            if skill is not None:
                added.append(skill)
    return added
