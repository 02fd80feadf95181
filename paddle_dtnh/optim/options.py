"""What ``DTNH(...)`` takes, grouped by concept.

``DTNH(inner, reg, lam=..., preset=...)`` names the two things every user
sets; the rest comes in four groups, each a small frozen object with its
defaults, or as the flat keywords of 0.4 (``lam_decay=0.9``,
``logger=...``), which fill the same groups:

* the rule: ``preset=`` and its overrides (:data:`RULE_OPTIONS`);
* :class:`LamSchedule`: how ``lam`` decays over epochs;
* :class:`NonFinitePolicy`: what a step whose direction holds NaN/Inf does;
* :class:`Observation`: the diagnostics and the logger;
* :class:`LoopOptions`: how the training loop feeds DTNH (accumulation,
  data parallelism, the model whose names key the state).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .._checks import check_choice, check_positive_int, check_ratio

__all__ = ["RULE_OPTIONS", "ACCUMULATIONS", "NONFINITE_POLICIES", "LamSchedule", "NonFinitePolicy",
           "Observation", "LoopOptions", "rule_options", "group_options", "with_model"]

#: A preset's fields a DTNH may override (see :class:`paddle_dtnh.Rule`).
RULE_OPTIONS = ("granularity", "on_conflict", "reference", "max_reg_ratio", "ema_decay", "holdout_every")

#: How the loop accumulates micro-batches in hook mode: ``"sum"``, each
#: micro-batch's loss backpropagated as it is (``paddle.Model``'s
#: ``accumulate_grad_batches``, PaddleHub's Trainer), so ``p.grad`` and gO are
#: sums; ``"mean"``, ``(loss / k).backward()``, so ``p.grad`` is the mean and
#: gO is averaged over the ``regularize`` calls (or counted once, closed form).
ACCUMULATIONS = ("sum", "mean")

#: What to do when the direction holds NaN or Inf: skip the step (and count
#: it) or raise ``FloatingPointError``. Weights and optimizer state are never
#: touched by a non-finite step either way. Under a ``GradScaler`` an
#: overflow is routine: the step is skipped and counted, never raised.
NONFINITE_POLICIES = ("skip", "raise")


@dataclass(frozen=True)
class LamSchedule:
    """``lam * lam_decay ** epoch``; an epoch ends every ``steps_per_epoch``
    applied steps, or at each ``DTNH.next_epoch()`` when that is None."""

    lam_decay: float = 1.0
    steps_per_epoch: int | None = None

    def __post_init__(self):
        check_ratio("lam_decay", self.lam_decay)
        check_positive_int("steps_per_epoch", self.steps_per_epoch, allow_none=True)

    def epoch(self, num_steps: int, marked: int) -> int:
        """Epochs finished after ``num_steps`` applied steps (``marked``: next_epoch() calls)."""
        return num_steps // self.steps_per_epoch if self.steps_per_epoch else marked


@dataclass(frozen=True)
class NonFinitePolicy:
    """A non-finite direction is skipped (``"skip"``) or raised
    (``"raise"``); ``max_consecutive_skips`` skipped in a row is a diverged
    run and raises either way."""

    on_nonfinite: str = "skip"
    max_consecutive_skips: int = 50

    def __post_init__(self):
        check_choice("on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        check_positive_int("max_consecutive_skips", self.max_consecutive_skips)


@dataclass(frozen=True, eq=False)
class Observation:
    """``track_stats``: the diagnostics every step; ``logger`` (a
    :class:`paddle_dtnh.diagnostics.StepLogger`): every applied step's stats,
    the diagnostics on its logging steps only."""

    track_stats: bool = False
    logger: object = None

    def wants_stats(self, step: int) -> bool:
        """Whether applied step ``step`` (1-based) computes the diagnostics."""
        return self.track_stats or (self.logger is not None and self.logger.wants_stats(step))


@dataclass(frozen=True, eq=False)
class LoopOptions:
    """``accumulation``: ``"sum"`` or ``"mean"`` (:data:`ACCUMULATIONS`);
    ``data_parallel``: average gradients across ranks; ``model``: the network
    being trained (its structured names key the optimizer state; its
    BatchNorms are protected from the held-out forward; default: the
    regularizer's model)."""

    accumulation: str = "sum"
    data_parallel: bool = True
    model: object = None

    def __post_init__(self):
        check_choice("accumulation", self.accumulation, ACCUMULATIONS)
        object.__setattr__(self, "data_parallel", bool(self.data_parallel))  # frozen: set once, here


_GROUPS = {"schedule": LamSchedule, "nonfinite": NonFinitePolicy, "observe": Observation, "loop": LoopOptions}


def rule_options(flat: dict) -> dict:
    """The rule's fields among the flat keywords (:data:`RULE_OPTIONS`)."""
    return {k: v for k, v in flat.items() if k in RULE_OPTIONS}


def group_options(flat: dict, **groups) -> tuple:
    """``(LamSchedule, NonFinitePolicy, Observation, LoopOptions)`` from the
    flat keywords and the group objects given (a flat keyword fills its
    group's field). TypeError for an unknown keyword, a group of the wrong
    type, or a field set to two different values, flat and in its group.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.optim.options import Observation, group_options
            >>> schedule, nonfinite, observe, loop = group_options(
            ...     {"granularity": "layer", "lam_decay": 0.5, "track_stats": True},
            ...     observe=Observation(logger=None))
            >>> schedule.lam_decay, nonfinite.on_nonfinite, observe.track_stats
            (0.5, 'skip', True)
    """
    known = set(RULE_OPTIONS).union(*[{f.name for f in fields(c)} for c in _GROUPS.values()])
    stray = sorted(set(flat) - known)
    if stray:
        raise TypeError(f"DTNH() got unexpected keyword argument(s) {stray}; it takes lam, preset, fit, holdout, "
                        f"eps, the rule's {list(RULE_OPTIONS)} and the groups' fields: "
                        + "; ".join(f"{k}= ({', '.join(f.name for f in fields(c))})" for k, c in _GROUPS.items()))
    unknown = set(groups) - set(_GROUPS)
    if unknown:
        raise TypeError(f"Unknown option group(s) {sorted(unknown)}; the groups are {sorted(_GROUPS)}.")
    built = []
    for key, cls in _GROUPS.items():
        given = {f.name: flat[f.name] for f in fields(cls) if f.name in flat}
        group = groups.get(key)
        if group is None:
            built.append(cls(**given))
            continue
        if not isinstance(group, cls):
            raise TypeError(f"{key}= must be a paddle_dtnh.optim.{cls.__name__}, got {type(group).__name__}.")
        defaults = {f.name: f.default for f in fields(cls)}
        clash = sorted(k for k, v in given.items() if getattr(group, k) is not v
                       and getattr(group, k) != defaults[k] and getattr(group, k) != v)
        if clash:
            raise TypeError(f"{clash} given two values, as keyword(s) and in {key}=; pass one.")
        built.append(replace(group, **given) if given else group)
    return tuple(built)


def with_model(loop: LoopOptions, regularizer) -> LoopOptions:
    """``loop`` with its model defaulting to the regularizer's."""
    if loop.model is not None:
        return loop
    return replace(loop, model=getattr(regularizer, "model", None))
