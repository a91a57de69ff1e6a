"""The RL step on a multi-turn environment (`data.task = "agent"`): episodes -> turn samples -> update.

`collect_agent_batch(setup, state)` replaces the single-turn rollout stage of `train/rl_step.py`:

1. the step's `rl.prompts_per_step` episodes `(task_id, seed)`, each replicated `rl.samples_per_prompt`
   times (a GRPO group = one house played n times);
2. `agents/rollout.py: run_episodes` steps them turn by turn through the sampler: every turn samples
   one `[E, agent.max_prompt_tokens]` batch (fixed shape: one compile for every turn of every step);
3. episode rewards: the env's final score minus `agent.invalid_penalty` per invalid turn (with
   `agent.invalid_credit="turn"` the penalty goes on the invalid turns' rows instead); the
   registered estimator turns them into per-episode advantages (SkillC's reads the skill flags);
4. each live turn is one row of the `RolloutBatch` carrying its episode's advantage
   (`agents/rollout.py: turn_advantages`, `agent.turn_credit`); the prompt
   (observation, history, skills) is outside the loss mask, only the action tokens train. Rows are
   padded to `E * agent.max_turns` (copies of row 0 with an empty loss mask), so the jitted update
   compiles once.

Skills (`train/agent_skills.py`): SkillC's curriculum flags and skill-free validation, D2Skill's
bank and Skill1's segments, with `play` / `TurnSampler` (the policy on the env) that this step
shares with them. SDAR (`rl.objective = "sdar"`, `rl.teacher.source = "privileged"`): the teacher is
the actor on `agents/prompt.py: privileged_prompt(skill text, turn prompt)` with the same response
tokens. MAP (`data.task_kwargs.context = "map"`): `map/explore_steps` is the explorer's mean env
steps. With Skill1 the update batch has `E * (agent.max_turns + 3)` rows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from typing import Any

import jax
import numpy as np

from jaxrl_llm.agents.prompt import privileged_prompt
from jaxrl_llm.agents.rollout import INVALID_CREDITS, REWARD_KINDS, TURN_CREDITS, AgentRollout, episode_returns, turn_advantages
from jaxrl_llm.rollout.sampler import FINISH_STOP
from jaxrl_llm.train.agent_skills import (_EPISODE_SEED_STRIDE, SKILL1_SEGMENT_ROWS, D2SkillPrompts,
                                          _curriculum_p_with, _episode_types, _restored_bank, _skill_blocks,
                                          d2skill_enabled, d2skill_update, play, skill1_enabled, skill1_play,
                                          skill1_rows, skillc_flags, skillc_validate)
from jaxrl_llm.train.rl_batch import response_to_token_axis
from jaxrl_llm.train.rl_rollout import (build_rollout_batch, concat_rollouts, estimate, privileged_teacher_outputs,
                                       select_rows)
from jaxrl_llm.train.proximal import proximal_logprobs
from jaxrl_llm.train.state import TrainState

RLSetup = Any  # train/rl.py: RLSetup

__all__ = ["AgentRuntime", "agent_rows", "collect_agent_batch", "evaluate_agent", "make_agent_runtime",
           "check_agent_config", "agent_extras"]

REWARDS = REWARD_KINDS


def max_turns(cfg: Any, task: Any) -> int:
    """`agent.max_turns`, or the env's own step limit when 0."""
    return int(cfg.agent.max_turns) or int(task.max_steps)



def agent_rows(cfg: Any, task: Any) -> int:
    """Rows of an agent update batch: episodes x turns (`prompts_per_step * samples_per_prompt * max_turns`);
    with Skill1 episodes x (max_turns + 3), room for its query, rerank and distil rows."""
    per_episode = max_turns(cfg, task) + (SKILL1_SEGMENT_ROWS if skill1_enabled(cfg) else 0)
    return int(cfg.rl.prompts_per_step) * int(cfg.rl.samples_per_prompt) * per_episode



def check_agent_config(cfg: Any, task: Any) -> None:
    """Fail before anything compiles on a bad `agent.*` field, naming it."""
    if "agent" not in cfg:
        raise ValueError("data.task='agent' needs an `agent` section (configs/agents_house_grpo.py has every field)")
    a = cfg.agent
    if int(a.max_turns) < 0:
        raise ValueError(f"agent.max_turns must be >= 0 (0: the env's max_steps); got {a.max_turns}")
    if int(a.max_prompt_tokens) < 8:
        raise ValueError(f"agent.max_prompt_tokens must be >= 8; got {a.max_prompt_tokens}")
    if a.reward not in REWARDS:
        raise ValueError(f"agent.reward must be one of {REWARDS}; got {a.reward!r}")
    if float(a.invalid_penalty) < 0:
        raise ValueError(f"agent.invalid_penalty must be >= 0; got {a.invalid_penalty}")
    if a.get("turn_credit", "turn") not in TURN_CREDITS:
        raise ValueError(f"agent.turn_credit must be one of {TURN_CREDITS}; got {a.get('turn_credit')!r}")
    if a.get("invalid_credit", "episode") not in INVALID_CREDITS:
        raise ValueError(f"agent.invalid_credit must be one of {INVALID_CREDITS}; got {a.get('invalid_credit')!r}")
    if not 0.0 <= float(a.eval_temperature):
        raise ValueError(f"agent.eval_temperature must be >= 0 (0: greedy); got {a.eval_temperature}")
    rl = cfg.rl
    if rl.critic.enabled or rl.advantage == "gae":
        raise ValueError("agent runs use outcome (per-episode) advantages: rl.critic.enabled and rl.advantage='gae' "
                         "are single-turn only")
    for field in ("dynamic_sampling.enabled", "step_labels.enabled", "hints.enabled"):
        section, key = field.split(".")
        if rl.get(section, {}).get(key, False):
            raise ValueError(f"rl.{field} is single-turn only; it cannot run with data.task='agent'")
    if rl.condition.source:
        raise ValueError("rl.condition.source is single-turn; agent runs set skill flags with agent.skillc.enabled")
    skillc = bool(a.skillc.enabled)
    if (rl.advantage == "skillc") != skillc:
        raise ValueError("agent.skillc.enabled and rl.advantage='skillc' go together (the estimator reads the skill "
                         f"flags the curriculum sets); got agent.skillc.enabled={skillc}, rl.advantage={rl.advantage!r}")
    needs_skills = skillc or rl.teacher.source == "privileged"
    if needs_skills and not a.skills:
        raise ValueError("agent.skills must name a skill library ('builtin' or a JSON file) for "
                         + ("agent.skillc.enabled" if skillc else "rl.teacher.source='privileged' (SDAR)"))
    if rl.teacher.source not in ("", "privileged") and not rl.teacher.source.startswith(("hf:", "orbax:")):
        raise ValueError(f"rl.teacher.source={rl.teacher.source!r} is not '', 'privileged', 'hf:PATH' or 'orbax:PATH'")
    if skillc:
        s = a.skillc
        if int(s.validate_every) < 1:
            raise ValueError(f"agent.skillc.validate_every must be >= 1; got {s.validate_every}")
        if int(s.val_episodes) < 1:
            raise ValueError(f"agent.skillc.val_episodes must be >= 1 (per task type); got {s.val_episodes}")
        if int(rl.samples_per_prompt) < 2:
            raise ValueError("agent.skillc.enabled pairs skill-injected and skill-free rollouts of a task: "
                             f"rl.samples_per_prompt must be >= 2; got {rl.samples_per_prompt}")
    if a.skills:
        skill_library(cfg, task)  # a missing or malformed file fails now
    if d2skill_enabled(cfg):
        d = a.d2skill
        if skillc:
            raise ValueError("agent.d2skill.enabled and agent.skillc.enabled both inject skills; choose one")
        if int(rl.samples_per_prompt) < 2:
            raise ValueError("agent.d2skill.enabled splits each group into skill / no-skill halves: "
                             f"rl.samples_per_prompt must be >= 2; got {rl.samples_per_prompt}")
        for name, lo, hi in (("alpha", 0.0, 1.0), ("beta", 0.0, 1.0), ("min_sim", -1.0, 1.0)):
            if not lo <= float(d[name]) <= hi:
                raise ValueError(f"agent.d2skill.{name} must be in [{lo}, {hi}]; got {d[name]}")
        for name in ("top_k", "max_size", "max_reflections"):
            if int(d[name]) < 1:
                raise ValueError(f"agent.d2skill.{name} must be >= 1; got {d[name]}")
    if skill1_enabled(cfg):
        s1 = a.skill1
        if skillc or d2skill_enabled(cfg):
            raise ValueError("agent.skill1.enabled picks its own skills; it cannot run with agent.skillc.enabled or "
                             "agent.d2skill.enabled")
        if rl.teacher.source == "privileged":
            raise ValueError("agent.skill1.enabled cannot run with rl.teacher.source='privileged' (SDAR's teacher "
                             "reads turn rows only)")
        if not getattr(task, "skill1", False):
            raise ValueError("agent.skill1.enabled needs data.task_kwargs.skill1=True: the warm-up records teach the "
                             "query / rerank / distil formats (and give the word tokenizer their words)")
        if int(rl.samples_per_prompt) < 2:
            raise ValueError("agent.skill1.enabled normalises each segment within its group: rl.samples_per_prompt "
                             f"must be >= 2; got {rl.samples_per_prompt}")
        for name in ("top_k", "top_candidates", "max_size"):
            if int(s1[name]) < 1:
                raise ValueError(f"agent.skill1.{name} must be >= 1; got {s1[name]}")
        for name, lo, hi in (("alpha", 0.0, 1.0), ("min_sim", -1.0, 1.0)):
            if not lo <= float(s1[name]) <= hi:
                raise ValueError(f"agent.skill1.{name} must be in [{lo}, {hi}]; got {s1[name]}")
        if not 0.0 < float(s1.rate) <= 1.0:
            raise ValueError(f"agent.skill1.rate must be in (0, 1]; got {s1.rate}")
        if float(s1.c) < 0:
            raise ValueError(f"agent.skill1.c (the UCB bonus) must be >= 0; got {s1.c}")



def skill_library(cfg: Any, task: Any) -> Any:
    """The configured skill library (`agent.skills`: 'builtin' = the env's built-in one, else a JSON file)."""
    from jaxrl_llm.agents.skills import skill_library_for  # noqa: PLC0415

    return skill_library_for(str(cfg.agent.skills), task.env_name)



def agent_extras(cfg: Any, task: Any) -> dict[str, np.ndarray]:
    """`TrainState.extras` of the SkillC curriculum (one entry per task type), when it is on."""
    if "agent" not in cfg or not bool(cfg.agent.skillc.enabled):
        return {}
    s = len(task.task_types)
    return {"skillc_dbar": np.zeros(s, np.float32), "skillc_patience": np.zeros(s, np.int32),
            "skillc_active": np.ones(s, bool), "skillc_ref": np.zeros((), np.float32),
            "skillc_lam": np.zeros((), np.float32), "skillc_p_with": np.full(s, 0.5, np.float32)}



@dataclasses.dataclass
class AgentRuntime:
    """Host-side pieces of an agent run: the batched env, the skill library, the eval episodes and
    D2Skill's bank (saved to `bank_path` after every step, so a resumed run continues it) or Skill1's
    (`skill1`, saved to `skill1_path`)."""

    env: Any
    library: Any
    eval_episodes: list
    turns: int
    bank: Any = None
    bank_path: str = ""
    skill1: Any = None
    skill1_path: str = ""



def make_agent_runtime(cfg: Any, task: Any) -> AgentRuntime:
    library = skill_library(cfg, task) if cfg.agent.skills else None
    n_eval = int(cfg.eval.num_problems)
    episodes = task.eval_episodes(n_eval, seed=int(cfg.seed)) if n_eval else []
    runtime = AgentRuntime(task.make_env(), library, episodes, max_turns(cfg, task))
    if d2skill_enabled(cfg):
        from jaxrl_llm.agents.skill_bank import SkillBank  # noqa: PLC0415

        d = cfg.agent.d2skill
        runtime.bank_path = os.path.join(cfg.output_dir, "skill_bank.json")
        runtime.bank = _restored_bank(cfg, runtime.bank_path, SkillBank.from_json, lambda: SkillBank(
            top_k=int(d.top_k), min_sim=float(d.min_sim), alpha=float(d.alpha), c=float(d.c), beta=float(d.beta),
            max_size=int(d.max_size), min_age=int(d.min_age)))
    if skill1_enabled(cfg):
        from jaxrl_llm.agents.skill1 import Skill1Bank  # noqa: PLC0415
        from jaxrl_llm.agents.skill_bank import SkillBank  # noqa: PLC0415

        s1 = cfg.agent.skill1
        runtime.skill1_path = os.path.join(cfg.output_dir, "skill1_bank.json")
        runtime.skill1 = _restored_bank(cfg, runtime.skill1_path, Skill1Bank.from_json, lambda: Skill1Bank(
            SkillBank(top_k=int(s1.top_k), top_candidates=int(s1.top_candidates), min_sim=float(s1.min_sim),
                      alpha=float(s1.alpha), c=float(s1.c), max_size=int(s1.max_size), min_age=int(s1.min_age)),
            rate=float(s1.rate)))
    return runtime



def turn_batch(setup: RLSetup, out: AgentRollout, turn_rollouts: list, rows_total: int) -> tuple[Any, np.ndarray]:
    """The `[rows_total, P + N]` rollout of the live turns (real rows first, then copies of row 0) and the
    `[rows_total]` bool mask of real rows."""
    return rows_batch(setup, out.payloads, turn_rollouts, rows_total)



def rows_batch(setup: RLSetup, payloads: list, turn_rollouts: list, rows_total: int) -> tuple[Any, np.ndarray]:
    """`turn_batch` of any sampled rows: `payloads` are `(call index, row)` into `turn_rollouts`."""
    real = len(payloads)
    if real > rows_total:
        raise ValueError(f"{real} turn samples exceed the update's {rows_total} rows (agent.max_turns too small)")
    pieces = [select_rows(turn_rollouts[t], np.array([i])) for t, i in payloads]
    # Every turn's prompt part is padded to agent.max_prompt_tokens: one update shape for every step.
    merged = concat_rollouts(pieces, setup.tokenizer.pad_id, width=int(setup.cfg.agent.max_prompt_tokens))
    index = np.concatenate([np.arange(real), np.zeros(rows_total - real, np.int64)])
    return select_rows(merged, index), np.arange(rows_total) < real



def collect_agent_batch(setup: RLSetup, state: TrainState) -> tuple[TrainState, Any, dict[str, float]]:
    """`(state, batch, metrics)`: the `RolloutBatch` of step `state.step` on the agent task and its metrics
    (module docstring); `state` carries the SkillC curriculum updated by this step's validation."""
    cfg, rl, task = setup.cfg, setup.cfg.rl, setup.task
    step = int(state.step)
    g, n = int(rl.prompts_per_step), int(rl.samples_per_prompt)
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    skillc = bool(cfg.agent.skillc.enabled)
    if skillc and step % int(cfg.agent.skillc.validate_every) == 0:
        state, val = skillc_validate(setup, state)
        metrics.update(val)
    groups = task.episodes(g, int(cfg.seed) * _EPISODE_SEED_STRIDE + step, "train")
    episodes = [ep for ep in groups for _ in range(n)]
    types = _episode_types(setup, episodes)
    injected = np.zeros(len(episodes), bool)
    lam = 0.0
    if skillc:
        p_with, lam = _curriculum_p_with(state, task)
        injected = skillc_flags(p_with, types, task.task_types, n)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    skills = _skill_blocks(setup.agent.library, types, injected) if injected.any() else None
    d2 = None
    if setup.agent.bank is not None:
        from jaxrl_llm.agents.skill_bank import skill_split  # noqa: PLC0415

        d2 = skills = D2SkillPrompts(setup.agent.bank, np.tile(skill_split(n), g))
    s1_eps = None
    if setup.agent.skill1 is not None:
        s1_eps, out, sampler = skill1_play(setup, state.params, episodes, key=key, temperature=float(rl.temperature),
                                           explore=True)
        turn_rollouts = sampler.rollouts
    else:
        out, turn_rollouts = play(setup, state.params, episodes, key=key, temperature=float(rl.temperature),
                                  skills=skills)
    if getattr(task, "context", "") == "map":
        metrics["map/explore_steps"] = float(np.mean([task.exploration(t, s).steps for t, s in groups]))
    rollout_s = time.perf_counter() - t0
    # agent.invalid_credit: the invalid penalty joins the episode's return ("episode") or only the rows
    # of the invalid turns, after the advantage ("turn"). `.get`: configs saved before the field existed.
    penalty = float(cfg.agent.invalid_penalty)
    penalty_on_turns = cfg.agent.get("invalid_credit", "episode") == "turn"
    returns = episode_returns(out, invalid_penalty=0.0 if penalty_on_turns else penalty, reward=str(cfg.agent.reward))
    if d2 is not None:
        success = out.won.astype(np.float32) if cfg.agent.reward == "won" else out.score
        intrinsic, d2_metrics = d2skill_update(setup, out, d2, success, step, n)
        returns = returns + intrinsic  # D2Skill's intrinsic reward kappa (s_i - b_g)
        metrics.update(d2_metrics)
        with_skill = d2.with_skill
        metrics["train/success_with_skills"] = float(out.won[with_skill].mean()) if with_skill.any() else 0.0
        metrics["train/success_without_skills"] = float(out.won[~with_skill].mean()) if (~with_skill).any() else 0.0
    group_of_episode = np.repeat(np.arange(g, dtype=np.int32), n)
    kwargs = dict(rl.advantage_kwargs)
    if skillc:
        kwargs["attribution"] = lam  # the curriculum's lambda_k scales the contrastive correction
    fields = {"rewards": returns, "group_ids": group_of_episode, "cond": injected.astype(np.int32) if skillc else None}
    ep_adv, _, adv_metrics = estimate(rl.advantage, fields, g, **kwargs)
    if ep_adv.ndim != 1:
        raise ValueError(f"rl.advantage={rl.advantage!r} gives per-token advantages; agent runs need one per episode")
    rows_total = agent_rows(cfg, task)
    # Row i: payload (sampler call, row), its episode, reward and advantage; padding rows copy row 0.
    payloads, row_ep = list(out.payloads), np.asarray(out.episode, np.int32)
    row_adv = turn_advantages(ep_adv, row_ep, credit=str(cfg.agent.get("turn_credit", "turn")),
                              invalid=out.invalid if penalty_on_turns else None, invalid_penalty=penalty)
    row_reward = returns[row_ep]
    if s1_eps is not None:
        payloads, row_ep, row_reward, row_adv = skill1_rows(setup, s1_eps, out, returns, step, kwargs, metrics,
                                                            (payloads, row_ep, row_reward, row_adv))
    rollout, real = rows_batch(setup, payloads, turn_rollouts, rows_total)
    pad = rows_total - len(payloads)
    ep = np.concatenate([row_ep, np.zeros(pad, np.int32)]).astype(np.int32)
    batch = build_rollout_batch(rollout, np.concatenate([row_reward, np.full(pad, row_reward[0])]),
                                group_of_episode[ep], np.concatenate([row_adv, np.zeros(pad)]),
                                pad_id=setup.tokenizer.pad_id)
    batch = batch.replace(loss_mask=np.where(real[:, None], batch.loss_mask, 0.0).astype(np.float32))
    if skillc:
        batch = batch.replace(cond=injected[ep].astype(np.int32))
    arrays = (batch.tokens, batch.positions, batch.segment_ids)
    mask = batch.loss_mask
    # rl.proximal_pass = "auto": the sampler's log-probs when exact (train/proximal.py); turns sample at rl.temperature
    old, mismatch, skipped = proximal_logprobs(setup, state.params, arrays, batch,
                                               sampling_temperature=float(rl.temperature))
    batch = batch.replace(old_logprobs=np.asarray(old) * mask)
    if setup.ref_params is not None:
        ref, _ = setup.logprob_fn(setup.ref_params, setup.rest, *arrays)
        batch = batch.replace(ref_logprobs=np.asarray(ref) * mask)
    if setup.teacher is not None:
        out_t = setup.teacher.pass_fn(setup.teacher.params, setup.teacher.rest, *arrays)
        batch = batch.replace(teacher_logprobs=np.asarray(out_t["logp"]) * mask)
    elif setup.teacher_fn is not None:
        batch = batch.replace(**agent_teacher_fields(setup, state, out, rollout, ep, mask))
    metrics.update(agent_metrics(out, returns, rollout, real, task.task_types))
    metrics.update({
        "reward/mean": float(returns.mean()), "reward/std": float(returns.std()),
        "accuracy": float(out.won.mean()),
        "reward/mixed_groups": float(np.mean(returns.reshape(g, n).max(1) > returns.reshape(g, n).min(1))),
        "rollout/mismatch_abs_logp": mismatch, "rollout/proximal_skipped": float(skipped),
        "rollout/time_s": rollout_s,
        **{f"advantage/{k}": v for k, v in adv_metrics.items()},
    })
    metrics["rollout/tokens_per_s"] = metrics["rollout/tokens"] / max(rollout_s, 1e-9)
    if skillc:
        metrics["skillc/injected_frac"] = float(injected.mean())
        metrics["train/success_with_skills"] = float(out.won[injected].mean()) if injected.any() else 0.0
        metrics["train/success_without_skills"] = float(out.won[~injected].mean()) if (~injected).any() else 0.0
    return state, batch, metrics



def agent_teacher_fields(setup: RLSetup, state: TrainState, out: AgentRollout, rollout: Any, ep: np.ndarray,
                         mask: np.ndarray) -> dict[str, np.ndarray]:
    """SDAR's `teacher_logprobs [R, T]`: the actor at rollout parameters on each turn prompt behind the
    privileged skill block of its episode's task type, response tokens unchanged (`agents-analysis.md` s.3)."""
    lib = setup.agent.library
    include_all = bool(setup.cfg.agent.sdar.skill_all)
    prompts = out.prompts + [out.prompts[0]] * (len(ep) - len(out.prompts))
    texts = [privileged_prompt(lib.text_for(out.task_type[e], include_all=include_all), p)
             for e, p in zip(ep, prompts)]
    bucket = int(setup.cfg.rl.teacher.max_prompt_tokens) or int(setup.cfg.agent.max_prompt_tokens)
    response = privileged_teacher_outputs(setup.teacher_fn, state.params, setup.rest, setup.tokenizer, texts, rollout,
                                          max_prompt_tokens=int(setup.cfg.rl.teacher.max_prompt_tokens), bucket=bucket)
    fields = {"teacher_logprobs": response_to_token_axis(response["logp"], rollout.prompt_width, mask)}
    if "topk_idx" in response:
        fields["teacher_topk_idx"] = response_to_token_axis(response["topk_idx"], rollout.prompt_width, mask)
        fields["teacher_topk_logp"] = response_to_token_axis(response["topk_logp"], rollout.prompt_width, mask)
    return fields



def agent_metrics(out: AgentRollout, returns: np.ndarray, rollout: Any, real: np.ndarray, task_types: tuple,
                  prefix: str = "") -> dict[str, float]:
    """Success (overall and per task type), turns per episode, invalid-action rate, response lengths."""
    lengths = np.asarray(rollout.lengths)[real] if rollout is not None else np.zeros(0)
    finished = (np.asarray(rollout.finish_reasons)[real] == FINISH_STOP) if rollout is not None else np.zeros(0)
    m = {f"{prefix}success": float(out.won.mean()), f"{prefix}score": float(out.score.mean()),
         f"{prefix}turns_per_episode": float(out.num_turns.mean()),
         f"{prefix}invalid_rate": float(out.invalid.mean()) if len(out.invalid) else 0.0,
         f"{prefix}cut_episodes": float(out.cut.mean())}
    by_type: dict[str, list] = defaultdict(list)
    for t, w in zip(out.task_type, out.won):
        by_type[t].append(float(w))
    m.update({f"{prefix}success/{t}": float(np.mean(v)) for t, v in sorted(by_type.items())})
    if not prefix:
        m.update({"response_length": float(lengths.mean()) if len(lengths) else 0.0,
                  "rollout/tokens": float(lengths.sum()), "rollout/turn_samples": float(real.sum()),
                  "rollout/truncated": float(1.0 - finished.mean()) if len(finished) else 0.0,
                  "agent/prompt_truncated": float(getattr(out, "prompt_truncated", 0)) / max(len(out.prompts), 1)})
    return m



def evaluate_agent(setup: RLSetup, params: Any) -> dict[str, float]:
    """Held-out episodes without skills: `eval/accuracy` = success at `agent.eval_temperature`,
    `eval/greedy_accuracy` = greedy success, plus per-type success, turns and invalid rate; with a skill
    library also `eval/success_with_skills` (greedy)."""
    cfg = setup.cfg
    episodes = setup.agent.eval_episodes
    key = jax.random.key(int(cfg.seed) + 29)
    greedy, _ = play(setup, params, episodes, key=key, temperature=0.0)
    out = {"eval/greedy_accuracy": float(greedy.won.mean()),
           **agent_metrics(greedy, np.zeros(0), None, np.zeros(0, bool), setup.task.task_types, prefix="eval/greedy_")}
    temp = float(cfg.agent.eval_temperature)
    if temp > 0:
        sampled, _ = play(setup, params, episodes, key=key, temperature=temp)
        out.update(agent_metrics(sampled, np.zeros(0), None, np.zeros(0, bool), setup.task.task_types, prefix="eval/"))
        out["eval/accuracy"] = out["eval/success"]
    else:
        out["eval/accuracy"] = out["eval/greedy_accuracy"]
    if setup.agent.library is not None and bool(cfg.agent.skillc.enabled):
        types = _episode_types(setup, episodes)
        with_skills, _ = play(setup, params, episodes, key=key, temperature=0.0,
                              skills=_skill_blocks(setup.agent.library, types, np.ones(len(episodes), bool)))
        out["eval/success_with_skills"] = float(with_skills.won.mean())
    if setup.agent.skill1 is not None:
        # Skill1's validation: the four segments, greedy retrieval (no UCB bonus) and decoding; no bank update.
        from jaxrl_llm.agents.skill1 import selection_accuracy  # noqa: PLC0415

        eps, s1_out, _ = skill1_play(setup, params, episodes, key=key, temperature=0.0, explore=False)
        out["eval/success_with_skills"] = float(s1_out.won.mean())
        out["eval/skill1_selection_accuracy"] = selection_accuracy(eps, s1_out.task_type)
    if setup.agent.bank is not None:
        # D2Skill's validation: every episode with the bank's skills (greedy); the bank is not updated.
        with_bank, _ = play(setup, params, episodes, key=key, temperature=0.0,
                            skills=D2SkillPrompts(setup.agent.bank, np.ones(len(episodes), bool)))
        out["eval/success_with_skills"] = float(with_bank.won.mean())
    return out
