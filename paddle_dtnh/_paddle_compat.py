"""Every use of a private Paddle name, in one place.

Paddle has no public API for what these functions do; each says which one
is missing. Checked on Paddle 3.3.1 (CPU build, the one these machines can
install); the names are the same in Paddle 2.6's dygraph optimizers and
GradScaler as read in its sources. ``tests/test_paddle_compat.py`` fails if
any other module of the package touches a private Paddle attribute, so a
Paddle release that renames one breaks here and only here.

:class:`OptimizerFacade` is the other direction: the private names Paddle
itself reads from an optimizer it is handed (``paddle.Model``, the LR
scheduler hooks of PaddleHub's Trainer, ``GradScaler``), answered from the
wrapped optimizer.
"""

from __future__ import annotations

import paddle

__all__ = ["OptimizerFacade", "parameter_list", "param_groups", "l2_decay_coeff", "accumulators",
           "create_accumulators", "master_weights", "learning_rate", "has_grad", "loss_scale",
           "report_found_inf", "batch_norm_statistics", "same_place", "hapi_optimizer"]


# -- optimizers -------------------------------------------------------------------
def parameter_list(optimizer):
    """The parameters (or parameter-group dicts) an optimizer was built over;
    no public getter (``Optimizer._parameter_list``)."""
    return getattr(optimizer, "_parameter_list", None)


def param_groups(optimizer) -> list:
    """The parameter-group dicts, or []; no public getter (``_param_groups``)."""
    return [g for g in getattr(optimizer, "_param_groups", None) or [] if isinstance(g, dict)]


def l2_decay_coeff(optimizer) -> float:
    """Momentum's fused L2 coefficient (``weight_decay=float``), kept apart from
    ``optimizer.regularization``; no public getter (``_regularization_coeff``)."""
    return getattr(optimizer, "_regularization_coeff", 0.0) or 0.0


def accumulators(optimizer) -> dict:
    """accumulator name -> {Paddle parameter name -> tensor}: the optimizer's
    state as tensors; ``state_dict()`` flattens it under generated names
    (``Optimizer._accumulators``)."""
    return optimizer._accumulators


def create_accumulators(optimizer, params) -> None:
    """Create the state the first ``step()`` would (zeros; master weights under
    ``multi_precision``), so a checkpoint can be loaded before any step; no
    public API (``Optimizer._create_accumulators``)."""
    block = paddle.static.default_main_program().global_block()
    optimizer._create_accumulators(block, params)


def master_weights(optimizer) -> dict:
    """Paddle parameter name -> float32 master copy under ``multi_precision``
    ({} otherwise); ``state_dict()`` only exports them (``_master_weights``)."""
    return dict(getattr(optimizer, "_master_weights", None) or {})


def learning_rate(optimizer):
    """The float or LRScheduler an optimizer was built with; ``get_lr()`` gives
    only the current value (``Optimizer._learning_rate``)."""
    return optimizer._learning_rate


def set_learning_rate(optimizer, value) -> None:
    """Replace the float or LRScheduler (what paddle.Model and PaddleHub's
    Trainer do through ``_learning_rate``)."""
    optimizer._learning_rate = value


def optimizer_name(optimizer):
    """The optimizer's name, read by ``paddle.Model.load`` (``_name``)."""
    return getattr(optimizer, "_name", None)


class OptimizerFacade:
    """What Paddle reads from an optimizer by private name, answered from
    ``self.inner``: a wrapper that is not a ``paddle.optimizer.Optimizer``
    subclass inherits it (see docs/design.md)."""

    @property
    def _name(self):
        return optimizer_name(self.inner)

    @property
    def _learning_rate(self):
        return learning_rate(self.inner)

    @_learning_rate.setter
    def _learning_rate(self, value):
        set_learning_rate(self.inner, value)

    @property
    def _parameter_list(self):
        return parameter_list(self.inner)

    @property
    def _param_groups(self):
        return getattr(self.inner, "_param_groups", None)

    # GradScaler hands found_inf to optimizers through these two
    def _set_auxiliary_var(self, key, value):
        self._aux[key] = value

    def _get_auxiliary_var(self, key):
        return self.auxiliary_var(key)


# -- tensors --------------------------------------------------------------------------
def has_grad(param) -> bool:
    """Whether ``param`` holds a gradient tensor; ``param.grad`` would build a
    Python Tensor for each call (``Tensor._grad_ivar``)."""
    return param._grad_ivar() is not None


def same_place(a, b) -> bool:
    """Whether two Places are the same device; Place has no public ``==`` (``_equals``)."""
    return a._equals(b)


# -- mixed precision ----------------------------------------------------------------------
def loss_scale(scaler):
    """The current loss scale of a GradScaler, as a 0-d tensor on its device;
    no public getter keeps it there (``GradScaler._scale``)."""
    return scaler._scale


def report_found_inf(scaler, found_inf: bool) -> None:
    """Tell a GradScaler whether this step overflowed and let it update its
    scale, as ``scaler.step()`` does after its own unscale; there is no public
    way for an optimizer that unscaled by itself (``_cache_found_inf``,
    ``_use_dynamic_loss_scaling``, ``_update``)."""
    scaler._cache_found_inf = found_inf
    if scaler._use_dynamic_loss_scaling:
        scaler._update()


# -- layers ------------------------------------------------------------------------------------
def batch_norm_statistics(model) -> list:
    """The running mean and variance tensors of every BatchNorm in ``model``:
    every BatchNorm class derives from ``_BatchNormBase`` and keeps them as
    ``_mean`` and ``_variance``; no public accessor."""
    stats = []
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            stats += [layer._mean, layer._variance]
    return stats


def hapi_optimizer(model):
    """The optimizer a ``paddle.Model`` was prepared with; no public getter
    (``Model._optimizer``)."""
    return getattr(model, "_optimizer", None)
