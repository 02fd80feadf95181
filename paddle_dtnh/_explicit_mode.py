"""The explicit loop, :meth:`paddle_dtnh.DTNH.update`: both gradients by
``paddle.grad`` from the batch's losses, then the shared step."""

from __future__ import annotations

import paddle

from . import _amp as amp
from ._reg_gradient import check_omega
from .distributed import all_reduce_mean

__all__ = ["ExplicitLoop"]


class ExplicitLoop:
    """``update(loss, omega)`` for one :class:`~paddle_dtnh.DTNH`."""

    def __init__(self, dtnh):
        self.dtnh = dtnh

    def averaged(self, grads) -> list:
        """The ranks' mean of this rank's ``paddle.grad`` gradients (as they are
        with ``data_parallel=False``)."""
        return all_reduce_mean(grads) if self.dtnh.data_parallel else list(grads)

    def update(self, loss, omega=None, *, scaler=None) -> dict:
        if self.dtnh._hook.pending.active:
            raise RuntimeError(
                "update() was called while regularize() results are pending for step(): use one loop per "
                "optimizer (explicit: update(loss, omega); hook: regularize(omega), loss.backward(), step()).")
        self.dtnh._hook.pending.check_batch("update()")
        self.dtnh._hook.pending.take_anchor()  # only hook mode pairs a forward with its backward
        params = self.dtnh._trainable()
        scale = amp.scale_of(scaler)
        scaled = (lambda t: t) if scale is None else (lambda t: scaler.scale(t))
        if omega is not None and not self.dtnh.rule.projects and not self.dtnh._wants_stats() and scale is None:
            # the vanilla baseline needs no separate gradients: one backward
            self.dtnh._refuse_omega_without_regularizer(omega)
            check_omega(self.dtnh.regularizer, omega)
            total = self.averaged(paddle.grad(loss + self.dtnh.lam * omega, params, allow_unused=True))
            # gO was never taken apart: no conflict was measured, so none is reported
            return self.dtnh._step_along(params, total, [None] * len(params), loss, omega, owns_grads=True,
                                         measured_conflict=False)
        # gO first: its paddle.grad keeps the graph for gJ's
        reg_grads = self.dtnh._reg_grads(params, None if omega is None else scaled(omega))
        # under data parallelism paddle.grad gives this rank's gradient only
        task_grads = self.averaged(paddle.grad(scaled(loss), params, allow_unused=True))
        if scale is not None:
            task_grads = amp.unscaled(task_grads, scale)
            reg_grads = self.dtnh._unscaled_reg(reg_grads, scale)
        return self.dtnh._step_along(params, task_grads, reg_grads, loss, omega, owns_grads=True, scaler=scaler)
