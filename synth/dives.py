"""What a synthetic dive is: its type (which sets the difficulty), its hidden execution factors,
and how judges turn those into scores.

The scoring rules follow diving's (and MTL-AQA's): seven judges award 0 to 10 in half points, the
highest two and lowest two are dropped, and the final score is the difficulty times the sum of
the middle three. The execution quality of a synthetic dive comes from three hidden factors that
the renderer makes visible:

* ``line_error`` (0 to 1): a loose tuck or pike, bent knees, legs apart, a wobbling body, arms
  not locked over the head at entry;
* ``entry_angle`` (degrees, signed): how far from vertical the body enters the water
  (positive: over-rotated, negative: short);
* ``splash`` (0 to 1): the size and duration of the splash, mostly caused by the other two;
* ``unseen_fault`` (0 to 1): what judges mark that the renders do not show (the take-off, the
  height reached, the come-out of the position), independent of the rest.

The true execution score is a monotone decreasing function of the faults (``true_execution``);
the unseen fault enters with weight ``unseen_weight`` (a dataset option: 0 makes everything the
judges score visible). Judges see the score with a panel bias and their own noise. The renderer
can also draw the visible faults more subtly than they are judged (``drawn_factors``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# MTL-AQA's integer codes for the annotation fields (read off its annotation pickles).
ROTATION_TYPE_CODES = {"back": 0, "forward": 1, "inward": 2, "reverse": 3}
POSITION_CODES = {"free": 0, "pike": 1, "tuck": 2}
POSITION_LETTERS = {"free": "D", "pike": "B", "tuck": "C"}

MAX_ENTRY_ANGLE = 40.0  # degrees; an entry this far off vertical counts as the worst possible
NUM_JUDGES = 7


@dataclass(frozen=True)
class DiveType:
    """A dive from the 10 m platform list: group, somersaults, twists and flight position."""

    group: str  # forward, back, reverse, inward (the direction of rotation)
    armstand: bool
    half_somersaults: int
    half_twists: int
    position: str  # tuck, pike or free
    difficulty: float
    frequency: float  # relative frequency at competitions (sets how often it is drawn)

    @property
    def number(self) -> str:
        """The FINA dive number, e.g. 107B, 5253B, 6243D."""
        group_digit = {"forward": 1, "back": 2, "reverse": 3, "inward": 4}[self.group]
        letter = POSITION_LETTERS[self.position]
        if self.armstand:
            direction = {"forward": 1, "back": 2, "reverse": 3}[self.group]
            twists = str(self.half_twists) if self.half_twists else ""
            return f"6{direction}{self.half_somersaults}{twists}{letter}"
        if self.half_twists:
            return f"5{group_digit}{self.half_somersaults}{self.half_twists}{letter}"
        return f"{group_digit}0{self.half_somersaults}{letter}"


# Dives and degrees of difficulty as they appear in MTL-AQA (10 m platform); frequencies roughly
# follow how often each appears there, so the difficulty spread is realistic (mostly 2.8 to 3.8).
DIVE_CATALOGUE: tuple[DiveType, ...] = (
    DiveType("forward", False, 3, 0, "pike", 1.6, 0.3),
    DiveType("forward", False, 5, 0, "pike", 2.4, 0.3),
    DiveType("forward", False, 7, 0, "pike", 3.0, 1.6),
    DiveType("forward", False, 9, 0, "tuck", 3.7, 0.8),
    DiveType("back", False, 5, 0, "pike", 3.0, 1.0),
    DiveType("back", False, 7, 0, "tuck", 3.3, 1.0),
    DiveType("reverse", False, 5, 0, "tuck", 2.8, 0.5),
    DiveType("reverse", False, 7, 0, "tuck", 3.4, 1.0),
    DiveType("inward", False, 3, 0, "pike", 2.0, 0.3),
    DiveType("inward", False, 5, 0, "pike", 3.0, 0.6),
    DiveType("inward", False, 7, 0, "tuck", 3.2, 1.6),
    DiveType("back", False, 3, 1, "free", 2.0, 0.2),
    DiveType("back", False, 5, 3, "pike", 3.2, 1.2),
    DiveType("back", False, 5, 5, "pike", 3.6, 0.6),
    DiveType("forward", False, 5, 4, "pike", 3.4, 0.5),
    DiveType("forward", False, 5, 6, "pike", 3.8, 0.2),
    DiveType("back", True, 4, 3, "free", 3.2, 0.7),
    DiveType("back", True, 6, 0, "tuck", 3.3, 0.4),
)


@dataclass(frozen=True)
class DiveFactors:
    """The hidden truth of one dive: what the renderer draws and what sets its scores."""

    dive: DiveType
    line_error: float
    entry_angle: float
    splash: float
    takeoff_height: float  # metres of jump above the platform (nuisance: does not change scores)
    unseen_fault: float = 0.0  # judged, never drawn


def true_execution(
    line_error: float, entry_angle: float, splash: float, unseen_fault: float = 0.0, unseen_weight: float = 0.0
) -> float:
    """The execution score (0-10) an ideal judge would give; decreasing in every fault. With
    ``unseen_weight`` w, a share w of the penalty comes from the fault the renders do not show."""
    entry_fault = min(abs(entry_angle) / MAX_ENTRY_ANGLE, 1.0)
    visible = 0.3 * float(line_error) + 0.3 * entry_fault + 0.4 * float(splash)
    penalty = (1.0 - unseen_weight) * visible + unseen_weight * float(unseen_fault)
    return float(np.clip(10.0 - 8.0 * penalty, 0.0, 10.0))


# Typical fault sizes: what ``drawn_factors`` shrinks the drawn faults towards.
TYPICAL_LINE_ERROR = 0.45
TYPICAL_SPLASH = 0.4
TYPICAL_ENTRY_ANGLE = 18.0


def drawn_factors(factors: DiveFactors, cue_strength: float) -> DiveFactors:
    """The faults as the renderer draws them: each pulled towards a typical value, keeping
    ``cue_strength`` (1: drawn as judged; 0.5: half as far from typical, so a sloppy dive and a
    clean one look more alike than their scores are apart). The order of dives is kept."""
    if cue_strength == 1.0:
        return factors

    def towards(value, typical):
        return typical + cue_strength * (value - typical)

    angle = towards(abs(factors.entry_angle), TYPICAL_ENTRY_ANGLE) * (1.0 if factors.entry_angle >= 0 else -1.0)
    return DiveFactors(factors.dive, float(np.clip(towards(factors.line_error, TYPICAL_LINE_ERROR), 0.0, 1.0)),
                       float(angle), float(np.clip(towards(factors.splash, TYPICAL_SPLASH), 0.0, 1.0)),
                       factors.takeoff_height, factors.unseen_fault)


def sample_factors(rng: np.random.Generator, dives: tuple[DiveType, ...] = DIVE_CATALOGUE) -> DiveFactors:
    """Draw one dive. A diver's overall quality drives all faults, so they are correlated
    (sloppy dives are sloppy throughout), as in real competitions."""
    weights = np.array([dive.frequency for dive in dives], dtype=float)
    dive = dives[int(rng.choice(len(dives), p=weights / weights.sum()))]
    quality = rng.beta(2.0, 2.5)  # 0 perfect .. 1 very poor
    line_error = float(np.clip(quality + rng.normal(0.0, 0.12), 0.0, 1.0))
    entry_fault = float(np.clip(quality + rng.normal(0.0, 0.12), 0.0, 1.0))
    entry_angle = float(entry_fault * MAX_ENTRY_ANGLE * (1.0 if rng.random() < 0.5 else -1.0))
    splash = float(np.clip(0.55 * entry_fault + 0.35 * line_error + 0.1 * quality + rng.normal(0.0, 0.04), 0.0, 1.0))
    takeoff_height = float(rng.uniform(0.6, 1.2))
    unseen_fault = float(rng.beta(2.0, 2.5))
    return DiveFactors(dive, line_error, entry_angle, splash, takeoff_height, unseen_fault)


def round_to_half(score: float) -> float:
    return float(np.clip(math.floor(score * 2.0 + 0.5) / 2.0, 0.0, 10.0))


def judge_scores(
    execution: float, panel_bias: np.ndarray, rng: np.random.Generator, noise: float
) -> np.ndarray:
    """Seven judges' awards: the true execution plus each judge's bias and noise, in half points."""
    raw = execution + panel_bias + rng.normal(0.0, noise, size=len(panel_bias))
    return np.array([round_to_half(score) for score in raw], dtype=np.float64)


def middle_three_sum(judges) -> float:
    return float(sum(sorted(float(score) for score in judges)[2:5]))


def final_score(difficulty: float, judges) -> float:
    """MTL-AQA's rule: difficulty times the sum of the middle three of seven judges."""
    return round(float(difficulty) * middle_three_sum(judges), 2)
