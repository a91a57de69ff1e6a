"""The skill methods' trainer side on the agent task, and the turn loop they share with the step.

`train/agent_step.py` runs the step (episodes -> turn rows -> `RolloutBatch`); this module holds what
the skill methods add to it. The math lives elsewhere: skill libraries in `agents/skills.py`, the
SkillC curriculum in `objectives/skillc.py`, D2Skill's bank in `agents/skill_bank.py`, Skill1's
segments and credits in `agents/skill1.py`.

`play` plays episodes with the policy through a `TurnSampler` (one `[E, agent.max_prompt_tokens]`
batch per call); the step, its evaluation and every skill method below play through it.

SkillC: with `agent.skillc.enabled`, the first `n_with` episodes of each group see their task type's
skill text (`agents/skills.py`), `n_with` from the SkillC curriculum (`objectives/skillc.py`),
whose state lives in `TrainState.extras` and is updated from a with / without-skills validation
every `agent.skillc.validate_every` steps.

D2Skill (`agent.d2skill.enabled`, `agents/skill_bank.py`): the skill part of each group
(`skill_split`) plays with the bank's retrieved skills (`D2SkillPrompts`); after the episodes
`d2skill_update` credits what each episode was shown, reflects on failed skill-injected episodes,
evicts at evaluation steps, saves the bank and returns the intrinsic rewards `kappa (s_i - b_g)`.

MAP (`data.task_kwargs.context = "map"`): `play` puts each episode's house map
(`AgentTask.context_block`) first in every turn's skill block, before any other skill block (joined by
a newline), in training and evaluation alike.
Skill1 (`agent.skill1.enabled`, `agents/skill1.py`): each episode adds a query, a rerank (with >= 2
candidates) and a distil row to its turn rows, each segment GRPO-normalised within its group; the
update batch has `E * (agent.max_turns + 3)` rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.agents.rollout import AgentRollout, run_episodes
from jaxrl_llm.parallel.distributed import is_primary_process
from jaxrl_llm.train.rl_rollout import decode_responses, encode_texts, estimate, sample_responses
from jaxrl_llm.train.state import TrainState

RLSetup = Any  # train/rl.py: RLSetup

__all__ = ["D2SkillPrompts", "SKILL1_SEGMENT_ROWS", "SKILLC_KEYS", "TurnSampler", "d2skill_enabled", "d2skill_update",
           "play", "skill1_enabled", "skill1_play", "skill1_rows", "skillc_flags", "skillc_validate", "with_context"]

SKILLC_KEYS = ("skillc_dbar", "skillc_patience", "skillc_active", "skillc_ref", "skillc_lam", "skillc_p_with")
_EPISODE_SEED_STRIDE = 1_000_003  # step seeds `seed * stride + step`: the step's episodes, D2Skill's reflector
SKILL1_SEGMENT_ROWS = 3  # Skill1's query, rerank and distil rows per episode


def _episode_types(setup: RLSetup, episodes: list) -> list[str]:
    types = setup.task.task_types
    return [types[t % len(types)] for t, _ in episodes]



class TurnSampler:
    """The policy as `run_episodes`' `act`: every call samples one `[E, agent.max_prompt_tokens]` batch
    (fixed shape: one compile for every call), with the key folded by the call's index, and keeps its
    `Rollout` in `rollouts`; row i's payload is `(call index, i)`. Prompts longer than the width keep
    their end (the current observation and actions); `truncated` counts them."""

    def __init__(self, setup: RLSetup, params: Any, *, key: jax.Array, temperature: float):
        self.setup, self.params, self.key = setup, params, key
        self.width = int(setup.cfg.agent.max_prompt_tokens)
        self.sampling = dataclasses.replace(setup.sampling, n=1, temperature=float(temperature),
                                            prompt_bucket=self.width)
        self.rollouts: list = []
        self.truncated = 0

    def __call__(self, prompts: list[str], turn: int = 0) -> tuple[list[str], list]:
        setup = self.setup
        ids = encode_texts(setup.tokenizer, prompts)
        self.truncated += sum(len(x) > self.width for x in ids)
        ids = [x[-self.width:] for x in ids]
        call = len(self.rollouts)
        rollout = sample_responses(setup.parts, self.params, setup.rest, ids, key=jax.random.fold_in(self.key, call),
                                   config=self.sampling, quant_format=setup.cfg.rl.rollout_quant, mesh=setup.mesh)
        self.rollouts.append(rollout)
        return decode_responses(setup.tokenizer, rollout), [(call, i) for i in range(len(prompts))]



def with_context(task: Any, episodes: list, skills: Any) -> Any:
    """A `run_episodes` skill function: each episode's context block (`AgentTask.context_block`, MAP's
    house map) first, then `skills`' block, joined by a newline; `skills` unchanged without a context."""
    if not getattr(task, "context", ""):
        return skills
    blocks = [task.context_block(t, s) for t, s in episodes]

    def composed(i: int, goal: str, obs: str, turn: int) -> str:
        extra = skills(i, goal, obs, turn) if skills is not None else ""
        return "\n".join(b for b in (blocks[i], extra) if b)
    return composed



def play(setup: RLSetup, params: Any, episodes: list, *, key: jax.Array, temperature: float,
         skills: Any = None, sampler: TurnSampler | None = None) -> tuple[AgentRollout, list]:
    """Plays `episodes` with the policy `params` (one sampled batch of `E` rows per turn), each turn's
    skill block behind the episode's context block (`with_context`).

    `sampler`: a `TurnSampler` to share with other generations (Skill1's segments); a fresh one by
    default, whose call index is the turn. Returns the `AgentRollout` (each live turn's payload is
    `(call index, row)`) and the sampler's `Rollout`s.
    """
    sampler = sampler if sampler is not None else TurnSampler(setup, params, key=key, temperature=temperature)
    before = sampler.truncated
    out = run_episodes(setup.agent.env, setup.task.builder, episodes, act=sampler, max_turns=setup.agent.turns,
                       skills=with_context(setup.task, episodes, skills))
    out.prompt_truncated = sampler.truncated - before
    return out, sampler.rollouts



def _skill_blocks(library: Any, task_types: list[str], injected: np.ndarray):
    """A `run_episodes` skill function: episode i sees its task type's skill text when `injected[i]`."""
    def skills(i: int, goal: str, obs: str, turn: int) -> str:
        return library.text_for(task_types[i]) if injected[i] else ""
    return skills



def _curriculum_p_with(state: TrainState, task: Any) -> tuple[np.ndarray, float]:
    return np.asarray(state.extras["skillc_p_with"]), float(state.extras["skillc_lam"])



def skillc_flags(p_with: np.ndarray, task_types: list[str], all_types: tuple, n: int) -> np.ndarray:
    """`[E]` bool: within each group of `n` episodes, the first `n_with(type)` see skills (SkillC allocation)."""
    from jaxrl_llm.objectives.skillc import skillc_allocation  # noqa: PLC0415

    n_with = np.asarray(skillc_allocation(jnp.asarray(p_with), n))
    flags = np.zeros(len(task_types), bool)
    for g in range(len(task_types) // n):
        k = int(n_with[all_types.index(task_types[g * n])])
        flags[g * n:g * n + k] = True
    return flags



def skillc_validate(setup: RLSetup, state: TrainState) -> tuple[TrainState, dict[str, float]]:
    """SkillC's validation: success with and without skills per task type on held-out episodes, then one
    curriculum update (`objectives/skillc.py`) written into `state.extras`."""
    from jaxrl_llm.objectives.skillc import SkillCCurriculum, skillc_curriculum_update  # noqa: PLC0415

    cfg, task = setup.cfg, setup.task
    s = cfg.agent.skillc
    types = task.task_types
    per_type = int(s.val_episodes)
    episodes = [ep for t in range(len(types)) for ep in _typed_eval_episodes(task, t, per_type, int(cfg.seed))]
    ep_types = _episode_types(setup, episodes)
    key = jax.random.fold_in(jax.random.key(int(cfg.seed) + 17), int(state.step))
    temp = float(cfg.agent.eval_temperature)
    with_out, _ = play(setup, state.params, episodes, key=key, temperature=temp,
                       skills=_skill_blocks(setup.agent.library, ep_types, np.ones(len(episodes), bool)))
    free_out, _ = play(setup, state.params, episodes, key=key, temperature=temp)
    sr_with = np.array([with_out.won[[i for i, t in enumerate(ep_types) if t == ty]].mean() for ty in types])
    sr_free = np.array([free_out.won[[i for i, t in enumerate(ep_types) if t == ty]].mean() for ty in types])
    ex = state.extras
    cur = SkillCCurriculum(*(jnp.asarray(ex[k]) for k in SKILLC_KEYS[:4]))
    cur, lam, p_with = skillc_curriculum_update(cur, jnp.asarray(sr_with - sr_free, jnp.float32),
                                                alpha=float(s.alpha), patience=int(s.patience), lam=float(s.lam),
                                                p_min=float(s.p_min), eps_ret=float(s.eps_ret))
    values = dict(zip(SKILLC_KEYS, (*cur, lam, p_with)))
    extras = dict(ex)
    for k, v in values.items():
        extras[k] = jax.device_put(jnp.asarray(v, ex[k].dtype), ex[k].sharding)
    metrics = {"skillc/sr_with": float(sr_with.mean()), "skillc/sr_without": float(sr_free.mean()),
               "skillc/active": float(np.asarray(cur.active).sum()), "skillc/lam": float(lam)}
    metrics.update({f"skillc/p_with/{t}": float(v) for t, v in zip(types, np.asarray(p_with))})
    metrics.update({f"skillc/gap/{t}": float(v) for t, v in zip(types, sr_with - sr_free)})
    return state.replace(extras=extras), metrics



def _typed_eval_episodes(task: Any, type_index: int, n: int, seed: int) -> list:
    """`n` held-out episodes of one task type (deterministic)."""
    out: list = []
    pool = task.eval_episodes(max(4 * n * len(task.task_types), 32), seed=seed)
    for ep in pool:
        if ep[0] % len(task.task_types) == type_index:
            out.append(ep)
        if len(out) == n:
            break
    return out



def d2skill_enabled(cfg: Any) -> bool:
    return "d2skill" in cfg.agent and bool(cfg.agent.d2skill.enabled)



def _restored_bank(cfg: Any, path: str, from_json: Any, make: Any) -> Any:
    """The bank a resumed run saved at `path` (`_save_bank`), else a fresh one from `make()`."""
    if bool(cfg.checkpoint.resume) and os.path.exists(path):
        with open(path) as f:
            return from_json(json.load(f)["bank"])
    return make()



def _save_bank(path: str, step: int, bank_json: str) -> None:
    """`{"step": step + 1, "bank": bank_json}` to `path`, atomically (never a half-written bank on a crash)."""
    if is_primary_process():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step + 1, "bank": bank_json}, f)
        os.replace(path + ".tmp", path)



class D2SkillPrompts:
    """D2Skill's skill blocks for `run_episodes`: for the episodes with `with_skill`, the task skills
    retrieved once with the goal and the step skills retrieved each turn with goal + observation,
    rendered as the bank's "Task-level / Step-level experience" sections; the ids shown are recorded."""

    def __init__(self, bank: Any, with_skill: np.ndarray):
        self.bank, self.with_skill = bank, np.asarray(with_skill, bool)
        e = len(self.with_skill)
        self.task_skills: list[list] = [[] for _ in range(e)]
        self.step_ids: list[dict] = [{} for _ in range(e)]

    def __call__(self, i: int, goal: str, obs: str, turn: int) -> str:
        if not self.with_skill[i]:
            return ""
        if turn == 0:
            self.task_skills[i] = self.bank.retrieve_task(goal)
        steps = self.bank.retrieve_step(goal, obs)
        self.step_ids[i].update({sk.id: None for sk in steps})
        return self.bank.render(self.task_skills[i], steps)



def d2skill_update(setup: RLSetup, out: AgentRollout, prompts: D2SkillPrompts, success: np.ndarray, step: int,
                   n: int) -> tuple[np.ndarray, dict[str, float]]:
    """After a step's episodes: credit the skills shown (utility EMA), reflect on failed skill-injected
    episodes (the oracle reflector), evict at evaluation steps and save the bank. Returns the intrinsic
    rewards `kappa (s_i - b_g)` `[E]` and the bank's metrics."""
    from jaxrl_llm.agents.skill_bank import Trajectory, intrinsic_rewards, reflect_step  # noqa: PLC0415
    from jaxrl_llm.agents.prompt import Turn  # noqa: PLC0415

    cfg, bank = setup.cfg, setup.agent.bank
    d = cfg.agent.d2skill
    trajs = [Trajectory(out.goal[i], out.task_type[i],
                        tuple(Turn(t["observation"], t["action"], t["oracle_action"]) for t in out.trajectories[i]),
                        success=float(success[i]), with_skill=bool(prompts.with_skill[i]),
                        task_skill_ids=tuple(sk.id for sk in prompts.task_skills[i]),
                        step_skill_ids=tuple(prompts.step_ids[i])) for i in range(len(success))]
    groups = [trajs[g * n:(g + 1) * n] for g in range(len(trajs) // n)]
    intrinsic = np.zeros(len(success), np.float32)
    for g, group in enumerate(groups):
        credit = bank.update_group(group)
        intrinsic[g * n:(g + 1) * n] = intrinsic_rewards(success[g * n:(g + 1) * n], credit.baseline,
                                                         kappa=float(d.kappa))
    added = reflect_step(bank, groups, rng=int(cfg.seed) * _EPISODE_SEED_STRIDE + step, step=step,
                         max_reflections=int(d.max_reflections))
    evicted = bank.evict(step) if int(cfg.eval.every) and step % int(cfg.eval.every) == 0 else []
    _save_bank(setup.agent.bank_path, step, bank.to_json())
    metrics = {**bank.metrics(), "d2skill/added": float(len(added)), "d2skill/evicted": float(len(evicted)),
               "d2skill/injected_frac": float(np.mean([bool(b) for b in out.skill_injected])) if len(out.skill_injected)
               else 0.0}
    return intrinsic, metrics



def skill1_enabled(cfg: Any) -> bool:
    return "skill1" in cfg.agent and bool(cfg.agent.skill1.enabled)



def skill1_play(setup: RLSetup, params: Any, episodes: list, *, key: jax.Array, temperature: float,
                explore: bool) -> tuple[Any, AgentRollout, TurnSampler]:
    """Skill1's segments on `episodes` (`agents/skill1.py`): query, retrieval from `setup.agent.skill1`
    (its UCB bonus when `explore`), rerank (episodes with >= 2 candidates), solve with the picked skill
    as the skill block, distil. One `TurnSampler` generates all of them. Returns
    `(Skill1Episodes, AgentRollout of the solve turns, sampler)`; the bank is not changed."""
    from jaxrl_llm.agents import skill1 as s1  # noqa: PLC0415

    bank = setup.agent.skill1
    sampler = TurnSampler(setup, params, key=key, temperature=temperature)
    _, infos = setup.agent.env.reset([t for t, _ in episodes], [s for _, s in episodes])
    goals = [str(info["goal"]) for info in infos]
    texts, query_payloads = sampler([s1.query_prompt(g) for g in goals])
    queries = [s1.parse_query(t) for t in texts]
    cands = [bank.candidates(q, explore=explore) for q in queries]
    reranked = np.array([len(c) >= 2 for c in cands], bool)
    picks: list = [0 if c else None for c in cands]  # a lone candidate is used as it is
    valid = np.zeros(len(episodes), bool)
    rerank_payloads: list = [None] * len(episodes)
    if reranked.any():
        prompts = [s1.rerank_prompt(g, c) if r else s1.query_prompt(g) for g, c, r in zip(goals, cands, reranked)]
        texts, payloads = sampler(prompts)  # all E rows (fixed shape); only the reranked ones are kept
        for i in np.flatnonzero(reranked):
            pick = s1.parse_pick(texts[i], len(cands[i]))
            valid[i], picks[i], rerank_payloads[i] = pick is not None, 0 if pick is None else pick, payloads[i]
    blocks = [s1.skill_block(c[p] if p is not None else None) for c, p in zip(cands, picks)]
    out, _ = play(setup, params, episodes, key=key, temperature=temperature,
                  skills=lambda i, goal, obs, turn: blocks[i], sampler=sampler)
    actions = [[t["action"] for t in traj] for traj in out.trajectories]
    texts, distil_payloads = sampler([s1.distil_prompt(g, a, bool(w)) for g, a, w in zip(out.goal, actions, out.won)])
    eps = s1.Skill1Episodes(goals, queries, cands, picks, reranked, valid, [s1.parse_skill(t) for t in texts],
                            {"query": query_payloads, "select": rerank_payloads, "distill": distil_payloads})
    return eps, out, sampler



def skill1_rows(setup: RLSetup, eps: Any, out: AgentRollout, returns: np.ndarray, step: int, adv_kwargs: dict,
                metrics: dict, rows: tuple) -> tuple:
    """Skill1 after a step's episodes: credits and bank updates (`agents/skill1.py: skill1_update`), eviction,
    the saved bank, and the query / rerank / distil rows appended to the turn `rows` = `(payloads [R],
    episode [R], reward [R], advantage [R])`, each segment GRPO-normalised within its groups (`rl.advantage`
    on the segment's rewards; a group with < 2 of a segment's rows gives none)."""
    from jaxrl_llm.agents.skill1 import full_groups, skill1_update  # noqa: PLC0415

    cfg, bank = setup.cfg, setup.agent.skill1
    s1 = cfg.agent.skill1
    n = int(cfg.rl.samples_per_prompt)
    seg = skill1_update(bank, eps, out.won.astype(np.float32), returns, out.task_type, step=step,
                        lambda_rerank=float(s1.lambda_rerank), lambda_distill=float(s1.lambda_distill),
                        add_failed=bool(s1.add_failed))
    evicted = bank.evict(step)
    _save_bank(setup.agent.skill1_path, step, bank.to_json())
    payloads, row_ep, row_reward, row_adv = rows
    payloads, parts = list(payloads), [(row_ep, row_reward, row_adv)]
    for name in ("query", "select", "distill"):
        idx, gid, num = full_groups(seg.present[name], n)
        if len(idx):
            adv, _, _ = estimate(cfg.rl.advantage, {"rewards": seg.rewards[name][idx], "group_ids": gid}, num,
                                 **adv_kwargs)
            payloads += [eps.payloads[name][i] for i in idx]
            parts.append((idx.astype(np.int32), seg.rewards[name][idx], adv))
        metrics[f"skill1/{name}_rows"] = float(len(idx))
    metrics.update({**seg.metrics, "skill1/evicted": float(len(evicted))})
    return (payloads, *(np.concatenate([p[k] for p in parts]) for k in range(3)))
