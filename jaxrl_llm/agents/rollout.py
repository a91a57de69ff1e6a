"""The turn-level rollout loop: a batch of episodes stepped through a policy, turn by turn.

`run_episodes` is plain host logic: it renders each live episode's turn prompt (`PromptBuilder`),
asks `act(prompts, turn)` for one response per episode, extracts the action, steps the batched
environment and records every (episode, turn) that was live. The policy is any function of prompt
texts, so the same loop serves the sampler (the trainer passes one that samples a fixed-shape batch
of `E` rows per turn: one compile for every turn of every step), a scripted oracle in tests, and
evaluation.

Each live turn is one training sample: `AgentRollout.payloads[r]` is what `act` returned for it
(e.g. the sampler's row), `episode[r]` / `turn[r]` locate it, and it carries its episode's
advantage. Finished episodes still occupy their row of the batch (their prompt is repeated and
their response ignored), so the batch shape never changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.agents.prompt import PromptBuilder, Turn
from jaxrl_llm.envs.text_env import extract_action

__all__ = ["AgentRollout", "run_episodes", "episode_returns", "turn_advantages", "NO_ACTION", "TURN_CREDITS", "INVALID_CREDITS"]

NO_ACTION = "(no action)"  # what the history shows for a turn whose response held no action
REWARD_KINDS = ("score", "won", "return")  # what an episode's reward is made of (episode_returns)

# act(prompts [E] str, turn) -> (responses [E] str, payloads [E]): one response per episode.
ActFn = Callable[[list[str], int], tuple[list[str], Sequence[Any]]]
# skills(episode index, goal, observation, turn) -> the skill block of that turn ("" for none).
SkillFn = Callable[[int, str, str, int], str]


@dataclasses.dataclass
class AgentRollout:
    """The turns of `E` episodes. Per live turn `r` (R rows, in turn-major order):

    prompts: [R] prompt texts; responses: [R] response texts; actions: [R] the extracted action
      ("" when unparsable); episode: [R] int episode index; turn: [R] int; invalid: [R] bool (the
      env rejected the action); skill_injected: [R] bool (the prompt had a skill block);
      payloads: [R] what `act` returned for the row.
    Per episode (E): won [E] bool, score [E] float (the env's final score), env_return [E] float
      (sum of env rewards), num_turns [E] int, invalid_turns [E] int, cut [E] bool (stopped by
      `max_turns` before the env was done), task_type / goal [E] str, trajectories [E]: per turn a
      dict(observation, action, oracle_action, invalid).
    """

    prompts: list[str]
    responses: list[str]
    actions: list[str]
    episode: np.ndarray
    turn: np.ndarray
    invalid: np.ndarray
    skill_injected: np.ndarray
    payloads: list[Any]
    won: np.ndarray
    score: np.ndarray
    env_return: np.ndarray
    num_turns: np.ndarray
    invalid_turns: np.ndarray
    cut: np.ndarray
    task_type: list[str]
    goal: list[str]
    trajectories: list[list[dict[str, Any]]]

    @property
    def num_episodes(self) -> int:
        return len(self.won)


def run_episodes(env: Any, builder: PromptBuilder, episodes: Sequence[tuple[int, int]], *, act: ActFn,
                 max_turns: int, skills: SkillFn | None = None) -> AgentRollout:
    """Steps `E = len(episodes)` episodes `(task_id, seed)` of the batched `env` through `act`.

    Episodes end when the env says done or after `max_turns` turns (`cut`). A finished episode's row
    is still sent to `act` (its last prompt again) to keep the batch shape; its response is dropped.
    """
    if max_turns < 1:
        raise ValueError(f"agent max_turns must be >= 1; got {max_turns}")
    e = len(episodes)
    obs, infos = env.reset([t for t, _ in episodes], [s for _, s in episodes])
    goals = [str(info["goal"]) for info in infos]
    task_types = [str(info["task_type"]) for info in infos]
    history: list[list[Turn]] = [[] for _ in range(e)]
    trajectories: list[list[dict[str, Any]]] = [[] for _ in range(e)]
    done = np.zeros(e, bool)
    won, score = np.zeros(e, bool), np.zeros(e, np.float32)
    env_return = np.zeros(e, np.float32)
    num_turns, invalid_turns = np.zeros(e, np.int32), np.zeros(e, np.int32)
    rows: dict[str, list] = {k: [] for k in ("prompts", "responses", "actions", "episode", "turn", "invalid",
                                             "skill_injected", "payloads")}
    last_prompt = [""] * e
    for turn in range(max_turns):
        if done.all():
            break
        prompts, injected = [], []
        for i in range(e):
            if done[i]:
                prompts.append(last_prompt[i])
                injected.append(False)
                continue
            block = skills(i, goals[i], obs[i], turn) if skills is not None else ""
            last_prompt[i] = builder.render(goals[i], obs[i], history=history[i],
                                            admissible=infos[i]["admissible_actions"], skill_block=block)
            prompts.append(last_prompt[i])
            injected.append(bool(block))
        responses, payloads = act(prompts, turn)
        if len(responses) != e or len(payloads) != e:
            raise ValueError(f"act must return {e} responses and payloads (one per episode); got "
                             f"{len(responses)} and {len(payloads)}")
        live = ~done
        # U+FFFD marks ids outside the tokenizer (decode_responses): never part of an action or of the history.
        actions = [(extract_action(r.replace("\ufffd", "")) or "") if live[i] else "" for i, r in enumerate(responses)]
        oracle = [infos[i].get("oracle_action") for i in range(e)]
        new_obs, reward, new_done, new_infos = env.step(actions)
        for i in np.flatnonzero(live):
            bad = bool(new_infos[i].get("invalid", False))
            for key, value in (("prompts", prompts[i]), ("responses", responses[i]), ("actions", actions[i]),
                               ("episode", i), ("turn", turn), ("invalid", bad), ("skill_injected", injected[i]),
                               ("payloads", payloads[i])):
                rows[key].append(value)
            trajectories[i].append({"observation": obs[i], "action": actions[i], "oracle_action": oracle[i],
                                    "invalid": bad})
            history[i].append(Turn(obs[i], actions[i] or NO_ACTION))
            env_return[i] += float(reward[i])
            num_turns[i] += 1
            invalid_turns[i] += int(bad)
            if new_done[i]:
                done[i] = True
                won[i] = bool(new_infos[i].get("won", False))
                score[i] = float(new_infos[i].get("score", float(won[i])))
        obs, infos = list(new_obs), list(new_infos)
    return AgentRollout(
        prompts=rows["prompts"], responses=rows["responses"], actions=rows["actions"],
        episode=np.asarray(rows["episode"], np.int32), turn=np.asarray(rows["turn"], np.int32),
        invalid=np.asarray(rows["invalid"], bool), skill_injected=np.asarray(rows["skill_injected"], bool),
        payloads=rows["payloads"], won=won, score=score, env_return=env_return, num_turns=num_turns,
        invalid_turns=invalid_turns, cut=~done, task_type=task_types, goal=goals, trajectories=trajectories)


TURN_CREDITS = ("turn", "episode")
INVALID_CREDITS = ("episode", "turn")


def turn_advantages(episode_adv, row_episode, *, credit: str = "turn", invalid=None,
                    invalid_penalty: float = 0.0) -> np.ndarray:
    """`[R]` float32 advantage of each turn row from its episode's advantage.

    Args:
      episode_adv: `[E]` per-episode advantages (e.g. group-normalised returns).
      row_episode: `[R]` int in `[0, E)`, the episode of each turn row.
      credit: "turn" copies the episode's advantage onto every one of its turns, so a long episode
        counts once per turn; "episode" scales the rows of an episode with n turns by `n_mean / n`
        (`n_mean`: the mean over the episodes that have rows), so every episode's rows sum to
        `n_mean` times its advantage. Why: failed episodes run to the turn limit and won ones stop
        early, so under "turn" the rows of a zero-mean group sum to a negative advantage, which pushes
        down the probability of every sampled action.
      invalid: `[R]` bool, the rows whose action the env rejected (None: none).
      invalid_penalty: subtracted from the advantage of each invalid row only (`agent.invalid_credit =
        "turn"`): the penalty lands on the action that earned it, not on the episode's valid turns.

    Returns:
      `[R]` float32: `episode_adv[row_episode]`, scaled under "episode", minus the invalid rows' penalty.

    Examples:
      >>> turn_advantages([1.0, -1.0], [0, 1, 1, 1], credit="episode").tolist()
      [2.0, -0.6666666865348816, -0.6666666865348816, -0.6666666865348816]
      >>> turn_advantages([0.0, 0.0], [0, 1, 1], invalid=[False, True, False], invalid_penalty=0.5).tolist()
      [0.0, -0.5, 0.0]
    """
    if credit not in TURN_CREDITS:
        raise ValueError(f"agent.turn_credit must be one of {TURN_CREDITS}; got {credit!r}")
    adv = np.asarray(episode_adv, np.float32)
    ep = np.asarray(row_episode, np.int64)
    if ep.size and (ep.min() < 0 or ep.max() >= adv.shape[0]):
        raise ValueError(f"turn_advantages: row_episode must lie in [0, {adv.shape[0]}); got "
                         f"[{ep.min()}, {ep.max()}]")
    out = adv[ep]
    if credit == "episode" and ep.size:
        turns = np.bincount(ep, minlength=adv.shape[0]).astype(np.float64)
        out = out * (turns[turns > 0].mean() / turns[ep])
    if invalid is not None:
        bad = np.asarray(invalid, bool)
        if bad.shape != ep.shape:
            raise ValueError(f"turn_advantages: invalid must be [R] = {ep.shape}; got {bad.shape}")
        out = out - float(invalid_penalty) * bad
    return out.astype(np.float32)


def episode_returns(rollout: AgentRollout, *, invalid_penalty: float = 0.1, reward: str = "score") -> np.ndarray:
    """`[E]` float32 trajectory rewards, minus `invalid_penalty` per invalid turn (the agent seeds' CODE
    default 0.1). reward: "score" (the env's final score in [0, 1]), "won" (1 on success) or "return"
    (the sum of the env's rewards: signed rewards such as Spec-o3's format penalty survive)."""
    if reward not in REWARD_KINDS:
        raise ValueError(f"agent reward must be one of {REWARD_KINDS}; got {reward!r}")
    base = {"score": rollout.score, "won": rollout.won.astype(np.float32), "return": rollout.env_return}[reward]
    return (base - float(invalid_penalty) * rollout.invalid_turns).astype(np.float32)
