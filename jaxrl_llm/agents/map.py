"""MAP (map-then-act, arXiv 2605.13037) on TextHouse: goal-free exploration -> a compact house map.

1. Global exploration (RECON): a scripted explorer plays a fresh copy of the episode's house (same
   `(task_id, seed)`) without looking at the goal. It visits every receptacle in the order the house
   lists them, opens closed containers, takes the first object it sees and, holding it, probes each
   appliance once (`heat O with microwave`, `heat O with stoveburner`, `clean O with sinkbasin`,
   `cool O with fridge`), going back to an appliance it passed empty-handed. It stops after `budget`
   env steps (E), after `patience` steps in a row that taught it no new fact (w), or when nothing is
   left to visit or probe. It costs env steps, never policy tokens.
2. The map (the spec's prior K_g and task map M_t in one block): the receptacles as first seen
   ("receptacle: contents", "(closed)" where it had to be opened) and the probed affordances
   ("heat: microwave works, stoveburner fails"). ASCII, one short line per part, so the tiny policy
   can read it in every turn prompt.
3. Execution: `AgentTask(context="map")` puts the episode's map into every turn prompt as its skill
   block (SFT records and RL / eval turns alike).

Facts: the first observation of a receptacle (its contents, or that it is closed), the contents of
an opened container, and each appliance's answer to a probe. The explorer reads only the env's
texts and admissible actions, never the `House` dataclass.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = ["Exploration", "explore", "render_map", "house_map", "MAP_HEADER"]

MAP_HEADER = "Map:"
_TOOLS = {"sinkbasin": "clean", "microwave": "heat", "stoveburner": "heat", "fridge": "cool"}
_RECEPTACLES = re.compile(r"Receptacles: (.+)\.$")
_AT = re.compile(r"You are at the (.+?)\.")
_CONTENTS = re.compile(r"(?:In|On) it: (.+?)\.")
_OPENED = re.compile(r"You open the (.+?)\.")
_BROKEN = re.compile(r"The (.+?) is broken\.")
_WORKS = re.compile(r"You (clean|heat|cool) the \S+ with the (.+?)\.")


@dataclasses.dataclass(frozen=True)
class Exploration:
    """What the explorer learned in one house.

    receptacles: the house's receptacles, in its order. contents: receptacle -> objects first seen
    there (sorted; only visited storage). closed: receptacles found closed. affordances:
    (verb, appliance) -> whether it worked. actions [S]: the actions taken; new [S]: whether step s
    taught a new fact. stop: "budget" (E steps), "idle" (w steps without a new fact) or "done".
    """

    receptacles: tuple[str, ...]
    contents: dict[str, tuple[str, ...]]
    closed: frozenset[str]
    affordances: dict[tuple[str, str], bool]
    actions: tuple[str, ...]
    new: tuple[bool, ...]
    stop: str

    @property
    def steps(self) -> int:
        return len(self.actions)


def _first_receptacles(obs: str) -> tuple[str, ...]:
    m = _RECEPTACLES.search(obs.splitlines()[0])
    if m is None:
        raise ValueError(f"MAP explorer: the first observation must list the receptacles "
                         f"('... Receptacles: a, b.'); got {obs!r}")
    return tuple(r.strip() for r in m.group(1).split(","))


def _objects(text: str) -> tuple[str, ...]:
    return () if text == "nothing" else tuple(sorted(o.strip() for o in text.split(",")))


def explore(env: Any, task_id: int, seed: int, *, budget: int = 30, patience: int = 3) -> Exploration:
    """Explores the house `(task_id, seed)` of the single-episode TextHouse `env` (it is reset).

    budget: at most this many env steps (E); patience: stop after this many steps in a row without
    a new fact (w). Deterministic: the same house gives the same exploration.
    """
    if int(budget) < 1:
        raise ValueError(f"data.task_kwargs.map_budget must be >= 1 (explorer env steps); got {budget}")
    if int(patience) < 1:
        raise ValueError(f"data.task_kwargs.map_patience must be >= 1 (idle steps before stopping); got {patience}")
    obs = env.reset(int(seed), int(task_id))
    receptacles = _first_receptacles(obs)
    contents: dict[str, tuple[str, ...]] = {}
    closed: set[str] = set()
    affordances: dict[tuple[str, str], bool] = {}
    actions: list[str] = []
    new: list[bool] = []
    visited: set[str] = set()
    at, held, is_closed = None, None, False
    stop = "done"
    while True:
        admissible = env.info["admissible_actions"]
        tool = _TOOLS.get(at or "")
        if at is not None and is_closed:
            action = f"open {at}"
        elif held is None and contents.get(at):
            action = f"take {contents[at][0]} from {at}"
        elif held is not None and tool and (tool, at) not in affordances:
            action = f"{tool} {held} with {at}"
        else:
            pending = [r for r in receptacles if r not in visited]
            if not pending and held is not None:
                pending = [r for r in receptacles if r in _TOOLS and (_TOOLS[r], r) not in affordances]
            if not pending:
                break
            action = f"go to {pending[0]}"
        if action not in admissible:  # e.g. the object taken is gone: nothing sensible left
            break
        obs, _, done, _ = env.step(action)
        learned = False
        if action.startswith("go to "):
            at = action[len("go to "):]
            is_closed = "It is closed." in obs
            if at not in visited:
                visited.add(at)
                learned = True
                if is_closed:
                    closed.add(at)
                m = _CONTENTS.search(obs)
                if m and at not in contents:
                    contents[at] = _objects(m.group(1))
        elif action.startswith("open "):
            is_closed = False
            m = _CONTENTS.search(obs)
            if _OPENED.search(obs) and m and at not in contents:
                contents[at] = _objects(m.group(1))
                learned = True
        elif action.startswith("take "):
            held = action.split(" ")[1]
        else:
            broken, works = _BROKEN.search(obs), _WORKS.search(obs)
            if broken or works:
                affordances[(tool, at)] = works is not None
                learned = True
        actions.append(action)
        new.append(learned)
        if done:
            break
        if len(actions) >= int(budget):
            stop = "budget"
            break
        if len(new) >= int(patience) and not any(new[-int(patience):]):
            stop = "idle"
            break
    return Exploration(receptacles, contents, frozenset(closed), affordances, tuple(actions), tuple(new), stop)


def render_map(exploration: Exploration) -> str:
    """The map block: `Map: r: objects; r (closed): objects; ...` then `heat: microwave works,
    stoveburner fails; ...` (verbs in clean / cool / heat order). Unvisited receptacles are left out."""
    places = []
    for r in exploration.receptacles:
        if r in exploration.contents:
            tag = " (closed)" if r in exploration.closed else ""
            places.append(f"{r}{tag}: {', '.join(exploration.contents[r]) or 'empty'}")
    lines = [f"{MAP_HEADER} " + "; ".join(places) + "."] if places else [MAP_HEADER]
    tools = []
    for verb in ("clean", "cool", "heat"):
        found = [f"{a} {'works' if ok else 'fails'}" for (v, a), ok in exploration.affordances.items() if v == verb]
        if found:
            tools.append(f"{verb}: {', '.join(sorted(found))}")
    if tools:
        lines.append("; ".join(tools) + ".")
    return "\n".join(lines)


def house_map(env: Any, task_id: int, seed: int, *, budget: int = 30, patience: int = 3) -> tuple[str, Exploration]:
    """`(render_map(exploration), exploration)` of the house `(task_id, seed)`."""
    exploration = explore(env, task_id, seed, budget=budget, patience=patience)
    return render_map(exploration), exploration
