"""LangArith: one-operation arithmetic written in number words of seven languages (LANG's toy task).

A problem asks `"tiga tambah empat?"` (Indonesian: 3 + 4) and the worked solution is a short
in-language reasoning trace followed by the answer word: `"tiga tambah empat adalah tujuh; #tujuh"`.
Operands and results lie in 0..20; the words are ASCII (the char tokenizer has no diacritics:
German `fuenf`, Vietnamese `muoi lam`). Languages cover the three resource groups of
`objectives/lang.py`: high `en de fr es`, mid `vi`, low `sw id`.

The teacher hint `h = h_1..h_L` of a problem is the words of its trace (`metadata["hint"]`);
`hinted_prompt(problem, fraction)` appends the first `floor(fraction * L)` of them to the question.

Reward components (text only, `reward_components`):
- `acc`: the expression after the last `#` is a number (words of any supported language, or
  digits) equal to the true result;
- `format`: exactly one `#`, and after it one number expression and nothing else;
- `lc`: language consistency: every word of the response (trace and answer) belongs to the
  problem language's vocabulary (`language_consistent`).
`score` is the conjunctive reward `lc * format * acc` (LANG's R); the `lang_acc` scorer is
`acc` alone (the mGRPO baseline's reward).

Language identification is a built-in vocabulary-overlap identifier, not a library: py3langid
(0.4.0, offline, CPU) labelled 11 of 14 hand texts of this task correctly: it reads
diacritic-free Vietnamese as Indonesian and a lone answer word (`"#sept"`) as another language.
The task's vocabularies are closed and known, so overlap with them is exact where a statistical
identifier guesses.

SFT drift (`sft_english_share`): the warm-up target of a non-English problem reasons in English
with a per-group probability (default high 0, mid 0.3, low 0.7; fixed per problem by a stable
hash), a stand-in for a base model that drifts into English on low-resource inputs. The RL
prompts and the held-out set are unaffected; set it to (0, 0, 0) for in-language warm-ups only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxrl_llm.envs.rewards import register_scorer
from jaxrl_llm.envs.task import DrawnTask, Problem, stable_hash
from jaxrl_llm.objectives.lang import RESOURCE_GROUPS

__all__ = [
    "ANSWER_MARK",
    "LANGUAGES",
    "NUMBER_WORDS",
    "OPERATOR_WORDS",
    "VOCABULARY",
    "LangArithTask",
    "identify_language",
    "language_consistent",
    "language_group",
    "number_text",
    "parse_number",
    "words_of",
]

ANSWER_MARK, TRACE_END = "#", ";"
MAX_VALUE = 20

# 0..20 in each language (ASCII transliteration; multi-word numbers are space-separated).
NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fuenf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
           "zwoelf", "dreizehn", "vierzehn", "fuenfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn", "zwanzig"),
    "fr": ("zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze",
           "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf", "vingt"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once", "doce",
           "trece", "catorce", "quince", "dieciseis", "diecisiete", "dieciocho", "diecinueve", "veinte"),
    "vi": ("khong", "mot", "hai", "ba", "bon", "nam", "sau", "bay", "tam", "chin", "muoi", "muoi mot", "muoi hai",
           "muoi ba", "muoi bon", "muoi lam", "muoi sau", "muoi bay", "muoi tam", "muoi chin", "hai muoi"),
    "sw": ("sifuri", "moja", "mbili", "tatu", "nne", "tano", "sita", "saba", "nane", "tisa", "kumi", "kumi na moja",
           "kumi na mbili", "kumi na tatu", "kumi na nne", "kumi na tano", "kumi na sita", "kumi na saba",
           "kumi na nane", "kumi na tisa", "ishirini"),
    "id": ("nol", "satu", "dua", "tiga", "empat", "lima", "enam", "tujuh", "delapan", "sembilan", "sepuluh",
           "sebelas", "dua belas", "tiga belas", "empat belas", "lima belas", "enam belas", "tujuh belas",
           "delapan belas", "sembilan belas", "dua puluh"),
}
# (plus, minus, "is") per language.
OPERATOR_WORDS: dict[str, tuple[str, str, str]] = {
    "en": ("plus", "minus", "is"), "de": ("plus", "minus", "ist"), "fr": ("plus", "moins", "egale"),
    "es": ("mas", "menos", "es"), "vi": ("cong", "tru", "bang"), "sw": ("ongeza", "toa", "ni"),
    "id": ("tambah", "kurang", "adalah"),
}
LANGUAGES: tuple[str, ...] = tuple(NUMBER_WORDS)
VOCABULARY: dict[str, frozenset[str]] = {
    lang: frozenset(w for text in (*NUMBER_WORDS[lang], *OPERATOR_WORDS[lang]) for w in text.split())
    for lang in LANGUAGES
}
_NUMBER_VALUE: dict[str, dict[str, int]] = {lang: {w: v for v, w in enumerate(words)}
                                           for lang, words in NUMBER_WORDS.items()}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*|\d+")


def language_group(lang: str) -> str:
    """The resource group (`objectives/lang.py: RESOURCE_GROUPS`) of a language code."""
    for group, members in RESOURCE_GROUPS.items():
        if lang in members:
            return group
    raise ValueError(f"language {lang!r} is in no resource group of {sorted(RESOURCE_GROUPS)}")


def number_text(value: int, lang: str) -> str:
    """`value` in 0..20 as words of `lang` (`number_text(15, "vi") == "muoi lam"`)."""
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"value must be in [0, {MAX_VALUE}]; got {value}")
    return NUMBER_WORDS[lang][value]


def parse_number(text: str) -> int | None:
    """The value of a number written as digits or as the words of any supported language, else None.

    Words must form one whole number (`"kumi na tano"` -> 15; `"kumi na"` -> None).
    """
    words = " ".join(text.lower().split())
    if words.isdigit():
        return int(words)
    for values in _NUMBER_VALUE.values():
        if words in values:
            return values[words]
    return None


def words_of(text: str) -> list[str]:
    """The lower-cased words (letters, hyphenated compounds) and digit runs of `text`; punctuation dropped."""
    return _WORD.findall(text.lower())


def identify_language(text: str) -> str | None:
    """The language whose vocabulary holds the largest share of `text`'s words; None on a tie or no hit.

    `"drei plus vier ist sieben"` -> "de" (all 5 words; "plus" is also English and French).
    """
    words = words_of(text)
    if not words:
        return None
    share = {lang: sum(w in VOCABULARY[lang] for w in words) / len(words) for lang in LANGUAGES}
    best = max(share.values())
    winners = [lang for lang, s in share.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def language_consistent(text: str, lang: str) -> bool:
    """R_lc: `text` has at least one word and every word is in `lang`'s vocabulary (words shared with
    another language, like "plus", count for both)."""
    words = words_of(text)
    return bool(words) and all(w in VOCABULARY[lang] for w in words)


def _answer_part(response: str) -> tuple[int, str]:
    """(number of `#` marks, the text after the last one)."""
    return response.count(ANSWER_MARK), response.rpartition(ANSWER_MARK)[2]


class LangArithTask(DrawnTask):
    """`a + b` or `a - b` (operands and result in 0..`max_value`) asked in one of `languages`.

    Languages are drawn uniformly. A question whose words are all shared with another language
    (`"six plus six"`: English or French) is redrawn, so the problem language is always readable.
    `metadata`: language, group, value, hint (the trace words), english_trace (for the warm-up).
    """

    name = "lang_arith"
    reward_names: tuple[str, ...] = ("correct",)

    def __init__(self, languages: Sequence[str] = LANGUAGES, max_value: int = MAX_VALUE,
                 sft_english_share: Sequence[float] = (0.0, 0.3, 0.7), *, eval_fraction: float = 0.1):
        super().__init__(eval_fraction=eval_fraction)
        languages = (languages,) if isinstance(languages, str) else tuple(languages)
        unknown = [lang for lang in languages if lang not in NUMBER_WORDS]
        if not languages or unknown:
            raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}; got {languages!r}")
        if not 1 <= int(max_value) <= MAX_VALUE:
            raise ValueError(f"max_value must be in [1, {MAX_VALUE}]; got {max_value}")
        share = tuple(float(s) for s in sft_english_share)
        if len(share) != len(RESOURCE_GROUPS) or not all(0.0 <= s <= 1.0 for s in share):
            raise ValueError(f"sft_english_share must be {len(RESOURCE_GROUPS)} shares in [0, 1] (one per group "
                             f"{tuple(RESOURCE_GROUPS)}); got {sft_english_share!r}")
        self.languages = languages
        self.max_value = int(max_value)
        self.sft_english_share = dict(zip(RESOURCE_GROUPS, share))

    @staticmethod
    def trace_words(a: int, op: str, b: int, lang: str) -> tuple[str, ...]:
        """The reasoning trace `a op b is c` as words of `lang` (multi-word numbers split)."""
        plus, minus, is_ = OPERATOR_WORDS[lang]
        c = a + b if op == "+" else a - b
        text = f"{number_text(a, lang)} {plus if op == '+' else minus} {number_text(b, lang)} {is_} " \
               f"{number_text(c, lang)}"
        return tuple(text.split())

    def draw(self, rng: np.random.Generator):
        for _ in range(1000):
            lang = self.languages[int(rng.integers(len(self.languages)))]
            op = "+" if rng.random() < 0.5 else "-"
            c = int(rng.integers(0, self.max_value + 1))
            a = int(rng.integers(0, c + 1)) if op == "+" else int(rng.integers(c, self.max_value + 1))
            b = c - a if op == "+" else a - c
            words = self.trace_words(a, op, b, lang)
            question = " ".join(words[:len(words) - len(number_text(c, lang).split()) - 1])
            if identify_language(question) == lang:
                break
        else:
            raise RuntimeError(f"no unambiguous question drawn for languages {self.languages}")
        metadata = {"language": lang, "group": language_group(lang), "value": c, "hint": words,
                    "english_trace": self.trace_words(a, op, b, "en")}
        return f"{question}?", number_text(c, lang), metadata

    @staticmethod
    def worked_solution(problem: Problem, words: Sequence[str] | None = None, answer: str | None = None) -> str:
        """`"tiga tambah empat adalah tujuh; #tujuh"`: the trace words, `;`, then `#` and the answer."""
        words = problem.metadata["hint"] if words is None else words
        return " ".join(words) + TRACE_END + " " + ANSWER_MARK + (problem.reference if answer is None else answer)

    def sft_target(self, problem: Problem) -> str:
        """The worked solution, in English for `sft_english_share` of the group's problems (see module doc)."""
        md = problem.metadata
        share = self.sft_english_share[md["group"]]
        if md["language"] != "en" and stable_hash(problem.prompt, "english") % 1000 < share * 1000:
            return self.worked_solution(problem, md["english_trace"], number_text(md["value"], "en"))
        return self.worked_solution(problem)

    def hinted_prompt(self, problem: Problem, fraction: float) -> str:
        """The prompt followed by the first `k = floor(fraction * L)` hint words (the worked solution's
        own text up to word k, so the response continues it); fraction in [0, 1], float64."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
        hint = problem.metadata["hint"]
        k = int(np.floor(np.float64(fraction) * len(hint)))
        if k == 0:
            return problem.prompt
        return problem.prompt + " ".join(hint[:k]) + ("" if k == len(hint) else " ")

    def privileged_prompt(self, problem: Problem) -> str:
        """The prompt with the whole trace as a hint (SDAR / SkillC style)."""
        return self.hinted_prompt(problem, 1.0)

    def reward_components(self, problem: Problem, response: str) -> dict[str, float]:
        """`{"lc", "format", "acc"}` in {0, 1} for one response (see the module docstring)."""
        marks, answer = _answer_part(response)
        value = parse_number(answer) if marks else None
        fmt = marks == 1 and value is not None
        acc = value is not None and value == problem.metadata["value"]
        lc = language_consistent(response, problem.metadata["language"])
        return {"lc": float(lc), "format": float(fmt), "acc": float(acc)}

    def score(self, problem: Problem, response: str) -> float:
        """The conjunctive reward R = R_lc * R_format * R_acc."""
        c = self.reward_components(problem, response)
        return c["lc"] * c["format"] * c["acc"]

    def score_breakdown(self, problems: Sequence[Problem], responses: Sequence[str]) -> dict[str, float]:
        """Per resource group (present in `problems`): mean `lc`, `format`, `acc` and `lc_acc` (answer
        correct and the response in the problem's language), keys `lang/<group>/<name>`, plus `lang/all/...`."""
        if len(problems) != len(responses):
            raise ValueError(f"responses must have one entry per problem ({len(problems)}); got {len(responses)}")
        rows: dict[str, list[dict[str, float]]] = {}
        for p, r in zip(problems, responses):
            c = self.reward_components(p, r)
            c["lc_acc"] = c["lc"] * c["acc"]
            rows.setdefault(p.metadata["group"], []).append(c)
            rows.setdefault("all", []).append(c)
        return {f"lang/{g}/{k}": float(np.mean([c[k] for c in cs]))
                for g, cs in rows.items() for k in ("lc", "format", "acc", "lc_acc")}


@register_scorer("lang_acc")
def _lang_accuracy_scorer(task, problems, responses, *, lengths, finished, max_length):
    """R_acc alone (the mGRPO baseline): the answer after `#` is right, whatever its language."""
    return np.asarray([task.reward_components(p, r)["acc"] for p, r in zip(problems, responses)], np.float32)

