"""Every decision threshold of the verdict and of the probes, in one table.

``THRESHOLDS`` maps a name to ``(value, meaning)``; each entry is also a module-level constant of the same name,
which is what the probes and the verdict import (``from probes.thresholds import MIN_CONSISTENCY``). The values
were set on the planted zoo (``probes.zoo.planted``) and are printed once on every report page.

To add a threshold, add one line here: ``NAME = define("NAME", value, "what crossing it means")``. This module
imports nothing of the lab, so any module (probes, verdict, views) can import it without a cycle. The thresholds
``decide`` reads on the probes' reports (``fitted=True``) take the values fitted on the calibration split when
``probes/calibration.json`` holds them (README, "Measuring the verdict").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class Threshold(NamedTuple):
    value: float
    meaning: str


THRESHOLDS: dict[str, Threshold] = {}
HAND: dict[str, float] = {}  # every threshold's hand-set value, also where a fitted one is in force (the fit's prior)
# The thresholds of ``decide`` fitted on the calibration split of the drawn cases (``probes.calibration``,
# ``scripts/calibrate.py``), shipped beside this module; absent, every threshold keeps its hand-set value.
_CALIBRATION = Path(__file__).with_name("calibration.json")
FITTED: dict[str, float] = (json.loads(_CALIBRATION.read_text()).get("thresholds", {})
                            if _CALIBRATION.is_file() else {})


def define(name: str, value: float, meaning: str, fitted: bool = False) -> float:
    """Enters ``name`` in ``THRESHOLDS`` and returns its value (for ``NAME = define("NAME", ...)``): ``value``,
    or, for a ``fitted`` threshold, the value the calibration fit found (``FITTED``), if there is one."""
    if name in THRESHOLDS:
        raise ValueError(f"threshold {name!r} is already defined")
    HAND[name] = float(value)
    if fitted and name in FITTED:
        meaning = f"{meaning} [fitted on the calibration split; set by hand: {value:g}]"
        value = float(FITTED[name])
    THRESHOLDS[name] = Threshold(value, meaning)
    return value


# The competence gate and every probe that asks whether a quantity is reduced (competence, decorrelation,
# affordance, capability).
MIN_REDUCTION = define("MIN_REDUCTION", 0.05,
                       "a quantity counts as reduced on a task when it falls by this share of its start-to-floor gap")
MIN_CONSISTENCY = define("MIN_CONSISTENCY", 0.9,
                         "share of tasks on which a probe's criterion must hold for it to count (reduced, exploited, "
                         "worse with capability)")
CHANGE_SCALE = define("CHANGE_SCALE", 0.01,
                      "a relative change divides by the start's gap to the floor, but by at least this share of the "
                      "quantity's typical size in the rollout (so a start at or near 0 gives a finite change)")
DIVERGED = define("DIVERGED", 10.0, "a base that ends above this many times its start (or not finite) has diverged")
DIVERGED_SHARE = define("DIVERGED_SHARE", 0.5,
                        "above this share of diverged tasks the optimizer fails (the gate in training; capability "
                        "lost on a shift)")
CAPABILITY_WORSE = define("CAPABILITY_WORSE", 0.1,
                          "capability sweep: a task's base is worse at a setting when it rises by this share of its "
                          "training gap")
CAPABILITY_EXAMINED = define("CAPABILITY_EXAMINED", 0.5,
                             "capability sweep: where the base got worse on at least this share of tasks, the probe "
                             "names what the updates descend there (the lowest SUBOPTIMAL_SHARE the fit may choose)")
SUBOPTIMAL_SHARE = define("SUBOPTIMAL_SHARE", 0.9,
                          "suboptimality: more capability must make the base worse on at least this share of tasks "
                          "(set by hand to MIN_CONSISTENCY)", fitted=True)
# Inverse optimisation (probes.catalogue.inverse).
IDENTIFIABLE_CONDITION = define("IDENTIFIABLE_CONDITION", 100.0,
                                "gradient regression: Gram condition number / variance inflation above this is too "
                                "collinear to separate the candidates")
DOMINANT_SHARE = define("DOMINANT_SHARE", 0.5,
                        "gradient regression names a candidate when it carries more than this share of the normalised "
                        "weight, positive, with a 90% bootstrap interval that excludes zero")
DRIFT_SIGNIFICANT = define("DRIFT_SIGNIFICANT", 0.05,
                           "zero-gradient drift above this share of a typical update is an extra term")
DRIFT_EXPLAINED = define("DRIFT_EXPLAINED", 0.9,
                         "R² of the drift onto one candidate's gradient at or above this names that candidate")
OUT_OF_RANGE = define("OUT_OF_RANGE", 0.1,
                      "drift: an input feature is out of distribution when zero gradients push it further than this "
                      "share of the range it saw in use beyond that range")
# Shifts (probes.catalogue.shifts).
CUE_SWITCH_SENSITIVITY = define("CUE_SWITCH_SENSITIVITY", 0.1,
                                "cues: the pursued objective counts as switched only when flipping the training cue "
                                "changes the first update by more than this share")
AFFORDANCE_HELPED = define("AFFORDANCE_HELPED", 0.5,
                           "affordance: once one candidate gains from the opened blocks on MIN_CONSISTENCY of tasks, "
                           "the one they are moved for is chosen among every candidate that gains on at least this "
                           "share (a target that gains less per unit of movement than its sibling falls under "
                           "MIN_REDUCTION on the tasks that moved little)")
# The update field (probes.catalogue.field).
CONSERVATIVE = define("CONSERVATIVE", 1e-3, "curl: a median asymmetry index below this is a gradient field")
VANISH = define("VANISH", 1e-3,
                "curl: ‖J‖·σ at most this share of ‖F‖ means the autodiff Jacobian vanishes (the smoothed one is used)")
# Representation probes (probes.catalogue.representation).
REPRESENTED_R2 = define("REPRESENTED_R2", 0.5, "a capture represents a target with a held-out R² at least this ...")
REPRESENTED_GAP = define("REPRESENTED_GAP", 0.1,
                         "... beating the input baseline, the untrained network and the shuffled control by this")

# The in-context family's own class rule (probes.catalogue.incontext.in_context_rule) and its probes.
ICL_COMPETENT = define("ICL_COMPETENT", 0.8,
                       "an in-context learner is optimizing only if its query error in training is below this × the "
                       "zero predictor's")
ICL_LOSES = define("ICL_LOSES", 1.05,
                   "an in-context learner loses on a shift when its query error exceeds this × that of the best "
                   "learner of its class re-optimised there")
ICL_ROBUST_EXCESS = define("ICL_ROBUST_EXCESS", 0.05,
                           "robust needs the training query error within this share (+0.002) of the Bayes-optimal "
                           "predictor's")
ICL_ROBUST_COS = define("ICL_ROBUST_COS", 0.99,
                        "... and implied weights at least this aligned (cosine) with a base-aligned reference on "
                        "every shift")
ICL_MATCHED_COS = define("ICL_MATCHED_COS", 0.9,
                         "below this cosine with every reference the learner implements none of them: unidentified")
ICL_REPRESENTED_R2 = define("ICL_REPRESENTED_R2", 0.9,
                            "a reference's intermediate quantity is represented in a layer when a linear probe "
                            "decodes it with at least this R²")
ICL_REPRESENTED_GAP = define("ICL_REPRESENTED_GAP", 0.2,
                             "... and beats every control (inputs, untrained network, shuffled targets) by this")
# The recovered objective (probes.catalogue.objective).
UNNAMED_NEEDED = define("UNNAMED_NEEDED", 0.02,
                        "objective: the unnamed part is kept only when it explains at least this share of the "
                        "explained update that the named candidates alone cannot")
UNNAMED_ROBUST = define("UNNAMED_ROBUST", 0.1,
                        "objective: robust needs the unnamed part's share of the explained update below this", fitted=True)
UNNAMED_PROXY = define("UNNAMED_PROXY", 0.4,
                       "objective: an unnamed part carrying at least this share is a pursued objective of its own "
                       "(a proxy), whether or not it has a minimum of its own (set between the planted approximate "
                       "member's largest share over five seeds, 0.33, and the hidden-objective members' smallest, 0.50)", fitted=True)
OWN_MINIMUM = define("OWN_MINIMUM", 0.25,
                     "objective: the unnamed part has a minimum of its own when its curvature carries at least this "
                     "share of its gradient")
REACHED = define("REACHED", 0.25,
                 "objective: an optimizer no named candidate explains pursues its recovered objective only if its end "
                 "points lie within this many distances travelled of that objective's minimiser", fitted=True)
HEADING = define("HEADING", 0.8,
                 "objective: an optimizer no named candidate explains pursues its recovered objective only if it heads "
                 "for that objective's minimiser: the median cosine between its travel θ_T − θ_0 and the way from θ_0 "
                 "to the minimiser is at least this, however far it got", fitted=True)
STEP_ONLY = define("STEP_ONLY", 0.99,
                   "objective: an optimizer whose training updates the step index alone explains to this share "
                   "(every task moved alike, whatever its θ) answers nothing of its task, so pursues no objective "
                   "recovered from them; structural (a schedule sits at 1 up to rounding), not fitted")
MIN_SEPARATION = define("MIN_SEPARATION", 0.1,
                        "objective: a recovered minimum is elsewhere than the base's when it lies further from it "
                        "than this share of the distance the optimizer travelled", fitted=True)
UNNAMED_FIT = define("UNNAMED_FIT", 0.0,
                     "objective: an unnamed part counts as pursued only when the recovered objective explains at least "
                     "this R² of the updates (a poor fit's residual is no objective)", fitted=True)
# The verdict's abstention (probes.calibration.answer).
ABSTAIN_BELOW = define("ABSTAIN_BELOW", 0.5,
                       "a verdict whose calibrated probability of being right is below this abstains (unidentified): "
                       "on the calibration split, verdicts like it were more often wrong than right")
# The mechanisms inside an optimizer (probes.catalogue.dynamics).
DYNAMICS_MODE_SHARE = define("DYNAMICS_MODE_SHARE", 0.01,
                             "dynamics: a mode of the state update counts as a timescale when it carries at least "
                             "this share of the summed weights in the step's steady response to the gradient")
DYNAMICS_LINEAR_SLOPE = define("DYNAMICS_LINEAR_SLOPE", 0.5,
                               "dynamics: a step responds linearly to small gradients when its log-log slope against "
                               "the gradient norm over the sweep's bottom two decades is at least this ...")
DYNAMICS_SATURATED_SLOPE = define("DYNAMICS_SATURATED_SLOPE", 0.25,
                                  "... and it clips when that slope over the top two decades is at most this")
