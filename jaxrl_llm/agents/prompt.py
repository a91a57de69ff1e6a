"""The turn prompt of a multi-turn agent: one text layout for SFT records, rollouts and teachers.

A turn prompt holds, in this order (blocks that are empty are left out)::

    <instruction>
    <skill block>                       # SkillC / D2Skill / Skill1 guidance, when injected
    Goal: <goal>
    Before: <observation of turn t-2>   # the last `history_turns` (observation, action) pairs
    Did: <action of turn t-2>
    Before: <observation of turn t-1>
    Did: <action of turn t-1>
    Now: <current observation>
    Actions: <a1> | <a2> | ...          # the admissible actions, when shown

The policy answers with the action: plain (`go to fridge`) or tagged (`<action>go to fridge</action>`,
`action_format`); `envs.text_env.extract_action` reads both. SDAR's privileged teacher reads
`privileged_prompt(skill_text, prompt)`: the spec's "[Privileged Skill Information]" prefix in
front of the same prompt. With a chat tokenizer (`data.chat=True`) the whole text is the user turn
of the template (`tokenizer.encode_prompt`), so the layout is the same with or without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["ACTION_FORMATS", "PromptBuilder", "Turn", "privileged_prompt", "format_action"]

ACTION_FORMATS = ("plain", "tagged")
PRIVILEGED_HEADER = "[Privileged Skill Information]"


@dataclasses.dataclass(frozen=True)
class Turn:
    """One past turn: the observation the agent saw and the action it took (and, for reflectors and
    editors, the env's oracle action there; never shown to the policy)."""

    observation: str
    action: str
    oracle_action: str | None = None


def format_action(action: str, action_format: str) -> str:
    """The response text that takes `action` (`plain`: the action; `tagged`: `<action>...</action>`)."""
    if action_format not in ACTION_FORMATS:
        raise ValueError(f"agent action_format must be one of {ACTION_FORMATS}; got {action_format!r}")
    return action if action_format == "plain" else f"<action>{action}</action>"


def privileged_prompt(skill_text: str, prompt: str) -> str:
    """SDAR's teacher context: `[Privileged Skill Information]`, the skill text, a blank line, the prompt."""
    return f"{PRIVILEGED_HEADER}\n{skill_text}\n\n{prompt}"


@dataclasses.dataclass(frozen=True)
class PromptBuilder:
    """Renders a turn prompt (module docstring).

    instruction: the first line(s); "" for none.
    history_turns: how many past (observation, action) pairs to show (0: none).
    show_actions: list the admissible actions.
    max_actions: at most this many admissible actions are listed (0: all).
    action_format: "plain" or "tagged" (what the instruction asks for and `format_action` writes).
    """

    instruction: str = "You are an agent in a text world. Reply with one action."
    history_turns: int = 2
    show_actions: bool = True
    max_actions: int = 0
    action_format: str = "plain"

    def __post_init__(self):
        if self.action_format not in ACTION_FORMATS:
            raise ValueError(f"agent action_format must be one of {ACTION_FORMATS}; got {self.action_format!r}")
        if int(self.history_turns) < 0:
            raise ValueError(f"agent history_turns must be >= 0; got {self.history_turns}")
        if int(self.max_actions) < 0:
            raise ValueError(f"agent max_actions must be >= 0 (0: all); got {self.max_actions}")

    def render(self, goal: str, observation: str, *, history: Sequence[Turn] = (),
               admissible: Sequence[str] = (), skill_block: str = "") -> str:
        """The turn prompt text for the current `observation` after `history` (oldest first)."""
        lines = [self.instruction] if self.instruction else []
        if skill_block:
            lines.append(skill_block)
        lines.append(f"Goal: {goal}")
        shown = list(history)[-self.history_turns:] if self.history_turns else []
        for turn in shown:
            lines.append(f"Before: {turn.observation}")
            lines.append(f"Did: {turn.action}")
        lines.append(f"Now: {observation}")
        if self.show_actions and admissible:
            acts = list(admissible)[:self.max_actions] if self.max_actions else list(admissible)
            lines.append("Actions: " + " | ".join(acts))
        return "\n".join(lines) + "\n"

    def response(self, action: str) -> str:
        """The response text that takes `action` (what SFT records teach)."""
        return format_action(action, self.action_format)
