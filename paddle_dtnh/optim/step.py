"""The step both loops share.

:func:`take_step` is the step as a function: (rule, lam, state, gJ, gO) in,
(direction, stats, new state) out; it touches no weight and no optimizer.
:class:`Stepper` is what the loops call once they have gathered gJ, gO, the
loss and omega: it runs :func:`take_step` on the current state and then
either lets the inner optimizer step along the direction or applies the
non-finite policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import paddle

from . import amp
from ..diagnostics import collect_step_stats
from ..projection import dtnh_direction
from .options import LamSchedule, NonFinitePolicy, Observation
from .state import StepState

__all__ = ["Step", "take_step", "Stepper", "trainable"]

_log = logging.getLogger("paddle_dtnh")


@dataclass(frozen=True)
class Step:
    """What :func:`take_step` returns: the direction per parameter (None
    where both gradients are; None as a whole when the step is skipped), the
    stats, and the state after the step."""

    directions: list | None
    stats: dict
    state: StepState

    @property
    def finite(self) -> bool:
        return self.directions is not None


def take_step(rule, lam: float, state: StepState, params, task_grads, reg_grads, *, eps: float = 1e-20,
              with_stats: bool = False, task_loss=None, reg_loss=None, measured_conflict: bool = True) -> Step:
    r"""One DTNH step as a function: the direction of ``rule`` from gJ
    (``task_grads``) and gO (``reg_grads``), judged against the reference of
    ``state``, its stats, and the new state (a non-finite direction: skipped).

    The counters of ``state`` are never changed (the new state is a new
    object); the reference it holds is shared and updates its buffers in
    place (a moving average advances; a skip restarts it), and the
    gradients are combined in place (pass gradients you own). Gradients may
    be half precision (combined in float32, the direction cast back to each
    parameter's dtype). One host read: whether the direction is finite.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import PRESETS
            >>> from paddle_dtnh.optim.state import StepState
            >>> from paddle_dtnh.optim.step import take_step
            >>> from paddle_dtnh.references import BatchReference
            >>> w = paddle.create_parameter([2], "float32")
            >>> step = take_step(PRESETS["paper"], 1.0, StepState(BatchReference()), [w],
            ...                  [paddle.to_tensor([1.0, 0.0])], [paddle.to_tensor([-1.0, 1.0])])
            >>> step.directions[0].tolist(), step.state.num_steps  # the conflicting part dropped
            ([1.0, 1.0], 1)
    """
    like = next((g for g in task_grads if g is not None), params[0])
    reference = state.reference.get(params, task_grads, state.num_steps + 1) if rule.projects else None
    # detach() shares storage (no copy) and lets Paddle write in place; in
    # hook mode that is p.grad itself, which the direction replaces anyway
    task32 = amp.in_float32([None if g is None else g.detach() for g in task_grads])
    reg32 = amp.in_float32([None if g is None else g.detach() for g in reg_grads])
    ref32 = None if reference is None else amp.in_float32(reference)
    directions, stats = dtnh_direction(task32, reg32, lam, rule, reference=ref32, eps=eps,
                                       with_stats=with_stats, inplace=True)
    directions = [d if d is None or d.dtype == p.dtype else d.astype(p.dtype) for d, p in zip(directions, params)]
    # the one host sync of a step: whether to step at all
    if not bool(amp.all_finite(directions, like)):
        return Step(None, {"skipped": True}, state.skipped())
    if not measured_conflict:
        stats.pop("conflict", None)
    stats = collect_step_stats(stats, lam=lam, task_loss=task_loss, reg_loss=reg_loss)
    return Step(directions, stats, state.applied(stats))


def trainable(params) -> list:
    """The parameters that train (``stop_gradient`` False); ValueError when none do."""
    found = [p for p in params if not p.stop_gradient]
    if not found:
        raise ValueError(
            "Every parameter of the optimizer is frozen (stop_gradient=True): there is nothing to "
            "train. Unfreeze some (p.stop_gradient = False) or build the optimizer over trainable ones."
        )
    return found


class Stepper:
    """The shared step of one DTNH, given what it needs and nothing more:
    the inner optimizer, the rule, lam and its schedule, the non-finite
    policy, the observation (which steps compute diagnostics), the
    regularizer (omega for the logs of a closed-form step) and the state,
    which it replaces at every step."""

    def __init__(self, inner, rule, lam0: float, schedule: LamSchedule, nonfinite: NonFinitePolicy,
                 observation: Observation, state: StepState, *, eps: float, regularizer=None):
        self.inner, self.rule, self.lam0, self.schedule = inner, rule, lam0, schedule
        self.nonfinite, self.observation, self.state = nonfinite, observation, state
        self.eps, self.regularizer = eps, regularizer

    @property
    def epoch(self) -> int:
        return self.schedule.epoch(self.state.num_steps, self.state.epochs_marked)

    @property
    def lam(self) -> float:
        return self.lam0 * self.schedule.lam_decay ** self.epoch

    def wants_stats(self) -> bool:
        """Diagnostics for the coming step: always, or on the logger's steps."""
        return self.observation.wants_stats(self.state.num_steps + 1)

    def __call__(self, params, task_grads, reg_grads, loss, omega, *, owns_grads: bool, scaler=None,
                 scaler_driven: bool = False, measured_conflict: bool = True) -> dict:
        """Step along the direction (or skip); the step's stats."""
        with_stats = self.wants_stats()
        step = take_step(self.rule, self.lam, self.state, params, task_grads, reg_grads, eps=self.eps,
                         with_stats=with_stats, task_loss=loss, reg_loss=omega,
                         measured_conflict=measured_conflict)
        if scaler is not None:
            amp.tell_scaler(scaler, step.finite)
        self.state = step.state
        if not step.finite:
            self._skipped(params, owns_grads, routine=scaler is not None or scaler_driven)
            return step.stats
        if with_stats and self.regularizer is not None and omega is None:
            with paddle.no_grad():  # Omega at the weights gO was taken at (a closed form's step)
                step.stats["reg_loss"] = self.regularizer().detach()
        for p, d in zip(params, step.directions):
            if d is None:
                p.clear_gradient(False)
            else:
                p.grad = d
        self.inner.step()
        if owns_grads:
            for p in params:
                p.clear_gradient(False)
        return step.stats

    def _skipped(self, params, owns_grads: bool, routine: bool) -> None:
        state, policy = self.state, self.nonfinite
        if owns_grads:
            for p in params:
                p.clear_gradient(False)
        at = state.num_steps + state.skipped_steps
        if state.consecutive_skips >= policy.max_consecutive_skips:
            raise FloatingPointError(
                f"{state.consecutive_skips} consecutive steps were skipped for a non-finite direction (the last "
                f"at step {at}): the run has diverged. Weights and optimizer state were left as at the last "
                "finite step. Try: lower the learning rate or lam, check the inputs and labels for NaN/Inf, start "
                "from the last good checkpoint; under a GradScaler, a smaller init_loss_scaling; or raise "
                "max_consecutive_skips.")
        message = f"non-finite direction at step {at} ({state.skipped_steps} skipped so far)"
        if policy.on_nonfinite == "raise" and not routine:
            raise FloatingPointError(
                message + "; weights and optimizer state were left unchanged. "
                "Lower the learning rate or lam, or set on_nonfinite='skip'."
            )
        (_log.info if routine else _log.warning)("DTNH skipped a step: %s", message)
