"""``preset="auto"``: from a source-fit report to what DTNH runs.

:func:`paddle_dtnh.source_fit` measures; this module decides. The test's
advantage (the source's leave-one-out probe accuracy minus a random
network's) is a noisy number: on 100 images one image is 0.01 and its paired
standard error about 0.05. A wrong "fits" costs the whole harm of a
harmful pull, a wrong "does not fit" at most the gain of a helpful one, so
the decision asks for more than the advantage's sign. Three outcomes:

* ``"fits"``: the paper's rule (``"paper"``), the pull kept;
* ``"does_not_fit"``: the pull off (``"off"``): DTNH steps on the data's
  gradient alone, with the inner optimizer's own weight decay, and still logs;
* ``"uncertain"``: ``"never_hurt"``.

The thresholds are :data:`DEFAULT_POLICY`, chosen on the discovery cells of
docs/evidence.md and fixed before the validation runs.

``preset="auto_stages"`` makes the same decision per stage of a registered
architecture (each stage's pooled features scored alike): the paper's rule
pulls the stages that fit (the stem goes with the first stage, the new head
with any stage), and the pull is off on the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Decision", "DecisionPolicy", "DEFAULT_POLICY", "OUTCOMES", "AUTO_PRESETS", "decide"]

#: what the test can say
OUTCOMES = ("fits", "uncertain", "does_not_fit")
#: the presets that take their rule from a source-fit report
AUTO_PRESETS = ("auto", "auto_stages")
#: what each outcome may run: a preset of paddle_dtnh.PRESETS, or the pull off
BRANCHES = ("paper", "never_hurt", "off")


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds from a report to an outcome.

    Args:
        fit_margin (float): "fits" needs ``advantage >= fit_margin * advantage_se``
            (and a positive advantage).
        logme_agrees (bool): "fits" also needs a positive LogME advantage.
        off_margin (float): "does not fit" when ``advantage <= -off_margin *
            advantage_se`` (0: any advantage <= 0), or when ``logme_agrees``
            and LogME's advantage is not positive either.
        if_no_fit (str), if_uncertain (str): the branch each outcome runs
            (``"paper"``, ``"never_hurt"`` or ``"off"``).
    """

    fit_margin: float
    logme_agrees: bool
    off_margin: float
    if_no_fit: str
    if_uncertain: str

    def __post_init__(self):
        for name in ("if_no_fit", "if_uncertain"):
            if getattr(self, name) not in BRANCHES:
                raise ValueError(f"{name} must be one of {BRANCHES}, got {getattr(self, name)!r}.")
        if self.fit_margin < 0 or self.off_margin < 0:
            raise ValueError("fit_margin and off_margin must be >= 0.")

    def outcome(self, advantage: float, se: float, logme_advantage: float | None = None) -> str:
        """``"fits"``, ``"uncertain"`` or ``"does_not_fit"`` for one score."""
        z = advantage / se if se > 0 else math.copysign(math.inf, advantage) if advantage else 0.0
        logme_ok = logme_advantage is None or logme_advantage > 0
        if advantage > 0 and z >= self.fit_margin and (logme_ok or not self.logme_agrees):
            return "fits"
        if advantage <= 0 and z <= -self.off_margin:
            return "does_not_fit"
        if self.logme_agrees and not logme_ok and z < self.fit_margin:
            return "does_not_fit"
        return "uncertain"

    def branch(self, outcome: str) -> str:
        return {"fits": "paper", "uncertain": self.if_uncertain, "does_not_fit": self.if_no_fit}[outcome]


#: the policy ``preset="auto"`` uses: "fits" needs the advantage at 2 SE or more and LogME's agreement,
#: "does not fit" an advantage <= 0 or LogME's disagreement short of 2 SE; the pull off where the source does
#: not fit, never_hurt where the test cannot tell. Chosen on the 12 discovery cells by
#: benchmarks/decision_discovery.py (worst cell 0.28 points, mean +0.01 among 64 candidates) and fixed before the
#: validation runs (docs/evidence.md)
DEFAULT_POLICY = DecisionPolicy(fit_margin=2.0, logme_agrees=True, off_margin=0.0, if_no_fit="off",
                                if_uncertain="never_hurt")


@dataclass(frozen=True)
class Decision:
    """What ``DTNH(preset="auto"|"auto_stages", fit=report)`` runs.

    Attributes:
        outcome (str): a value of :data:`OUTCOMES` (for stages: of the whole network).
        preset (str): ``"paper"``, ``"never_hurt"`` or ``"off"``.
        reason (str): the numbers behind it, in words.
        pulled_stages (tuple|None): ``auto_stages``: the stages whose pull
            stays on; None: the preset covers every parameter.
    """

    outcome: str
    preset: str
    reason: str
    pulled_stages: tuple | None = None


def _z_text(advantage, se) -> str:
    return "SE n/a" if se is None else f"{advantage / se:+.1f} SE" if se > 0 else "SE 0"


def decide(fit, *, stages: bool = False, policy: DecisionPolicy | None = None) -> Decision:
    """The decision for a :class:`~paddle_dtnh.SourceFit`.

    Args:
        fit (SourceFit): the report of :func:`paddle_dtnh.source_fit`.
        stages (bool, optional): decide per stage (``preset="auto_stages"``).
            Default: False.
        policy (DecisionPolicy, optional): the thresholds. Default: None
            (:data:`DEFAULT_POLICY`).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh import SourceFit
            >>> from paddle_dtnh.auto import decide
            >>> report = SourceFit(source_score=0.80, random_score=0.60, source_logme=-0.5, random_logme=-0.9,
            ...                    num_images=100, num_features=512, source_only=25, random_only=5)
            >>> decide(report).preset
            'paper'
    """
    policy = DEFAULT_POLICY if policy is None else policy
    se = fit.advantage_se
    if se is None:
        raise ValueError("This source-fit report was saved before 0.5 and has no per-image record (no "
                         "advantage_se): run paddle_dtnh.source_fit again on the training images.")
    outcome = policy.outcome(fit.advantage, se, fit.logme_advantage)
    words = {"fits": "the source fits", "uncertain": "uncertain (within the test's noise)",
             "does_not_fit": "the source does not fit"}[outcome]
    reason = (f"{words} (advantage {fit.advantage:+.3f} = {_z_text(fit.advantage, se)}, LogME "
              f"{fit.logme_advantage:+.3f})")
    if not stages:
        return Decision(outcome, policy.branch(outcome), reason)
    if not fit.stages:
        raise ValueError("preset='auto_stages' needs per-stage scores, which source_fit takes for registered "
                         "architectures only (paddle_dtnh.models.architectures.register); this report has none. "
                         "Use preset='auto'.")
    pulled = tuple(s.name for s in fit.stages if policy.outcome(s.advantage, s.advantage_se) == "fits")
    per_stage = ", ".join(f"{s.name} {s.advantage:+.2f} ({_z_text(s.advantage, s.advantage_se)})"
                          for s in fit.stages)
    reason = f"per stage: {per_stage}; pull kept on {list(pulled) if pulled else 'no stage'}"
    return Decision(outcome, "paper" if pulled else "off", reason, pulled)
