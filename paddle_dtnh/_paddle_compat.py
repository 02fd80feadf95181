"""Every use of a private Paddle name and every Paddle version difference, in one place.

Paddle has no public API for what these functions do; each says which one
is missing. Checked on Paddle 3.3.1 and 2.6.2 (CPU builds, the ones these
machines can install). ``tests/test_paddle_compat.py`` fails if any other
module of the package touches a private Paddle attribute, so a Paddle
release that renames one breaks here and only here.

Versions: the oldest supported Paddle is :data:`OLDEST_SUPPORTED` (2.6),
checked once at import (:func:`check_paddle_version`). Where 2.6 and 3.x
differ, a function below named for what it does hides the difference and
says which versions do what; a feature 2.6 cannot give raises
:class:`PaddleVersionError` naming the version it needs
(:func:`require_paddle`). docs/paddle-versions.md lists the differences.

One difference cannot live here because it must act before Paddle is
imported: Paddle 2.6's ``libpaddle.so`` exports zlib's symbols, so Python's
``zlib`` must be loaded first (``_quiet.import_paddle_quietly`` does; a
program that imports ``paddle`` before ``paddle_dtnh`` on 2.6 should
``import zlib`` first).

:class:`OptimizerFacade` is the other direction: the private names Paddle
itself reads from an optimizer it is handed (``paddle.Model``, the LR
scheduler hooks of PaddleHub's Trainer, ``GradScaler``), answered from the
wrapped optimizer.
"""

from __future__ import annotations

import re

import paddle

__all__ = ["PADDLE_VERSION", "OLDEST_SUPPORTED", "PADDLE_3", "PaddleVersionError", "check_paddle_version",
           "require_paddle", "full_on", "layer_to_arguments", "is_freed_graph_error", "DEFAULT_TO_STATIC_WORKS",
           "export_hub_module",
           "OptimizerFacade", "parameter_list", "param_groups", "l2_decay_coeff", "accumulators",
           "create_accumulators", "master_weights", "learning_rate", "has_grad", "loss_scale",
           "report_found_inf", "batch_norm_statistics", "same_place", "hapi_optimizer"]


# -- versions -------------------------------------------------------------------------
def release(version: str) -> tuple:
    """``(major, minor)`` of a Paddle version string; a develop build reports
    "0.0.0" and counts as the newest release.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh._paddle_compat import release
            >>> release("2.6.2"), release("3.3.1"), release("3.0.0rc1")
            ((2, 6), (3, 3), (3, 0))
    """
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if numbers == [0, 0]:
        return (99, 0)
    return tuple(numbers + [0] * (2 - len(numbers)))


PADDLE_VERSION = release(paddle.__version__)
OLDEST_SUPPORTED = (2, 6)
# Paddle 3.0 gave paddle.full a device= argument, Layer.to a non_blocking=
# argument, and Optimizer state that loads before the first step (see below)
PADDLE_3 = PADDLE_VERSION >= (3, 0)


class PaddleVersionError(RuntimeError):
    """This feature needs a newer Paddle than the one installed."""


def _dotted(version: tuple) -> str:
    return ".".join(map(str, version))


def check_paddle_version(version: str = paddle.__version__) -> None:
    """Raise ImportError if ``version`` is older than :data:`OLDEST_SUPPORTED`."""
    if release(version) < OLDEST_SUPPORTED:
        raise ImportError(
            f"paddle_dtnh needs PaddlePaddle >= {_dotted(OLDEST_SUPPORTED)}, but Paddle {version} is installed. "
            f"Upgrade it: pip install \"paddlepaddle>={_dotted(OLDEST_SUPPORTED)}\" (or paddlepaddle-gpu for your "
            "CUDA, see the README's install section).")


def require_paddle(version: tuple, feature: str) -> None:
    """Raise :class:`PaddleVersionError` if the installed Paddle is older than
    ``version`` (``(major, minor)``), naming ``feature`` and the upgrade."""
    if PADDLE_VERSION < version:
        raise PaddleVersionError(
            f"{feature} needs PaddlePaddle >= {_dotted(version)}; Paddle {paddle.__version__} is installed. "
            f"Upgrade it: pip install \"paddlepaddle>={_dotted(version)}\" (or paddlepaddle-gpu >= "
            f"{_dotted(version)} for your CUDA).")


def full_on(place, value, dtype, shape=()) -> paddle.Tensor:
    """A constant tensor created directly on ``place`` (no copy, no host
    round trip, nothing on Paddle's default place); ``place=None`` means
    Paddle's expected place.

    Paddle >= 3.0: ``paddle.full(..., device=place)``. Paddle 2.6's
    ``paddle.full`` has no ``device`` and always uses the expected place, so
    this calls the kernel it calls, with the place (``_C_ops.full``)."""
    if PADDLE_3:
        return paddle.full(list(shape), value, dtype=dtype, device=place)
    if place is None:
        return paddle.full(list(shape), value, dtype=dtype)
    if not isinstance(dtype, paddle.dtype):
        dtype = paddle.base.framework.convert_np_dtype_to_dtype_(dtype)
    out = paddle._C_ops.full(list(shape), float(value), dtype, place)
    out.stop_gradient = True
    return out


def layer_to_arguments(device=None, dtype=None, blocking=None, non_blocking=None) -> dict:
    """The keyword arguments for ``paddle.nn.Layer.to`` that this Paddle takes,
    only those given. Paddle >= 3.0 has ``non_blocking``; Paddle 2.6 has only
    ``blocking``, so there ``non_blocking=b`` becomes ``blocking=not b``."""
    if not PADDLE_3 and non_blocking is not None:
        blocking = (not non_blocking) if blocking is None else blocking
        non_blocking = None
    given = dict(device=device, dtype=dtype, blocking=blocking, non_blocking=non_blocking)
    return {k: v for k, v in given.items() if v is not None}


# Paddle 2.6's default ``paddle.jit.to_static`` (SOT, bytecode translation)
# fails at the first call on the CPython 3.11 build checked here (NameError:
# paddle_set_eval_frame_fn); ``full_graph=True`` (AST translation) works on
# 2.6 and 3.x. PaddleHub's export calls to_static with the default, so a hub
# module exports itself on 2.6 (:func:`export_hub_module`).
DEFAULT_TO_STATIC_WORKS = PADDLE_3


def export_hub_module(module, dirname, input_spec) -> None:
    """What PaddleHub's ``ModuleV2.save_inference_model`` does for a Layer
    module (``<dirname>/<module.name>.*``), traced with ``full_graph=True``;
    for Paddle 2.6, see :data:`DEFAULT_TO_STATIC_WORKS`."""
    import os

    static = paddle.jit.to_static(module, input_spec=list(input_spec), full_graph=True)
    paddle.jit.save(static, os.path.join(dirname, module.name))


def is_freed_graph_error(err: BaseException) -> bool:
    """Whether ``err`` is Paddle saying a backward pass needs a graph that an
    earlier ``backward()`` already freed. No error class of its own: Paddle
    2.6 and 3.x (checked 2.6.2, 3.3.1) raise a RuntimeError or SystemError
    whose text names the freed "TensorWrapper"."""
    return isinstance(err, (RuntimeError, SystemError)) and "TensorWrapper" in str(err)


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
    if not PADDLE_3 and getattr(optimizer, "helper", None) is None:
        # Paddle 2.6 makes the optimizer's LayerHelper only in its first step
        # (and asserts on it in _add_accumulator); 3.x makes it on demand
        from paddle.base.layer_helper import LayerHelper
        optimizer.helper = LayerHelper(optimizer.__class__.__name__)
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
        self.set_auxiliary_var(key, value)

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
    2.6: ``_cache_founf_inf``; ``_use_dynamic_loss_scaling``, ``_update``)."""
    scaler._cache_found_inf = found_inf
    if not PADDLE_3:
        # Paddle 2.6 spells it _cache_founf_inf throughout its GradScaler
        scaler._cache_founf_inf = found_inf
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
