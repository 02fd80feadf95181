r"""Conflict rules: what DTNH does with the regularizer's gradient, as one type.

A :class:`Rule` names the three choices of the rule family (see
:func:`paddle_dtnh.projection.dtnh_direction`) and the knobs of its
reference:

* ``granularity``: the block a conflict is judged on: ``"global"`` (all
  parameters, the paper), ``"layer"`` (one tensor), ``"coordinate"`` (one
  scalar);
* ``on_conflict``: ``"project"`` removes the part of a conflicting block's
  :math:`g_\Omega` along the reference (the paper), ``"drop"`` removes the
  block's whole :math:`g_\Omega`, ``"ignore"`` keeps it (the vanilla
  regularized baseline, :math:`d = g_J + \lambda g_\Omega`);
* ``reference``: what conflicts are judged against: ``"batch"`` (this
  batch's :math:`g_J`, the paper), ``"ema"`` (a moving average of
  :math:`g_J`), ``"holdout"`` (the gradient of the empirical loss on
  held-out target data; see :mod:`paddle_dtnh.references`);
* ``max_reg_ratio``: optionally cap the kept pull at a multiple of
  :math:`\lVert g_J\rVert`.

:data:`PRESETS` is the one registry of named rules. ``"paper"`` is the
published algorithm (Wan et al., Algorithm 1) and the default everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from ._checks import check_choice, check_positive, check_positive_int, check_ratio
from .conflict import CONFLICT_RULES, register_conflict_rule
from .references import OPTIONS_OF_REFERENCES, REFERENCES, register_reference

__all__ = ["Rule", "PRESETS", "GRANULARITIES", "ON_CONFLICT", "REFERENCES", "resolve_rule",
           "register_conflict_rule", "register_reference"]

#: ``"global"``: one block of all parameters (the paper). ``"layer"``: one
#: block per parameter tensor. ``"coordinate"``: one block per scalar.
GRANULARITIES = ("global", "layer", "coordinate")

#: name -> :class:`paddle_dtnh.conflict.ConflictRule`, every registered rule
#: (a read-only live view). Built in: ``"project"``: remove the conflicting
#: component (the paper). ``"drop"``: remove a conflicting block's whole
#: regularizer gradient. ``"ignore"``: keep it (the vanilla regularized
#: step, no DTNH). Add one with :func:`register_conflict_rule`.
ON_CONFLICT = CONFLICT_RULES

# REFERENCES (imported above): name -> :class:`paddle_dtnh.references.ReferenceKind`,
# every registered reference. Built in: ``"batch"``: this batch's gJ (the
# paper). ``"ema"``: a moving average of gJ. ``"holdout"``: the gradient of
# the empirical loss on held-out data. Add one with :func:`register_reference`.


def _readers(option: str) -> str:
    """The registered references that read ``option``, as ``'ema'`` or ``'a'/'b'``."""
    return "/".join(repr(name) for name, kind in REFERENCES.items() if option in kind.reads)


def _holdout_references() -> str:
    return "/".join(repr(name) for name, kind in REFERENCES.items() if kind.takes_holdout)


@dataclass(frozen=True)
class Rule:
    r"""One conflict rule; validated when built.

    Args:
        granularity (str, optional): a value of :data:`GRANULARITIES`. Default: "global".
        on_conflict (str, optional): a name in :data:`ON_CONFLICT` (the
            registered conflict rules). Default: "project".
        reference (str, optional): a name in :data:`REFERENCES` (the
            registered references). Default: "batch".
        max_reg_ratio (float, optional): :math:`\rho > 0`: after the rule,
            the kept pull is scaled so that :math:`\lVert\lambda
            g'_\Omega\rVert \le \rho\lVert g_J\rVert`. Default: None (no cap).
        ema_decay (float, optional): :math:`\beta \in [0, 1)` of
            ``reference="ema"``. Default: 0.9.
        holdout_every (int, optional): steps between refreshes of the
            held-out gradient (``reference="holdout"``). Default: 1.
        fallback (Rule, optional): for ``reference="holdout"``: the rule a
            :class:`~paddle_dtnh.DTNH` uses instead, with a warning, when it
            is given no ``holdout=``. Default: None (a missing ``holdout=``
            is an error).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.rules import PRESETS, Rule
            >>> PRESETS["paper"] == Rule()
            True
            >>> PRESETS["paper"].replace(granularity="layer").granularity
            'layer'
    """

    granularity: str = "global"
    on_conflict: str = "project"
    reference: str = "batch"
    max_reg_ratio: float | None = None
    ema_decay: float = 0.9
    holdout_every: int = 1
    fallback: Rule | None = None

    def __post_init__(self):
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("on_conflict", self.on_conflict, ON_CONFLICT)
        check_choice("reference", self.reference, REFERENCES)
        supported = ON_CONFLICT[self.on_conflict].granularities
        if self.granularity not in supported:
            raise ValueError(f"on_conflict={self.on_conflict!r} supports granularity "
                             f"{', '.join(map(repr, supported))}, not {self.granularity!r}.")
        if self.max_reg_ratio is not None:
            object.__setattr__(self, "max_reg_ratio", check_positive("max_reg_ratio", self.max_reg_ratio))
        object.__setattr__(self, "ema_decay", check_ratio("ema_decay", self.ema_decay, low_open=False))
        object.__setattr__(self, "holdout_every", check_positive_int("holdout_every", self.holdout_every))
        self._refuse_idle_options()
        if self.fallback is not None:
            if not isinstance(self.fallback, Rule) or self.fallback.needs_holdout:
                raise ValueError(f"fallback must be a Rule whose reference is not {_holdout_references()} (it "
                                 f"stands in when no held-out loss is given), got {self.fallback!r}.")
            if not self.needs_holdout:
                raise ValueError(f"fallback is only for reference={_holdout_references()} rules "
                                 f"(this one: {self.reference!r}).")

    def _refuse_idle_options(self) -> None:
        """An option the rule would never read is an error, not a silent no-op."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if not self.projects:
            if self.max_reg_ratio is not None:
                raise ValueError("max_reg_ratio caps the pull a conflict rule keeps, but on_conflict='ignore' "
                                 "keeps it all (the vanilla step) and never applies the cap: drop max_reg_ratio, "
                                 "or use on_conflict='project' or 'drop'.")
            if self.reference != "batch":
                raise ValueError(f"on_conflict='ignore' never judges a conflict, so reference={self.reference!r} "
                                 "would never be computed (nor holdout= called): use reference='batch' "
                                 "(preset='vanilla'), or on_conflict='project' or 'drop'.")
        reads = REFERENCES[self.reference].reads
        for option in OPTIONS_OF_REFERENCES:
            if option not in reads and getattr(self, option) != defaults[option]:
                readers = _readers(option)
                raise ValueError(f"{option} is read by reference={readers} only; this rule's reference is "
                                 f"{self.reference!r}: drop {option} or set reference={readers}.")

    @property
    def projects(self) -> bool:
        """Whether the rule changes gO at all (False for the vanilla step: its
        :class:`~paddle_dtnh.conflict.ConflictRule` judges no conflict)."""
        return ON_CONFLICT[self.on_conflict].judges_conflicts

    @property
    def needs_holdout(self) -> bool:
        """Whether the reference needs ``DTNH(holdout=fn)``."""
        return REFERENCES[self.reference].takes_holdout

    def replace(self, **changes) -> Rule:
        """A copy with ``changes`` applied (None included: ``max_reg_ratio=None`` lifts a cap)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"Rule has no option {unknown[0]!r}; its options are "
                            f"{[f.name for f in dataclasses.fields(self)]}.")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The options as a plain dict (run keys, state dicts, logs); ``fallback``
        only where there is one, so rules without it keep 0.2.0's keys."""
        options = dataclasses.asdict(self)
        if self.fallback is None:
            del options["fallback"]
        return options


_NEVER_HURT = Rule(granularity="layer", on_conflict="drop", reference="ema", max_reg_ratio=1.0)

#: preset name -> :class:`Rule`. ``"paper"``: Algorithm 1 as published (the
#: default). ``"never_hurt"``: per parameter tensor, the regularizer's
#: gradient is dropped where it points against a moving average of the
#: data's gradient, and what is kept is capped at the data gradient's norm;
#: it repairs harm and gives up most of a helpful regularizer's gain.
#: ``"never_hurt_holdout"`` (deprecated, see :data:`DEPRECATED_PRESETS`): the
#: same rule judged against the gradient of the loss on held-out target data
#: (``holdout=``, refreshed every 8 steps); without ``holdout=`` it falls
#: back to ``"never_hurt"``, with a warning.
#: ``"vanilla"``: the regularized step without DTNH. ``DTNH(preset="auto",
#: fit=...)`` chooses between ``"paper"`` and ``"never_hurt"`` by a test
#: before training (:func:`paddle_dtnh.source_fit`). Evidence: docs/evidence.md.
PRESETS = MappingProxyType({
    "paper": Rule(),
    "never_hurt": _NEVER_HURT,
    "never_hurt_holdout": _NEVER_HURT.replace(reference="holdout", holdout_every=8, fallback=_NEVER_HURT),
    "vanilla": Rule(on_conflict="ignore"),
})


#: presets that lose their comparison and go in 0.6, with why and what to use
DEPRECATED_PRESETS = MappingProxyType({
    "never_hurt_holdout": (
        "preset 'never_hurt_holdout' is deprecated and goes in 0.6: compared fairly (the baselines trained on "
        "the same 10 + 4 images per class it trains and holds out), fine-tuning or L2-SP beat it on both "
        "pairs measured, by 0.5 ± 0.3 and 5.4 ± 1.2 points (docs/evidence.md). Train on those images instead "
        "(preset='never_hurt'); the rule stays available as "
        "Rule(granularity='layer', on_conflict='drop', reference='holdout', max_reg_ratio=1.0, holdout_every=8)."),
})


def resolve_rule(preset: str | Rule = "paper", **overrides) -> Rule:
    """The :class:`Rule` named by ``preset`` (a name in :data:`PRESETS` or a
    Rule), with ``overrides`` applied: every override given counts, None
    included (``max_reg_ratio=None`` switches a preset's cap off).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.rules import resolve_rule
            >>> resolve_rule("never_hurt", max_reg_ratio=None).max_reg_ratio is None
            True
    """
    if isinstance(preset, Rule):
        rule = preset
    elif isinstance(preset, str) and preset in PRESETS:
        rule = PRESETS[preset]
        if preset in DEPRECATED_PRESETS:
            import warnings

            warnings.warn(DEPRECATED_PRESETS[preset], DeprecationWarning, stacklevel=3)
    else:
        hint = (" ('auto' is a DTNH preset: DTNH(..., preset='auto', fit=paddle_dtnh.source_fit(...)))"
                if preset == "auto" else "")
        raise ValueError(f"Unknown preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))} "
                         f"or a paddle_dtnh.Rule{hint}.")
    return rule.replace(**overrides) if overrides else rule
