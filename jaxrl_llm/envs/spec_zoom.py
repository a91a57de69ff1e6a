"""SpecZoom: a Spec-o3-like spectral-inspection environment with a zoom action.

Each episode is one synthetic 1-D spectrum on 4000-7000 Angstrom (0.5 A pixels): a sloped continuum
near 1, Gaussian noise, and Gaussian lines at catalogue wavelengths (`LINES`). The task types ask
for a rare class: "emission" (is an emission line present at any catalogue wavelength?) and
"absorption" (the same for an absorption line). Every episode has one target catalogue line; on a
YES episode it carries the asked-for line, on a NO episode it is either clean or carries a line of
the other kind, and 0-2 other catalogue wavelengths carry decoy lines of the other kind.

Actions:
- `zoom[lmin,lmax]` (4000 <= lmin < lmax <= 7000, lmax - lmin >= 16) returns a 32-bin strip of the
  window, each bin one digit, `clip(round(4 + 8 (f - 1)), 0, 9)` with f the bin's mean flux
  (continuum ~4, emission peaks 8-9, absorption troughs 0-2). The first observation is the
  whole-range strip, where a line is diluted below one digit.
- A final answer, any turn holding `<answer>` or `\\boxed`, ends the episode with the Spec-o3
  reward `speco3_reward(action, truth).reward` (correct + ok 1.0, correct + format error 0.8,
  wrong + ok 0, wrong + format error -0.2). Running out of turns scores as an empty answer (-0.2).
Anything else (an unparsable zoom, a reversed, too narrow or out-of-range window) is a no-op with
`info["invalid"] = True`.

`info["score"]` = clip(reward, 0, 1); `won` iff the reward is 1 (right class, well formatted).
`privileged` names the target line ("the line to inspect is near 6563 (H-alpha)"), and
`oracle_action` is the scripted expert's next action: zoom onto the target window, then answer.
`oracle_trajectory` replays that expert for cold-start SFT.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from jaxrl_llm.envs.math_answer import answers_match, extract_boxed
from jaxrl_llm.envs.text_env import extract_action


SPECO3_FORMAT_WEIGHT = 0.2  # Spec-o3 code: r = acc + 0.2 * format

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class SpecO3Reward(NamedTuple):
    """reward = acc + 0.2 * format; answer: the boxed choice that was scored (None if none)."""

    reward: float
    acc: float
    format: float
    answer: str | None


def speco3_reward(response: str, truth: str, *, format_weight: float = SPECO3_FORMAT_WEIGHT) -> SpecO3Reward:
    """Spec-o3's outcome reward.

    Format is ok (0) iff the response has exactly one `<answer>` and one `</answer>`, and the tagged
    content holds a `\\boxed{c}`; any other layout is a format error (-1). The scored choice c is the
    boxed content of the tag when the format is ok, else the last `\\boxed{}` anywhere (so a correct
    but badly formatted response still earns acc = 1). acc compares answers after `normalize_answer`.
    """
    tags = _ANSWER_TAG.findall(response)
    one_tag = len(tags) == 1 and response.count("<answer>") == 1 and response.count("</answer>") == 1
    boxed = extract_boxed(tags[0]) if one_tag else None
    fmt = 0.0 if boxed is not None else -1.0
    choice = boxed if boxed is not None else extract_boxed(response)
    acc = float(answers_match(choice, truth))
    return SpecO3Reward(acc + format_weight * fmt, acc, fmt, choice)

__all__ = ["LINES", "SpecZoom", "oracle_trajectory", "render_strip"]

LINES: dict[int, str] = {  # catalogue rest wavelengths (Angstrom) and names
    4340: "H-gamma",
    4861: "H-beta",
    5007: "[OIII]",
    5175: "Mg b",
    5893: "Na D",
    6563: "H-alpha",
}
LAMBDA_MIN, LAMBDA_MAX, PIXEL = 4000.0, 7000.0, 0.5
NUM_BINS = 32
MIN_WIDTH = 16.0  # >= one pixel per bin
ORACLE_HALF_WIDTH = 16  # the expert's window: target +/- 16 A (1 A per bin)
_ZOOM = re.compile(r"^zoom\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]$")
_QUESTION = {"emission": "emission line", "absorption": "absorption line"}
_OTHER = {"emission": "absorption", "absorption": "emission"}


def _fmt(x: float) -> str:
    return f"{x:g}"


def render_strip(grid: np.ndarray, flux: np.ndarray, lmin: float, lmax: float) -> str:
    """The window [lmin, lmax] as `NUM_BINS` digits.

    Args:
      grid: [P] pixel wavelengths (increasing, uniform spacing).
      flux: [P] flux (continuum near 1).
    Returns: a string of `NUM_BINS` characters in '0'..'9': digit = clip(round(4 + 8 (mean - 1))),
      with each bin's mean over sub-samples spaced at most one pixel apart (linear interpolation).
    """
    spacing = float(grid[1] - grid[0])
    bin_width = (lmax - lmin) / NUM_BINS
    sub = max(1, int(np.ceil(bin_width / spacing)))
    offsets = (np.arange(sub) + 0.5) / sub
    points = lmin + (np.arange(NUM_BINS)[:, None] + offsets[None, :]) * bin_width  # [NUM_BINS, sub]
    means = np.interp(points, grid, flux).mean(axis=1)
    digits = np.clip(np.rint(4.0 + 8.0 * (means - 1.0)), 0, 9).astype(int)
    return "".join(str(d) for d in digits)


class SpecZoom:
    """One SpecZoom episode (see the module docstring).

    Args:
      max_steps: turn budget (Spec-o3: <= 8); the scripted expert needs 2.
      yes_rate: probability that an episode is of the rare class YES.
      noise: per-pixel Gaussian noise (continuum units).
    """

    name = "speczoom"
    task_types: tuple[str, ...] = ("emission", "absorption")

    def __init__(self, *, max_steps: int = 8, yes_rate: float = 0.3, noise: float = 0.02):
        if max_steps < 2:
            raise ValueError(f"max_steps must be >= 2 (zoom, answer); got {max_steps}")
        if not 0.0 <= yes_rate <= 1.0:
            raise ValueError(f"yes_rate must be in [0, 1]; got {yes_rate}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0; got {noise}")
        self.max_steps = max_steps
        self.yes_rate = yes_rate
        self.noise = noise
        self.grid = np.arange(LAMBDA_MIN, LAMBDA_MAX + PIXEL / 2, PIXEL)  # [P]
        self.flux: np.ndarray | None = None

    def describe(self) -> str:
        lines = ", ".join(f"{w} ({n})" for w, n in LINES.items())
        return (
            f"SpecZoom: a spectrum on {LAMBDA_MIN:.0f}-{LAMBDA_MAX:.0f} Angstrom shown as {NUM_BINS} "
            "digits (continuum ~4, emission peaks 8-9, absorption troughs 0-2). Inspect a window with "
            f"zoom[lmin,lmax] (width >= {MIN_WIDTH:.0f}); lines can only sit at the catalogue "
            f"wavelengths {lines}. Decide whether the asked-for line is present and finish with "
            "<answer>\\boxed{YES}</answer> or <answer>\\boxed{NO}</answer>."
        )

    # ----- episode state -------------------------------------------------------------------
    def reset(self, seed: int, task_id: int = 0) -> str:
        rng = np.random.default_rng([int(seed), int(task_id)])
        self.task_id = int(task_id)
        self.task_type = self.task_types[self.task_id % len(self.task_types)]
        waves = list(LINES)
        self.target = int(waves[rng.integers(len(waves))])
        self.truth = "YES" if rng.random() < self.yes_rate else "NO"
        # (rest wavelength, kind) of every line in the spectrum
        features: list[tuple[int, str]] = []
        if self.truth == "YES":
            features.append((self.target, self.task_type))
        elif rng.random() < 0.5:
            features.append((self.target, _OTHER[self.task_type]))  # a look-alike of the other kind
        others = [w for w in waves if w != self.target]
        for w in rng.choice(others, size=int(rng.integers(0, 3)), replace=False):
            features.append((int(w), _OTHER[self.task_type]))
        slope = rng.uniform(-0.1, 0.1)
        flux = 1.0 + slope * (self.grid - 5500.0) / 1500.0
        for wave, kind in features:
            center = wave + rng.uniform(-3.0, 3.0)  # small velocity shift
            sigma = rng.uniform(2.0, 3.5)
            amp = rng.uniform(0.6, 1.0) if kind == "emission" else -rng.uniform(0.4, 0.6)
            flux = flux + amp * np.exp(-0.5 * ((self.grid - center) / sigma) ** 2)
        self.flux = flux + self.noise * rng.standard_normal(self.grid.shape)
        self.features = tuple(features)
        self.goal = f"is an {_QUESTION[self.task_type]} present? YES or NO"
        self._zoomed = False
        self._steps, self._done, self._reward, self._invalid = 0, False, 0.0, False
        overview = self._strip_text(LAMBDA_MIN, LAMBDA_MAX)
        self._obs = (f"Q: {self.goal}. Act zoom[a,b] or <answer>\\boxed{{YES|NO}}</answer>.\n"
                     f"{overview}")
        return self._obs

    def _strip_text(self, lmin: float, lmax: float) -> str:
        return f"{_fmt(lmin)}-{_fmt(lmax)}: {render_strip(self.grid, self.flux, lmin, lmax)}"

    # ----- admissible actions, expert, info -----------------------------------------------
    def admissible_actions(self) -> list[str]:
        if self._done:
            return []
        return ["zoom[lmin,lmax]", "<answer>\\boxed{YES}</answer>", "<answer>\\boxed{NO}</answer>"]

    def oracle_window(self) -> tuple[int, int]:
        return self.target - ORACLE_HALF_WIDTH, self.target + ORACLE_HALF_WIDTH

    def _shows_target(self, lmin: float, lmax: float) -> bool:
        # the target's core (+/- 8 A) at >= 2 bins per 4 A: its line is readable there
        return lmin <= self.target - 8 and lmax >= self.target + 8 and lmax - lmin <= 64

    def oracle_action(self) -> str | None:
        """The scripted expert: zoom onto the target line's window once, then answer."""
        if self._done:
            return None
        if not self._zoomed:
            lo, hi = self.oracle_window()
            return f"zoom[{lo},{hi}]"
        return f"<answer>\\boxed{{{self.truth}}}</answer>"

    @property
    def info(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "goal": self.goal,
            "step": self._steps,
            "admissible_actions": self.admissible_actions(),
            "won": self._done and self._reward == 1.0,
            "score": float(min(max(self._reward, 0.0), 1.0)),
            "invalid": self._invalid,
            "privileged": f"the line to inspect is near {self.target} ({LINES[self.target]})",
            "oracle_action": self.oracle_action(),
        }

    # ----- transitions ----------------------------------------------------------------------
    def _parse_zoom(self, action: str) -> tuple[float, float] | None:
        m = _ZOOM.match(action)
        if m is None:
            return None
        lmin, lmax = float(m.group(1)), float(m.group(2))
        if lmin < LAMBDA_MIN or lmax > LAMBDA_MAX or lmax - lmin < MIN_WIDTH:
            return None
        return lmin, lmax

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.flux is None:
            raise RuntimeError("reset must be called before step")
        if self._done:
            self._invalid = False
            return self._obs, 0.0, True, self.info
        action = extract_action(action_text)
        self._steps += 1
        self._invalid = False
        reward = 0.0
        if action is not None and ("<answer>" in action or "\\boxed" in action):
            reward = speco3_reward(action, self.truth).reward
            self._done, self._obs = True, "Episode finished."
        else:
            window = self._parse_zoom(action) if action is not None else None
            self._invalid = window is None
            if window is not None:
                self._zoomed = self._zoomed or self._shows_target(*window)
                self._obs = self._strip_text(*window)
            if self._steps >= self.max_steps:  # out of turns: scored as an empty answer
                reward = speco3_reward("", self.truth).reward
                self._done, self._obs = True, "Episode finished."
        self._reward = float(reward) if self._done else 0.0
        return self._obs, self._reward, self._done, self.info


def oracle_trajectory(env: SpecZoom, seed: int, task_id: int = 0) -> list[tuple[str, str]]:
    """The scripted expert's episode as (observation, action) pairs, for cold-start SFT.

    Resets `env` to `(seed, task_id)` and follows `info["oracle_action"]` until done.
    """
    obs = env.reset(seed, task_id)
    pairs: list[tuple[str, str]] = []
    done = False
    while not done:
        action = env.info["oracle_action"]
        pairs.append((obs, action))
        obs, _, done, _ = env.step(action)
    return pairs
