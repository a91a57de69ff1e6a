"""FactHop: a seeded world of synthetic facts and the 2-hop questions that compose them.

Each country has a capital (hop 1: "The capital of Zorland is Bexo.") and each capital a mayor
(hop 2: "The mayor of Bexo is Quin."); the 2-hop question asks for the mayor of the capital
("The mayor of the capital of Zorland is" -> "Quin"). Every fact and question comes in several
paraphrases, as knowledge-neuron attribution needs (`analysis/knowledge_neurons.py`).

Capitals and mayors have pairwise distinct first letters, so with a character tokenizer the first
answer token already names the entity: one next-token probability scores an answer, and a
2-hop "shortcut" that answers with the capital is told apart from the right mayor. All text is
ASCII (`data.tokenizer.CharTokenizer` encodes it). The world depends only on `(num_countries, seed)`.
"""

from __future__ import annotations

import dataclasses
import string
from typing import NamedTuple

import numpy as np

__all__ = ["FactWorld", "FactQuestion", "HOPS", "make_world", "questions", "sft_records", "PARAPHRASES"]

HOPS = ("capital", "mayor", "two_hop")

# Prompts end with a space: the next token is the answer's first letter.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {x} is ", "{x}'s capital is ", "The capital city of {x} is "),
    "mayor": ("The mayor of {x} is ", "{x}'s mayor is ", "The city of {x} has the mayor "),
    "two_hop": ("The mayor of the capital of {x} is ", "{x}'s capital has the mayor ",
                "The capital of {x} has the mayor "),
}

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_COUNTRY_SUFFIXES = ("land", "ia", "stan", "mark")
_MAX_COUNTRIES = 13  # capitals and mayors share the 26 first letters


@dataclasses.dataclass(frozen=True)
class FactWorld:
    """`countries[i]` has capital `capitals[i]`, whose mayor is `mayors[i]`."""

    countries: tuple[str, ...]
    capitals: tuple[str, ...]
    mayors: tuple[str, ...]
    seed: int


class FactQuestion(NamedTuple):
    """One prompt: `hop` in `HOPS`, the `country` index it is about, its `paraphrase` index."""

    prompt: str
    answer: str
    hop: str
    country: int
    paraphrase: int


def _name(rng: np.random.Generator, first: str, syllables: int) -> str:
    """`first` then alternating vowels/consonants, e.g. 'B' + 'exo'."""
    out = [first]
    for k in range(2 * syllables - 1):
        out.append(rng.choice(list(_VOWELS if k % 2 == 0 else _CONSONANTS)))
    return "".join(out)


def make_world(num_countries: int = 8, seed: int = 0) -> FactWorld:
    """A world of `num_countries` (1..13) countries, capitals and mayors, fixed by `seed`."""
    if isinstance(num_countries, bool) or not isinstance(num_countries, (int, np.integer)) \
            or not 1 <= num_countries <= _MAX_COUNTRIES:
        raise ValueError(f"num_countries must be an integer in [1, {_MAX_COUNTRIES}]; got {num_countries!r}")
    rng = np.random.default_rng([int(seed), int(num_countries)])
    letters = rng.permutation(list(string.ascii_uppercase))
    capital_letters, mayor_letters = letters[:num_countries], letters[num_countries:2 * num_countries]
    countries: list[str] = []
    while len(countries) < num_countries:
        root = _name(rng, str(rng.choice(list(string.ascii_uppercase))), 2)[:-1]
        name = root + str(rng.choice(_COUNTRY_SUFFIXES))
        if name not in countries:
            countries.append(name)
    capitals = tuple(_name(rng, str(c), 2) for c in capital_letters)
    mayors = tuple(_name(rng, str(c), 2) for c in mayor_letters)
    return FactWorld(tuple(countries), capitals, mayors, int(seed))


def questions(world: FactWorld, hop: str) -> list[FactQuestion]:
    """Every paraphrase of every country's `hop` question ("capital": country -> capital, "mayor":
    capital -> mayor, "two_hop": country -> mayor), country-major."""
    if hop not in HOPS:
        raise ValueError(f"hop must be one of {HOPS}; got {hop!r}")
    out = []
    for i, country in enumerate(world.countries):
        subject = world.capitals[i] if hop == "mayor" else country
        answer = world.capitals[i] if hop == "capital" else world.mayors[i]
        for j, template in enumerate(PARAPHRASES[hop]):
            out.append(FactQuestion(template.format(x=subject), answer, hop, i, j))
    return out


def sft_records(world: FactWorld, *, two_hop_countries=(), repeats: int = 1) -> list[dict[str, str]]:
    """`{"prompt", "completion"}` records teaching every single-hop fact in every paraphrase, plus the
    2-hop questions of the countries in `two_hop_countries`; the completion is the answer and a
    period. `repeats` copies of the list (to weigh the facts against other data)."""
    two_hop = {int(i) for i in two_hop_countries}
    if any(not 0 <= i < len(world.countries) for i in two_hop):
        raise ValueError(f"two_hop_countries must be country indices in [0, {len(world.countries)}); "
                         f"got {sorted(two_hop)}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    chosen = questions(world, "capital") + questions(world, "mayor") + \
        [q for q in questions(world, "two_hop") if q.country in two_hop]
    return [{"prompt": q.prompt, "completion": q.answer + "."} for q in chosen] * int(repeats)
