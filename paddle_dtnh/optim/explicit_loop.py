"""The explicit loop, :meth:`paddle_dtnh.DTNH.update`: both gradients by
``paddle.grad`` from the batch's losses, then the shared step."""

from __future__ import annotations

import paddle

from . import amp
from ..distributed import all_reduce_mean
from .reg_gradient import check_omega
from .step import trainable

__all__ = ["ExplicitLoop"]


class ExplicitLoop:
    """``update(loss, omega)``: gathers gJ and gO and calls the step.

    Args:
        params (list): the optimizer's parameters.
        gradient (RegularizerGradient): gO.
        stepper (Stepper): the shared step.
        pending (PendingRegularizer): the hook loop's pending gO (an
            ``update`` while it is active is an error: one loop per optimizer).
        data_parallel (bool): average gradients across ranks.
    """

    def __init__(self, params, gradient, stepper, pending, *, data_parallel: bool):
        self.params, self.gradient, self.stepper, self.pending = params, gradient, stepper, pending
        self.data_parallel = data_parallel

    def averaged(self, grads) -> list:
        """The ranks' mean of this rank's ``paddle.grad`` gradients (as they are
        with ``data_parallel=False``)."""
        return all_reduce_mean(grads) if self.data_parallel else list(grads)

    def update(self, loss, omega=None, *, scaler=None) -> dict:
        if self.pending.active:
            raise RuntimeError(
                "update() was called while regularize() results are pending for step(): use one loop per "
                "optimizer (explicit: update(loss, omega); hook: regularize(omega), loss.backward(), step()).")
        self.pending.check_batch("update()")
        self.pending.take_anchor()  # only hook mode pairs a forward with its backward
        params = trainable(self.params)
        scale = amp.scale_of(scaler)
        scaled = (lambda t: t) if scale is None else (lambda t: scaler.scale(t))
        if omega is not None and not self.stepper.rule.projects and not self.stepper.wants_stats() and scale is None:
            # the vanilla baseline needs no separate gradients: one backward
            self.gradient.refuse_without_regularizer(omega)
            check_omega(self.gradient.regularizer, omega)
            total = self.averaged(paddle.grad(loss + self.stepper.lam * omega, params, allow_unused=True))
            # gO was never taken apart: no conflict was measured, so none is reported
            return self.stepper(params, total, [None] * len(params), loss, omega, owns_grads=True,
                                measured_conflict=False)
        # gO first: its paddle.grad keeps the graph for gJ's
        reg_grads = self.gradient(params, None if omega is None else scaled(omega), scale)
        # under data parallelism paddle.grad gives this rank's gradient only
        task_grads = self.averaged(paddle.grad(scaled(loss), params, allow_unused=True))
        if scale is not None:
            task_grads = amp.unscaled(task_grads, scale)
        return self.stepper(params, task_grads, reg_grads, loss, omega, owns_grads=True, scaler=scaler)
