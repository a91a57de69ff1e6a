"""TextHouse: a small ALFWorld-like household environment (find, take, transform, put).

A seeded house of 6-10 receptacles and 5-8 object types, and one goal of six task types
(`task_types[task_id % 6]`):

- pick:  "put an apple in cabinet 1"
- look:  "examine the apple under the desklamp" (hold it at the desklamp, `use desklamp`)
- clean / heat / cool: "put a clean / hot / cool apple in cabinet 1"
- pick2: "put two apples in cabinet 1" (two apples exist; one is carried at a time)

Storage receptacles (countertop, cabinet 1, cabinet 2, drawer, fridge, shelf) hold objects; the
cabinets, drawer and fridge may start closed, and what is inside a closed one is seen only after
`open R`. Appliances: sinkbasin (clean), microwave and stoveburner (heat), fridge (cool),
desklamp (use). Per-house twists make maps and skills matter: only one of microwave / stoveburner
heats in a given house (the other answers "The stoveburner is broken." -- a valid action that
does nothing), which containers start closed, and where the objects are hidden.

The house is plain data (`House`, `HouseState`) and the rules are pure functions of it
(`admissible_actions`, `apply_action`, `goal_met`, `oracle_action`, `explorer_action`); `TextHouse`
is the single-episode `TextEnv` over them. Every text is ASCII (the character tokenizer encodes it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from jaxrl_llm.envs.text_env import extract_action

__all__ = [
    "House",
    "HouseState",
    "TextHouse",
    "admissible_actions",
    "apply_action",
    "explorer_action",
    "generate_house",
    "goal_met",
    "oracle_action",
    "RECEPTACLES",
    "OBJECT_TYPES",
]

# Canonical order: the house lists its receptacles in this order.
RECEPTACLES: tuple[str, ...] = (
    "countertop", "cabinet 1", "cabinet 2", "drawer", "fridge",
    "microwave", "stoveburner", "sinkbasin", "desklamp", "shelf",
)
STORAGE: tuple[str, ...] = ("countertop", "cabinet 1", "cabinet 2", "drawer", "fridge", "shelf")
OPENABLE: tuple[str, ...] = ("cabinet 1", "cabinet 2", "drawer", "fridge")
HEATERS: tuple[str, ...] = ("microwave", "stoveburner")
OBJECT_TYPES: tuple[str, ...] = (
    "apple", "mug", "potato", "book", "cup", "plate", "egg", "tomato", "bowl", "pen",
)
_PLURAL = {"potato": "potatoes", "tomato": "tomatoes"}
_ON_TOP = ("countertop", "shelf")  # "put O on R"; every other storage takes "in"
# task type -> (verb, property it gives, appliance); heat's appliance is the house's heater.
_TRANSFORM = {"clean": ("clean", "clean", "sinkbasin"), "heat": ("heat", "hot", None),
              "cool": ("cool", "cool", "fridge")}
_TOOL_VERB = {"sinkbasin": "clean", "microwave": "heat", "stoveburner": "heat", "fridge": "cool"}
_VERB_PROPERTY = {"clean": "clean", "heat": "hot", "cool": "cool"}
_CLEARS = {"hot": "cool", "cool": "hot"}  # heating undoes cooling and the reverse

PRIVILEGED: dict[str, str] = {
    "pick": "Search receptacles one by one for the object; take it, go to the target and put it.",
    "look": "Find and take the object, go to the desklamp, then use the desklamp while holding it.",
    "clean": "Take the exact object first; clean it with the sinkbasin; go straight to the target "
             "and put it.",
    "heat": "Take the exact object first; heat it with the appliance that works in this house; "
            "go straight to the target and put it.",
    "cool": "Take the exact object first; cool it with the fridge; go straight to the target and "
            "put it.",
    "pick2": "Find and move the first object, then go back for the second one of the same kind; "
             "put both in the target.",
}


def _prep(receptacle: str) -> str:
    return "on" if receptacle in _ON_TOP else "in"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class House:
    """The static part of an episode.

    receptacles: present receptacles, in `RECEPTACLES` order.
    objects: the type of each object instance (instance i is `objects[i]`).
    heater: the heating appliance that works in this house (the other one is broken).
    goal_receptacle: where the goal object must end up (None for look).
    """

    task_type: str
    receptacles: tuple[str, ...]
    objects: tuple[str, ...]
    heater: str
    goal_object: str
    goal_receptacle: str | None

    @property
    def goal(self) -> str:
        o, r = self.goal_object, self.goal_receptacle
        if self.task_type == "look":
            return f"examine the {o} under the desklamp"
        if self.task_type == "pick2":
            return f"put two {_PLURAL.get(o, o + 's')} {_prep(r)} {r}"
        if self.task_type == "pick":
            return f"put {_article(o)} {o} {_prep(r)} {r}"
        adjective = _TRANSFORM[self.task_type][1]
        return f"put {_article(adjective)} {adjective} {o} {_prep(r)} {r}"


@dataclass(frozen=True)
class HouseState:
    """The changing part: where the agent is, what is closed, where each object instance is.

    where[i]: the receptacle of instance i, None while carried. props[i]: its properties
    (subset of clean / hot / cool). examined: the object type last examined under the desklamp.
    """

    at: str | None
    closed: frozenset[str]
    where: tuple[str | None, ...]
    props: tuple[frozenset[str], ...]
    examined: str | None = None

    @property
    def held(self) -> int | None:
        return next((i for i, w in enumerate(self.where) if w is None), None)


def generate_house(rng: np.random.Generator, task_type: str, *, num_receptacles: int,
                   num_objects: int, closed_prob: float) -> tuple[House, HouseState]:
    """A random house for `task_type` whose goal is reachable and not yet met."""
    heater = str(rng.choice(HEATERS))
    needed = {"countertop"}
    needed |= {"look": {"desklamp"}, "clean": {"sinkbasin"}, "heat": set(HEATERS),
               "cool": {"fridge"}}.get(task_type, set())
    others = [r for r in RECEPTACLES if r not in needed]
    extra = rng.choice(len(others), size=num_receptacles - len(needed), replace=False)
    present = needed | {others[int(i)] for i in extra}
    receptacles = tuple(r for r in RECEPTACLES if r in present)
    storage = [r for r in receptacles if r in STORAGE]

    types = [OBJECT_TYPES[int(i)] for i in rng.choice(len(OBJECT_TYPES), num_objects, replace=False)]
    goal_object = types[0]
    goal_receptacle = None
    if task_type != "look":
        # A cooled object is not to be put back in the fridge that cooled it.
        targets = [r for r in storage if not (task_type == "cool" and r == "fridge")]
        goal_receptacle = targets[int(rng.integers(len(targets)))]
    objects = [goal_object] * (2 if task_type == "pick2" else 1) + types[1:]
    sources = [r for r in storage if r != goal_receptacle]
    where = [sources[int(rng.integers(len(sources)))] if t == goal_object
             else storage[int(rng.integers(len(storage)))] for t in objects]
    closed = frozenset(r for r in receptacles if r in OPENABLE and rng.random() < closed_prob)
    house = House(task_type, receptacles, tuple(objects), heater, goal_object, goal_receptacle)
    return house, HouseState(None, closed, tuple(where), tuple(frozenset() for _ in objects))


# ----- rules --------------------------------------------------------------------------------
def _accessible(state: HouseState, receptacle: str | None) -> bool:
    return receptacle in STORAGE and receptacle not in state.closed


def _contents(house: House, state: HouseState, receptacle: str) -> str:
    # Sorted names: instance order would give the goal object away.
    names = sorted(house.objects[i] for i, w in enumerate(state.where) if w == receptacle)
    return f"{_prep(receptacle).capitalize()} it: {', '.join(names) or 'nothing'}."


def _describe_place(house: House, state: HouseState) -> str:
    r = state.at
    if r is None:
        return f"You are in a house. Receptacles: {', '.join(house.receptacles)}."
    if r in state.closed:
        return f"You are at the {r}. It is closed."
    if r in STORAGE:
        return f"You are at the {r}. {_contents(house, state, r)}"
    return f"You are at the {r}."


def _carried(house: House, state: HouseState, i: int) -> str:
    return " ".join([p for p in ("clean", "hot", "cool") if p in state.props[i]] + [house.objects[i]])


def admissible_actions(house: House, state: HouseState) -> list[str]:
    """Actions that change something here: the local ones first, then `go to` every other
    receptacle. `look` and `inventory` are always accepted and not listed."""
    at, held = state.at, state.held
    local: list[str] = []
    if at in OPENABLE:
        local.append(f"{'open' if at in state.closed else 'close'} {at}")
    if _accessible(state, at):
        if held is None:
            here = sorted({house.objects[i] for i, w in enumerate(state.where) if w == at})
            local += [f"take {o} from {at}" for o in here]
        else:
            local.append(f"put {house.objects[held]} {_prep(at)} {at}")
    if held is not None and at in _TOOL_VERB:
        local.append(f"{_TOOL_VERB[at]} {house.objects[held]} with {at}")
    if at == "desklamp":
        local.append("use desklamp")
    return local + [f"go to {r}" for r in house.receptacles if r != at]


_PUT = re.compile(r"put (\S+) (?:in|on) (.+)")


def _canonical(action: str) -> str:
    """Lower case, single spaces, no final period; `put O in R` and `put O on R` both accepted."""
    text = " ".join(action.lower().split()).rstrip(".").strip()
    m = _PUT.fullmatch(text)
    if m and m.group(2) in RECEPTACLES:
        text = f"put {m.group(1)} {_prep(m.group(2))} {m.group(2)}"
    return text


def apply_action(house: House, state: HouseState, action: str) -> tuple[HouseState, str] | None:
    """`(next state, message)` of an action, or None (nothing changes) if it is not admissible."""
    a = _canonical(action)
    if a == "look":
        return state, _describe_place(house, state)
    if a == "inventory":
        held = state.held
        return state, "You carry nothing." if held is None else f"You carry: {_carried(house, state, held)}."
    if a not in admissible_actions(house, state):
        return None
    verb, at, held = a.split(" ", 1)[0], state.at, state.held
    if verb == "go":
        new = replace(state, at=a[len("go to "):])
        return new, _describe_place(house, new)
    if verb == "open":
        new = replace(state, closed=state.closed - {at})
        return new, f"You open the {at}. {_contents(house, new, at)}"
    if verb == "close":
        return replace(state, closed=state.closed | {at}), f"You close the {at}."
    if verb == "take":
        obj = a.split(" ")[1]
        i = next(i for i, w in enumerate(state.where) if w == at and house.objects[i] == obj)
        where = state.where[:i] + (None,) + state.where[i + 1:]
        return replace(state, where=where), f"You take the {obj} from the {at}."
    if verb == "put":
        where = state.where[:held] + (at,) + state.where[held + 1:]
        return replace(state, where=where), f"You put the {house.objects[held]} {_prep(at)} the {at}."
    if verb == "use":
        if held is None:
            return state, "You turn on the desklamp."
        return (replace(state, examined=house.objects[held]),
                f"You turn on the desklamp and examine the {house.objects[held]}.")
    # clean / heat / cool the carried object with the appliance here
    if verb == "heat" and at != house.heater:
        return state, f"The {at} is broken."
    prop = _VERB_PROPERTY[verb]
    new_props = (state.props[held] - {_CLEARS.get(prop, "")}) | {prop}
    props = state.props[:held] + (frozenset(new_props),) + state.props[held + 1:]
    return replace(state, props=props), f"You {verb} the {house.objects[held]} with the {at}."


def goal_met(house: House, state: HouseState) -> bool:
    o, r, t = house.goal_object, house.goal_receptacle, house.task_type
    if t == "look":
        return state.examined == o
    placed = [i for i, w in enumerate(state.where) if w == r and house.objects[i] == o]
    if t == "pick2":
        return len(placed) >= 2
    if t == "pick":
        return len(placed) >= 1
    return any(_TRANSFORM[t][1] in state.props[i] for i in placed)


def oracle_action(house: House, state: HouseState) -> str | None:
    """Next action of a shortest plan from full knowledge of the house; None once the goal is met.

    Plan: carry a goal object (dropping anything else first, where it costs one `put`), give it
    the goal's property at the working appliance, then deliver it (pick2: twice); open closed
    containers on the way. Every step of it is required, so no plan is shorter.
    """
    if goal_met(house, state):
        return None
    o, r, t = house.goal_object, house.goal_receptacle, house.task_type
    at, held = state.at, state.held
    if held is not None and house.objects[held] == o:
        if t in _TRANSFORM and _TRANSFORM[t][1] not in state.props[held]:
            verb, _, tool = _TRANSFORM[t]
            tool = tool or house.heater
            return f"go to {tool}" if at != tool else f"{verb} {o} with {tool}"
        if t == "look":
            return "go to desklamp" if at != "desklamp" else "use desklamp"
        if at != r:
            return f"go to {r}"
        return f"open {r}" if r in state.closed else f"put {o} {_prep(r)} {r}"
    if held is not None and _accessible(state, at):
        return f"put {house.objects[held]} {_prep(at)} {at}"  # drop the wrong object right here
    candidates = [i for i, w in enumerate(state.where)
                  if house.objects[i] == o and w is not None and (t in _TRANSFORM or w != r)]
    # pick2: fetch first the instance where we stand (saves a `go to`); the order costs nothing else.
    i = next((i for i in candidates if state.where[i] == at), candidates[0])
    source = state.where[i]
    if at != source:
        return f"go to {source}"
    if source in state.closed:
        return f"open {source}"
    if held is not None:
        return f"put {house.objects[held]} {_prep(source)} {source}"
    return f"take {o} from {source}"


def explorer_action(house: House, state: HouseState, seen: frozenset[str]) -> str | None:
    """Next action of an agent that knows only what it has been shown; None once the goal is met.

    `seen`: the storage receptacles whose contents the agent has observed (been at while open, or
    opened). It follows `oracle_action` except where that plan walks to an object in storage it has
    not seen: there it searches instead, opening the unseen receptacle it stands at, else going to
    the first unseen storage receptacle in the house's order. The goal's receptacle, the appliances
    and wherever the agent put things itself are known without looking. Warm-up records of it teach
    a search a policy can imitate from its observations (the oracle's straight line to a hidden
    object cannot be).
    """
    action = oracle_action(house, state)
    if action is None or not action.startswith("go to "):
        return action
    target, held = action[len("go to "):], state.held
    fetching = held is None or house.objects[held] != house.goal_object
    if not fetching or target not in STORAGE or target in seen:
        return action
    if state.at in STORAGE and state.at not in seen:  # standing at it without seeing inside: it is closed
        return f"open {state.at}"
    return f"go to {next(r for r in house.receptacles if r in STORAGE and r not in seen)}"


def _observed(state: HouseState, seen: frozenset[str]) -> frozenset[str]:
    """`seen` plus the receptacle the agent stands at when its contents are shown (open storage)."""
    return seen | {state.at} if state.at in STORAGE and state.at not in state.closed else seen


# ----- the environment ----------------------------------------------------------------------
class TextHouse:
    """One TextHouse episode (see the module docstring).

    Args:
      num_receptacles: receptacles per house, 6..10 (the ones the task needs always included).
      num_objects: object types per house, 5..8: the goal object's type and the distractors'.
      closed_prob: probability that each cabinet, the drawer and the fridge start closed.
      max_steps: episode length; the longest shortest plan (pick2) takes 11 steps.
    """

    name = "texthouse"
    task_types: tuple[str, ...] = ("pick", "look", "clean", "heat", "cool", "pick2")

    def __init__(self, *, num_receptacles: int = 8, num_objects: int = 6, closed_prob: float = 0.5,
                 max_steps: int = 15):
        if not isinstance(num_receptacles, (int, np.integer)) or not 6 <= num_receptacles <= 10:
            raise ValueError(f"num_receptacles must be an integer in [6, 10]; got {num_receptacles!r}")
        if not isinstance(num_objects, (int, np.integer)) or not 5 <= num_objects <= 8:
            raise ValueError(f"num_objects must be an integer in [5, 8] (object types per house); "
                             f"got {num_objects!r}")
        if not isinstance(closed_prob, (int, float)) or not 0.0 <= float(closed_prob) <= 1.0:
            raise ValueError(f"closed_prob must be a probability in [0, 1]; got {closed_prob!r}")
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 11:
            raise ValueError(f"max_steps must be an integer >= 11 (a pick2 plan with two closed "
                             f"containers takes 11 steps); got {max_steps!r}")
        self.num_receptacles = int(num_receptacles)
        self.num_objects = int(num_objects)
        self.closed_prob = float(closed_prob)
        self.max_steps = int(max_steps)
        self.house: House | None = None
        self.state: HouseState | None = None

    def describe(self) -> str:
        return (
            "TextHouse: a house with receptacles. The countertop, cabinets, drawer, fridge and shelf "
            "hold objects; cabinets, drawer and fridge may be closed, and you see inside only after "
            "opening them. Appliances: the sinkbasin cleans, the fridge cools, the microwave or the "
            "stoveburner heats (one of them may be broken), the desklamp lights. Actions: go to R, "
            "open R, close R, take O from R, put O in/on R, clean O with sinkbasin, heat O with "
            "microwave, heat O with stoveburner, cool O with fridge, use desklamp, look, inventory. "
            "You must be at a receptacle to use it and can carry one object at a time."
        )

    # ----- episode state -------------------------------------------------------------------
    def reset(self, seed: int, task_id: int = 0) -> str:
        rng = np.random.default_rng([int(seed), int(task_id)])
        self.task_id = int(task_id)
        self.task_type = self.task_types[self.task_id % len(self.task_types)]
        self.house, self.state = generate_house(
            rng, self.task_type, num_receptacles=self.num_receptacles,
            num_objects=self.num_objects, closed_prob=self.closed_prob)
        self.goal = self.house.goal
        self._steps, self._done, self._won, self._invalid = 0, False, False, False
        self._seen = _observed(self.state, frozenset())
        self._obs = _describe_place(self.house, self.state)
        return self._obs

    def admissible_actions(self) -> list[str]:
        return [] if self._done else admissible_actions(self.house, self.state)

    def oracle_action(self) -> str | None:
        return None if self._done else oracle_action(self.house, self.state)

    def explorer_action(self) -> str | None:
        return None if self._done else explorer_action(self.house, self.state, self._seen)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "goal": self.goal,
            "step": self._steps,
            "admissible_actions": self.admissible_actions(),
            "won": self._won,
            "score": 1.0 if self._won else 0.0,
            "invalid": self._invalid,
            "privileged": PRIVILEGED[self.task_type],
            "oracle_action": self.oracle_action(),
            "explorer_action": self.explorer_action(),
        }

    # ----- transitions ----------------------------------------------------------------------
    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.house is None:
            raise RuntimeError("reset must be called before step")
        if self._done:
            self._invalid = False
            return self._obs, 0.0, True, self.info
        action = extract_action(action_text)
        result = None if action is None else apply_action(self.house, self.state, action)
        self._invalid = result is None
        self._steps += 1
        if result is not None:
            self.state, self._obs = result
            self._seen = _observed(self.state, self._seen)
        reward = 0.0
        if goal_met(self.house, self.state):
            self._done, self._won, reward = True, True, 1.0
            self._obs += "\nTask complete."
        elif self._steps >= self.max_steps:
            self._done = True  # out of steps: reward 0
            self._obs += "\nOut of steps."
        return self._obs, reward, self._done, self.info
