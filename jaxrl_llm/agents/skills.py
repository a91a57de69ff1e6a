"""Skill libraries: fixed, human-written skill texts per environment task type.

A `SkillLibrary` holds general skills (useful for every task) and one skill text per task type.
It renders the skill block that SkillC injects into skill-conditioned rollouts and the privileged
context of an SDAR teacher (agents-analysis.md sections 1 and 3): general skills + the task type's
skill, or every skill with `include_all` (SDAR's `skill_all` flag). When the environment does not
report a known task type, the type is guessed from the goal text by keywords.

Texts are ASCII so that every tokenizer, the character-level one included, can encode them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from jaxrl_llm.envs.text_shop import COLORS, MATERIALS

__all__ = ["BUILTIN_SKILL_ENVS", "SkillLibrary", "builtin_skill_library", "load_skill_library"]


def _check_ascii(where: str, text: str) -> None:
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise ValueError(f"{where} must be ASCII text; got {bad!r} at position {text.index(bad)}")


@dataclass(frozen=True)
class SkillLibrary:
    """General skills plus one skill text per task type.

    Attributes:
      general: skills for every task, in prompt order.
      by_type: task type -> its skill text; dict order is the keyword-matching priority
        (put the more specific types first).
      keywords: task type -> extra lower-case words that identify the type in a goal text
        (the type's own name always counts).
    """

    general: tuple[str, ...]
    by_type: dict[str, str]
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.general, str) or not all(isinstance(s, str) for s in self.general):
            raise TypeError(f"general must be a sequence of strings; got {self.general!r}")
        object.__setattr__(self, "general", tuple(self.general))
        if not isinstance(self.by_type, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.by_type.items()):
            raise TypeError(f"by_type must be a dict of task type -> skill text; got {self.by_type!r}")
        unknown = sorted(set(self.keywords) - set(self.by_type))
        if unknown:
            raise ValueError(f"keywords names task types not in by_type: {unknown}")
        for i, text in enumerate(self.general):
            _check_ascii(f"general[{i}]", text)
        for name, text in self.by_type.items():
            _check_ascii(f"by_type[{name!r}]", text)

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self.by_type)

    def type_for_goal(self, goal: str) -> str | None:
        """The first task type (in `by_type` order) whose name or a keyword occurs as a word in
        `goal` (case-insensitive); None when nothing matches."""
        words = set(re.findall(r"[a-z0-9_]+", goal.lower()))
        for name in self.by_type:
            if name.lower() in words or words.intersection(self.keywords.get(name, ())):
                return name
        return None

    def text_for(self, task_type: str | None, *, goal: str | None = None, include_all: bool = False) -> str:
        """Skill block, one skill a line: general skills, then the task type's skill.

        An unknown or missing `task_type` falls back to `type_for_goal(goal)`; with no match the
        block holds the general skills only. `include_all` lists every type's skill instead.
        """
        if include_all:
            return "\n".join((*self.general, *self.by_type.values()))
        if task_type not in self.by_type and goal is not None:
            task_type = self.type_for_goal(goal)
        specific = (self.by_type[task_type],) if task_type in self.by_type else ()
        return "\n".join((*self.general, *specific))

    def text_for_goal(self, goal: str, *, include_all: bool = False) -> str:
        """`text_for` with the task type guessed from the goal text."""
        return self.text_for(None, goal=goal, include_all=include_all)


def load_skill_library(path: str | Path) -> SkillLibrary:
    """A library from JSON `{"general": [str, ...], "by_type": {type: str}, "keywords"?: {type: [str]}}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"skill library file {str(path)!r} (config field agent.skills) does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"skill library {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"skill library {str(path)!r} must hold a JSON object; got {type(raw).__name__}")
    for key in ("general", "by_type"):
        if key not in raw:
            raise ValueError(f"skill library {str(path)!r} is missing the key {key!r}")
    general, by_type = raw["general"], raw["by_type"]
    if not isinstance(general, list) or not all(isinstance(s, str) for s in general):
        raise ValueError(f"skill library {str(path)!r}: 'general' must be a list of strings; got {general!r}")
    if not isinstance(by_type, dict) or not all(isinstance(v, str) for v in by_type.values()):
        raise ValueError(f"skill library {str(path)!r}: 'by_type' must map task type -> string; got {by_type!r}")
    keywords = raw.get("keywords", {})
    if not isinstance(keywords, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) for w in v) for v in keywords.values()):
        raise ValueError(f"skill library {str(path)!r}: 'keywords' must map task type -> list of strings; "
                         f"got {keywords!r}")
    try:
        return SkillLibrary(tuple(general), dict(by_type), {k: tuple(w.lower() for w in v) for k, v in keywords.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"skill library {str(path)!r}: {err}") from err


_TEXTHOUSE = SkillLibrary(
    general=(
        "Read the goal and note the exact object and target receptacle.",
        "Use only actions from the admissible list; open closed containers before taking from them.",
    ),
    # Specific types first: every goal says "put", so pick is matched last.
    by_type={
        "pick2": "Find and move the first object, then go back for the second one of the same kind; "
                 "put both in the target.",
        "look": "Find and take the object, go to the desklamp, then use the desklamp while holding it.",
        "clean": "Take the exact object first; clean it with the sinkbasin; go straight to the target and put it.",
        "heat": "Take the exact object first; heat it with the appliance that works in this house; "
                "go straight to the target and put it.",
        "cool": "Take the exact object first; cool it with the fridge; go straight to the target and put it.",
        "pick": "Search receptacles one by one for the object; take it, go to the target and put it.",
    },
    keywords={
        "pick2": ("two", "both"),
        "look": ("examine", "desklamp", "lamp"),
        "clean": ("clean", "wash", "rinse"),
        "heat": ("hot", "heated", "warm"),
        "cool": ("cold", "cooled", "chilled"),
        "pick": ("put", "place", "move", "take"),
    },
)

_TEXTSHOP = SkillLibrary(
    general=(
        "Search with the category and every attribute from the goal in one query.",
        "Check the price limit before opening an item; choose the size before buying.",
    ),
    by_type={
        "color_material": "Open only items whose title has both the goal color and material; "
                          "if none is listed, go to the next page.",
        "color": "Open only items whose title has the goal color and category; "
                 "if none is listed, go to the next page.",
    },
    keywords={"color_material": tuple(MATERIALS), "color": tuple(COLORS)},
)

_BUILTIN = {"texthouse": _TEXTHOUSE, "textshop": _TEXTSHOP}
BUILTIN_SKILL_ENVS: tuple[str, ...] = tuple(_BUILTIN)


def builtin_skill_library(env_name: str) -> SkillLibrary:
    """The built-in library of a built-in environment (`BUILTIN_SKILL_ENVS`)."""
    if env_name not in _BUILTIN:
        raise ValueError(f"no built-in skill library for env {env_name!r}; expected one of {BUILTIN_SKILL_ENVS} "
                         "(or point agent.skills at a JSON file)")
    return _BUILTIN[env_name]


def skill_library_for(name: str, env_name: str) -> SkillLibrary:
    """The library a config names (`agent.skills`, `data.task_kwargs.skills`): "builtin" = the env's
    built-in one, anything else a JSON file."""
    return builtin_skill_library(env_name) if name == "builtin" else load_skill_library(name)
