"""What ``DTNH(...)`` checks and decides before it wraps an optimizer (the
rule it runs: a preset, its overrides, ``"auto"``'s decision, a held-out
rule's fallback; whether the inner optimizer and the regularizer fit), and
:func:`assemble`, which builds its parts and hands each what it needs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

from .. import _paddle_compat as compat
from .._checks import check_nonnegative, check_positive
from ..auto import AUTO_PRESETS, Decision, decide
from ..regularizers.base import TransferRegularizer
from ..rules import PRESETS, Rule, resolve_rule
from ..references import make_reference
from ..transferability import SourceFit
from .checkpoint import DTNHCheckpoint, configuration
from .explicit_loop import ExplicitLoop
from .hook_loop import HookLoop
from .inner_state import StructuredState, optimizer_parameters, stable_names
from .reg_gradient import RegularizerGradient
from .state import StepState
from .step import Stepper

__all__ = ["ChosenRule", "choose_rule", "check_inner", "check_regularizer", "check_owned",
           "check_fit_source", "pulled_parameters", "Parts", "assemble"]


@dataclass(frozen=True)
class ChosenRule:
    """The rule a DTNH runs, the preset name it reports (None for a Rule
    object), and ``preset="auto"``'s test and decision (None otherwise)."""

    rule: Rule
    preset: str | None
    source_fit: SourceFit | None
    decision: Decision | None = None


def _checked_fit(preset, fit):
    """The SourceFit of ``preset="auto"`` (None for every other preset)."""
    if isinstance(preset, str) and preset in AUTO_PRESETS:
        if fit is None:
            raise ValueError(f"preset={preset!r} chooses the rule from a source-fit test run before training: "
                             "pass fit=paddle_dtnh.source_fit(source, train_images, train_labels, head=...).")
        if not isinstance(fit, SourceFit):
            raise TypeError(f"fit must be the SourceFit that paddle_dtnh.source_fit returns, got "
                            f"{type(fit).__name__}.")
        return fit
    if fit is not None:
        raise ValueError(f"fit= is only used by preset='auto' or 'auto_stages' (this DTNH runs {preset!r}): "
                         "drop fit= or pass preset='auto'.")
    return None


def _preset_name(rule: Rule):
    """The name of ``rule`` in PRESETS, or None."""
    return next((name for name, r in PRESETS.items() if r == rule), None)


def choose_rule(preset, options: dict, *, fit=None, has_holdout: bool) -> ChosenRule:
    """``preset`` with the ``options`` given (the rule's fields); "auto"
    runs what ``fit`` chose; a held-out rule without ``holdout=`` runs its
    fallback, with a warning, and reports the fallback's name: what runs is
    what the object, the log and the checkpoint say."""
    source_fit = _checked_fit(preset, fit)
    if preset == "auto_stages":
        warnings.warn("preset='auto_stages' lost to preset='auto' on the discovery cells (worst cell 43.5 points "
                      "below the better baseline against 0.3, mean +4.8 against +0.0: docs/evidence.md); it is "
                      "kept as an experiment. Use preset='auto'.", UserWarning, stacklevel=3)
    given = dict(options)
    decision = None if source_fit is None else decide(source_fit, stages=preset == "auto_stages")
    if decision is None:
        rule = resolve_rule(preset, **given)
    else:  # with the pull off, no rule ever sees a gO: the paper's stands in
        rule = resolve_rule("paper" if decision.preset == "off" else decision.preset, **given)
    name = preset if isinstance(preset, str) else None
    if not has_holdout and rule.needs_holdout and rule.fallback is not None:
        warnings.warn(
            f"{'preset ' + repr(preset) if isinstance(preset, str) else 'This rule'} judges conflicts on "
            f"held-out data, but no holdout= was given: using its fallback {rule.fallback} instead. "
            "Pass holdout=fn (a zero-argument callable returning the empirical loss on held-out target "
            "data) for the rule itself; docs/rules.md says what each does.", UserWarning, stacklevel=3)
        rule = rule.fallback
        name = _preset_name(rule)
    return ChosenRule(rule=rule, preset=name, source_fit=source_fit, decision=decision)


def check_fit_source(fit: SourceFit, regularizer) -> None:
    """``fit`` was measured on the source ``regularizer`` pulls toward, by the
    digests of the weights both hold (ValueError naming the first that
    differs); nothing to compare for a loss without a source."""
    if regularizer is None or not fit.source_digests:
        return
    pulled_toward = regularizer.source_digests()
    if not pulled_toward:
        return
    common = sorted(set(pulled_toward) & set(fit.source_digests))
    differ = [n for n in common if pulled_toward[n] != fit.source_digests[n]]
    if differ or not common:
        what = f"{len(differ)} of {len(common)} shared weight tensors differ (first: {differ[0]!r})" if differ \
            else "no weight tensor of the one has a name in the other"
        raise ValueError(f"fit= was measured on another source than the one {type(regularizer).__name__} pulls "
                         f"toward: {what}. Run paddle_dtnh.source_fit on the regularizer's source network.")


def _coupled_weight_decay(optimizer):
    """The weight decay an optimizer adds to the gradient, or None. Momentum
    keeps an L2 coefficient of its own, fused into its update kernel; AdamW's
    decoupled decay is not a gradient term and is not reported."""
    decay = getattr(optimizer, "regularization", None)
    if decay is not None:
        return decay
    coeff = compat.l2_decay_coeff(optimizer)
    if coeff:
        return f"L2Decay({coeff})"
    return None


def check_inner(optimizer, stacklevel: int = 3) -> None:
    """The inner optimizer's weight decay: a transfer regularizer there is
    an error (it would bypass DTNH), any other decay a warning (it is added
    after the projection)."""
    groups = compat.param_groups(optimizer)
    decays = [_coupled_weight_decay(optimizer)]
    # Momentum keeps a group's L2 coefficient apart from its weight_decay
    decays += [g.get("weight_decay") or (g.get("regularization_coeff") and
               f"L2Decay({g['regularization_coeff']}) in a parameter group") for g in groups]
    for decay in decays:
        if isinstance(decay, TransferRegularizer):
            raise TypeError(
                "A transfer regularizer was passed as the optimizer's weight_decay; "
                "that path bypasses DTNH. Pass it as DTNH(optimizer, regularizer, lam=...)."
            )
    found = [d for d in decays if d]
    if found:
        warnings.warn(
            f"The inner optimizer has weight_decay={found[0]!r}: it is added after the "
            "DTNH projection and is never projected. To regularize under DTNH, use "
            "paddle_dtnh.regularizers.L2 (or L2SP) as the regularizer instead.",
            stacklevel=stacklevel,
        )


def check_regularizer(regularizer, params) -> None:
    """A TransferRegularizer over parameters the optimizer owns."""
    if not isinstance(regularizer, TransferRegularizer):
        raise TypeError(
            "regularizer must be a paddle_dtnh.regularizers.TransferRegularizer, "
            f"got {type(regularizer).__name__}."
        )
    check_owned(params, [(p.name, p) for p in regularizer.regularized_parameters()],
                what="The regularizer covers {n} parameter(s) the optimizer does not own (e.g. {names}).",
                fix="Build the optimizer over the same model's parameters as the regularizer.", shown=5)


def check_owned(params, named, *, what: str, fix: str, shown: int = 3) -> None:
    """The one parameter-ownership check: ValueError unless every parameter of
    ``named`` (``(name, param)`` pairs) is one of ``params`` (by identity).
    ``what`` is formatted with ``n`` and ``names`` (the first ``shown``)."""
    owned = {id(p) for p in params}
    foreign = [name for name, p in named if id(p) not in owned]
    if foreign:
        raise ValueError(f"{what.format(n=len(foreign), names=foreign[:shown])} {fix}")


def pulled_parameters(decision: Decision | None, params, names, model):
    """The ids of the parameters whose gO a decision keeps: None for all
    (every preset but ``auto``'s "off" and ``auto_stages``), an empty set
    for the pull off, else the parameters of the pulled stages and those of
    no stage (the new head)."""
    if decision is None or (decision.preset != "off" and decision.pulled_stages is None):
        return None
    if decision.preset == "off":
        return frozenset()
    from ..models.architectures import architecture_of

    arch = architecture_of(model) if model is not None else None
    if arch is None or not arch.stage_parameters:
        raise ValueError("preset='auto_stages' maps stages to parameters through a registered architecture "
                         "(paddle_dtnh.models.architectures.register); pass model= (the network being trained) "
                         "of one, or use preset='auto'.")
    stages = set(decision.pulled_stages)
    return frozenset(id(p) for p, n in zip(params, names) if arch.stage_of(n) in stages or arch.stage_of(n) is None)


class Parts(NamedTuple):
    """A DTNH's parts: its parameters, the shared step, both loops, its checkpoint."""

    params: list
    stepper: Stepper
    explicit: ExplicitLoop
    hook: HookLoop
    checkpoint: DTNHCheckpoint


def assemble(optimizer, regularizer, chosen: ChosenRule, schedule, nonfinite, observe, loop, *, lam: float,
             holdout=None, eps: float) -> Parts:
    """Check the inner optimizer, the regularizer, ``lam`` and ``eps``, then
    build a DTNH's parts; each gets what it needs and no pointer back to it."""
    params = optimizer_parameters(optimizer)
    check_inner(optimizer, stacklevel=4)  # the warning points at the user's DTNH(...) line
    if regularizer is not None:
        check_regularizer(regularizer, params)
    if chosen.source_fit is not None:
        check_fit_source(chosen.source_fit, regularizer)
    lam, eps = check_nonnegative("lam", lam), check_positive("eps", eps)
    names = stable_names(params, loop.model)
    reference = make_reference(chosen.rule, holdout=holdout, model=loop.model)
    gradient = RegularizerGradient(regularizer, data_parallel=loop.data_parallel,
                                   pulled=pulled_parameters(chosen.decision, params, names, loop.model))
    stepper = Stepper(optimizer, chosen.rule, lam, schedule, nonfinite, observe, StepState(reference), eps=eps,
                      regularizer=regularizer)
    hook = HookLoop(params, gradient, stepper, loop.model, accumulation=loop.accumulation,
                    data_parallel=loop.data_parallel)
    explicit = ExplicitLoop(params, gradient, stepper, hook.pending, data_parallel=loop.data_parallel)
    config = configuration(lam=lam, lam_decay=schedule.lam_decay, preset=chosen.preset, rule=chosen.rule,
                           source_fit=chosen.source_fit)
    checkpoint = DTNHCheckpoint(optimizer, StructuredState(optimizer, params, names), stepper, names, params, config)
    return Parts(params, stepper, explicit, hook, checkpoint)
