"""gO for DTNH's loops: the regularizer's closed form where it has one, else
``paddle.grad`` of Omega, averaged across data-parallel ranks.

The regularizers are plain losses (``forward`` returns Omega; weight
regularizers also give ``closed_form_grads()``). Taking their gradient, and
averaging it when ``paddle.DataParallel`` did not, is the optimizer's
business: it lives here, with the ``omega`` checks that name the fix.
"""

from __future__ import annotations

import paddle

from . import amp
from ..distributed import all_reduce_mean

__all__ = ["RegularizerGradient", "check_omega"]


def _parameter_names(regularizer) -> str:
    model = regularizer.model
    named = {} if model is None else {id(p): n for n, p in model.named_parameters()}
    names = [named.get(id(p), p.name) for p in regularizer.regularized_parameters()]
    return f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''} ({len(names)} parameters)"


def check_omega(regularizer, omega) -> None:
    """TypeError/ValueError unless ``omega`` is a scalar Tensor with a
    gradient path (metadata only: no host sync)."""
    if not isinstance(omega, paddle.Tensor) or omega.size != 1:
        raise TypeError(f"omega must be the regularizer's value as a scalar Tensor (reg.run(x)[1]), "
                        f"got {type(omega).__name__}.")
    if omega.stop_gradient:
        raise ValueError(
            "omega has no gradient path to the parameters (it was detached, computed under "
            "paddle.no_grad(), or is a constant): pass the regularizer's value from this forward, "
            f"`output, omega = reg.run(x)`; it must depend on {_parameter_names(regularizer)}.")


def _no_path(regularizer) -> ValueError:
    return ValueError(
        f"omega does not depend on any parameter {type(regularizer).__name__} regularizes (computed from "
        f"another model?): it must depend on {_parameter_names(regularizer)}. Use `output, omega = reg.run(x)`.")


class RegularizerGradient:
    """gO of one regularizer, aligned with the parameters asked for (None
    where Omega does not depend on one); fresh tensors (DTNH combines in place).
    Without a regularizer, gO is None everywhere and an ``omega`` is an error:
    the one "no regularizer" check of every loop.

    Args:
        regularizer (TransferRegularizer|None): the loss.
        data_parallel (bool): average ``paddle.grad`` gradients across the
            ranks (a closed form is the same on every rank: never averaged).
        pulled (set, optional): ids of the parameters whose gO is kept
            (``preset="auto"``'s decision); the others get None, and an empty
            set takes no gradient at all (the pull off). Default: None (all).
    """

    def __init__(self, regularizer, *, data_parallel: bool, pulled=None):
        self.regularizer = regularizer
        self.data_parallel = data_parallel
        self.pulled = pulled
        self._path_checked = False  # a closed form's omega is checked for its path once

    def __call__(self, params: list, omega, scale=None) -> list:
        """gO of ``omega`` (a scaled one, unscaled by ``scale``: a GradScaler's
        loss scale; a closed form never saw the scale)."""
        self.refuse_without_regularizer(omega)
        if self.regularizer is None:
            return [None] * len(params)
        grads = self._kept(params, omega)
        if scale is None or self.regularizer.has_closed_form:
            return grads
        return amp.unscaled(grads, scale)

    def refuse_without_regularizer(self, omega) -> None:
        """ValueError for an ``omega`` given to a DTNH that has no regularizer."""
        if self.regularizer is None and omega is not None:
            raise ValueError("omega was given but this DTNH has no regularizer.")

    def _kept(self, params: list, omega) -> list:
        if self.pulled is None:
            return self._all(params, omega)
        if not self.pulled:  # the pull is off: omega is still checked, for the logs
            if omega is not None:
                check_omega(self.regularizer, omega)
            return [None] * len(params)
        return [g if id(p) in self.pulled else None for p, g in zip(params, self._all(params, omega))]

    def _all(self, params: list, omega) -> list:
        reg = self.regularizer
        if reg.has_closed_form:
            if omega is not None:
                self.check(omega)
            by_id = {id(p): g for p, g in zip(reg.regularized_parameters(), reg.closed_form_grads())}
            return [by_id.get(id(p)) for p in params]
        if omega is None:
            raise ValueError(
                f"{type(reg).__name__} has no closed-form gradient: pass its value on this "
                "batch, `output, omega = reg.run(x)`, as opt.update(loss, omega) (hook mode: "
                "opt.regularize(omega) before loss.backward()). Under hub.Trainer or "
                "paddle.Model, wrap the model in paddle_dtnh.integrations.hub.TransferTask, which does this.")
        check_omega(reg, omega)
        # the graph is kept for the empirical loss's backward
        grads = paddle.grad(omega, params, retain_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            raise _no_path(reg)
        # paddle.grad gives this rank's gradient only: DataParallel never sees it
        return all_reduce_mean(grads) if self.data_parallel else list(grads)

    def check(self, omega) -> None:
        """``omega`` is Omega of this regularizer (a DTNH without one refuses
        it): a scalar with a gradient
        path (its path to the parameters is checked once: a closed form's
        steady state has no extra pass)."""
        self.refuse_without_regularizer(omega)
        check_omega(self.regularizer, omega)
        if self.regularizer.has_closed_form and not self._path_checked:
            reached = paddle.grad(omega, self.regularizer.regularized_parameters(), retain_graph=True,
                                  allow_unused=True)
            if all(g is None for g in reached):
                raise _no_path(self.regularizer)
            self._path_checked = True
