"""``DTNH``: wraps any Paddle optimizer and feeds it the DTNH direction.

The wrapper computes the empirical-loss gradient gJ and the regularizer
gradient gO separately, combines them with
:func:`paddle_dtnh.projection.dtnh_direction`, writes the result into each
parameter's ``.grad`` and calls the inner optimizer's ``step()``. The inner
optimizer's own update rule, learning-rate schedule, ``grad_clip`` and
``weight_decay`` are untouched; clip and decay therefore act on the
projected direction, after DTNH.
"""

from __future__ import annotations

import logging
import warnings

import paddle

from ._checks import check_choice, check_nonnegative
from .distributed import all_reduce_mean
from .projection import GRANULARITIES, dtnh_direction
from .regularizers.base import TransferRegularizer

__all__ = ["DTNH", "NONFINITE_POLICIES"]

_log = logging.getLogger("paddle_dtnh")

#: What to do when gJ or gO holds NaN or Inf: skip the step (and count it)
#: or raise ``FloatingPointError``. Weights and optimizer state are never
#: touched by a non-finite step either way.
NONFINITE_POLICIES = ("skip", "raise")

_STATE_KEY = "dtnh"
_INNER_KEY = "optimizer"


def _optimizer_parameters(optimizer) -> list:
    """Every parameter an optimizer owns, flattening parameter groups."""
    params = getattr(optimizer, "_parameter_list", None)
    if not params:
        raise TypeError(
            f"{type(optimizer).__name__} has no parameter list; pass a "
            "paddle.optimizer.Optimizer built with parameters=model.parameters()."
        )
    if isinstance(params[0], dict):
        return [p for group in params for p in group["params"]]
    return list(params)


def _coupled_weight_decay(optimizer):
    """The weight decay an optimizer adds to the gradient, or None. Momentum
    keeps an L2 coefficient of its own, fused into its update kernel; AdamW's
    decoupled decay is not a gradient term and is not reported."""
    decay = getattr(optimizer, "regularization", None)
    if decay is not None:
        return decay
    coeff = getattr(optimizer, "_regularization_coeff", 0.0)
    if coeff:
        return f"L2Decay({coeff})"
    return None


class DTNH:
    r"""Make a regularized transfer-learning step "never hurt" the data fit.

    Wraps a ``paddle.optimizer.Optimizer``. Each step it gets the gradient
    of the empirical loss :math:`g_J` and of the regularizer
    :math:`g_\Omega` separately, removes the part of :math:`g_\Omega`
    that points against :math:`g_J` (DTNH paper, Algorithm 1) and lets the
    inner optimizer step along

    .. math::

        d = g_J + \lambda \Big(g_\Omega - \frac{\min(\langle g_J, g_\Omega\rangle, 0)}
            {\lVert g_J\rVert^2} g_J\Big).

    Two ways to drive it:

    * explicit: ``opt.update(loss)`` (weight regularizers, closed-form
      :math:`g_\Omega`) or ``opt.update(loss, reg_loss)`` (feature-map
      regularizers) computes both gradients with ``paddle.grad`` and steps;
    * hook: for loops that call ``loss.backward(); opt.step()`` themselves
      (PaddleHub's Trainer, ``paddle.Model``): ``backward()`` fills
      :math:`g_J`; ``step()`` takes :math:`g_\Omega` in closed form, or from
      ``opt.regularize(reg_loss)`` called earlier in the same step.

    Args:
        optimizer (paddle.optimizer.Optimizer): the inner optimizer (SGD,
            Momentum, Adam, AdamW, ...), built over the model's parameters.
        regularizer (TransferRegularizer, optional): the transfer
            regularizer :math:`\Omega`. ``None`` trains on the empirical loss
            alone (plain fine-tuning through the same code path), unless
            ``reg_loss`` tensors are passed. Default: None.
        lam (float): the regularization coefficient :math:`\lambda \ge 0`.
        lam_decay (float, optional): multiply :math:`\lambda` by this ratio,
            in (0, 1], at every epoch (the paper's schedule). Default: 1.0.
        steps_per_epoch (int, optional): if given, an epoch ends every this
            many applied steps; otherwise call :meth:`next_epoch`. Default: None.
        granularity (str, optional): ``"global"`` (one projection over all
            parameters, as in the paper) or ``"layer"`` (one per parameter
            tensor). Default: "global".
        project (bool, optional): ``False`` steps along :math:`g_J + \lambda
            g_\Omega` without projection: the vanilla regularized baseline,
            through the same code. Default: True.
        on_nonfinite (str, optional): ``"skip"`` skips a step whose gradients
            hold NaN/Inf and counts it in :attr:`skipped_steps`; ``"raise"``
            raises ``FloatingPointError``. Default: "skip".
        track_stats (bool, optional): compute the diagnostics (angles,
            conflict, norms) into :attr:`last_stats` every step. Default: False.
        logger (paddle_dtnh.visualdl.DTNHLogger, optional): gets every applied
            step's stats; the diagnostics are computed on its logging steps
            only. Default: None.
        eps (float, optional): floor of :math:`\lVert g_J\rVert^2`. Default: 1e-20.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> import paddle.nn.functional as F
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.regularizers import L2SP
            >>> _ = paddle.seed(0)
            >>> source = paddle.nn.Linear(4, 3)
            >>> model = paddle.nn.Linear(4, 3)
            >>> _ = model.set_state_dict(source.state_dict())
            >>> reg = L2SP(model, source, alpha=0.1, beta=0.01)
            >>> opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()),
            ...            reg, lam=1.0)
            >>> x, y = paddle.randn([8, 4]), paddle.randint(0, 3, [8])
            >>> stats = opt.update(F.cross_entropy(model(x), y))
            >>> opt.num_steps
            1
    """

    def __init__(
        self,
        optimizer,
        regularizer: TransferRegularizer | None = None,
        *,
        lam: float,
        lam_decay: float = 1.0,
        steps_per_epoch: int | None = None,
        granularity: str = "global",
        project: bool = True,
        on_nonfinite: str = "skip",
        track_stats: bool = False,
        logger=None,
        eps: float = 1e-20,
    ):
        check_nonnegative("lam", lam)
        if not (isinstance(lam_decay, (int, float)) and 0 < lam_decay <= 1):
            raise ValueError(f"Invalid lam_decay: {lam_decay!r}; expected a ratio in (0, 1].")
        if steps_per_epoch is not None and not (isinstance(steps_per_epoch, int) and steps_per_epoch > 0):
            raise ValueError(
                f"Invalid steps_per_epoch: {steps_per_epoch!r}; expected a positive int or None."
            )
        check_choice("granularity", granularity, GRANULARITIES)
        check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        if isinstance(optimizer, DTNH):
            raise TypeError("optimizer is already wrapped in DTNH; wrap the inner optimizer once.")
        params = _optimizer_parameters(optimizer)
        decay = _coupled_weight_decay(optimizer)
        if isinstance(decay, TransferRegularizer):
            raise TypeError(
                "A transfer regularizer was passed as the optimizer's weight_decay; "
                "that path bypasses DTNH. Pass it as DTNH(optimizer, regularizer, lam=...)."
            )
        if decay is not None:
            warnings.warn(
                f"The inner optimizer has weight_decay={decay!r}: it is added after the "
                "DTNH projection and is never projected. To regularize under DTNH, use "
                "paddle_dtnh.regularizers.L2 (or L2SP) as the regularizer instead.",
                stacklevel=2,
            )
        if regularizer is not None:
            if not isinstance(regularizer, TransferRegularizer):
                raise TypeError(
                    "regularizer must be a paddle_dtnh.regularizers.TransferRegularizer, "
                    f"got {type(regularizer).__name__}."
                )
            owned = {id(p) for p in params}
            foreign = [p.name for p in regularizer.regularized_parameters() if id(p) not in owned]
            if foreign:
                raise ValueError(
                    f"The regularizer covers {len(foreign)} parameter(s) the optimizer does "
                    f"not own (e.g. {foreign[:5]}). Build the optimizer over the same model's "
                    "parameters as the regularizer."
                )

        self._inner = optimizer
        self._params = params
        self.regularizer = regularizer
        self.lam0 = float(lam)
        self.lam_decay = float(lam_decay)
        self.steps_per_epoch = steps_per_epoch
        self.granularity = granularity
        self.project = project
        self.on_nonfinite = on_nonfinite
        self.track_stats = track_stats
        self.logger = logger
        self.eps = eps

        self.num_steps = 0  # steps applied
        self.skipped_steps = 0  # steps skipped for non-finite gradients
        self._epoch = 0
        self.last_stats: dict = {}
        self._stashed_reg = None  # (params, grads, value) from regularize()
        self._noted_loss = None  # from note_task_loss(), for the logs

    # -- the coefficient ---------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs finished, counted by :meth:`next_epoch` or ``steps_per_epoch``."""
        if self.steps_per_epoch:
            return self.num_steps // self.steps_per_epoch
        return self._epoch

    @property
    def lam(self) -> float:
        """The current coefficient: ``lam * lam_decay ** epoch``."""
        return self.lam0 * self.lam_decay**self.epoch

    def next_epoch(self) -> None:
        """Mark the end of an epoch (decays ``lam`` by ``lam_decay``)."""
        if self.steps_per_epoch:
            raise RuntimeError(
                "steps_per_epoch is set, so epochs are counted from the steps; "
                "do not also call next_epoch()."
            )
        self._epoch += 1

    # -- the two usage modes ------------------------------------------------
    def _trainable(self) -> list:
        return [p for p in self._params if not p.stop_gradient]

    def _closed_form_grads(self, params) -> list:
        """gO aligned with ``params`` (None where Omega does not depend on p)."""
        reg = self.regularizer
        if reg is None:
            return [None] * len(params)
        by_id = {id(p): g for p, g in zip(reg.regularized_parameters(), reg.grad())}
        return [by_id.get(id(p)) for p in params]

    def _needs_autograd_reg(self) -> bool:
        return self.regularizer is not None and not self.regularizer.closed_form_grad

    def update(self, loss: paddle.Tensor, reg_loss: paddle.Tensor | None = None) -> dict:
        """Explicit mode: one DTNH step from this batch's losses.

        Args:
            loss (Tensor): the empirical loss J on the batch (not J + lam*Omega).
            reg_loss (Tensor, optional): the regularizer's value on the same
                batch, needed for regularizers without a closed-form gradient
                (KnowDist, DELTA). Default: None.

        Returns:
            dict: ``lam`` and 0-d tensors ``task_loss``, ``reg_loss`` (when
            known), the projection's ``task_sq_norm``, ``reg_sq_norm`` and
            ``inner``, and, with ``track_stats`` or on the logger's steps, the
            diagnostics of :func:`paddle_dtnh.projection.direction_stats`.
        """
        if self._needs_autograd_reg() and reg_loss is None:
            raise ValueError(
                f"{type(self.regularizer).__name__} has no closed-form gradient: "
                "pass its value for this batch, opt.update(loss, reg_loss)."
            )
        params = self._trainable()
        lam = self.lam
        if reg_loss is not None and not self.project and not self._wants_stats():
            # the vanilla baseline needs no separate gradients: one backward
            combined = all_reduce_mean(paddle.grad(loss + lam * reg_loss, params, allow_unused=True))
            return self._apply(params, combined, None, loss, reg_loss, explicit=True, combined=True)
        # under data parallelism, paddle.grad gives this rank's gradients only:
        # average them (closed-form gradients are the same on every rank)
        if reg_loss is not None:
            reg_grads = all_reduce_mean(paddle.grad(reg_loss, params, retain_graph=True, allow_unused=True))
        else:
            reg_grads = self._closed_form_grads(params)
        task_grads = all_reduce_mean(paddle.grad(loss, params, allow_unused=True))
        return self._apply(params, task_grads, reg_grads, loss, reg_loss, explicit=True)

    def regularize(self, reg_loss: paddle.Tensor) -> paddle.Tensor:
        """Hook mode: take gO of ``reg_loss`` now, for the coming :meth:`step`.

        Call it after the forward pass and before ``loss.backward()``; it keeps
        the graph alive for that backward (``retain_graph=True``).

        Args:
            reg_loss (Tensor): the regularizer's value on this batch.

        Returns:
            Tensor: ``reg_loss`` detached, for logging.
        """
        params = self._trainable()
        # backward() fills gJ all-reduced under DataParallel; gO from paddle.grad is local
        grads = all_reduce_mean(paddle.grad(reg_loss, params, retain_graph=True, allow_unused=True))
        self._stashed_reg = (params, grads, reg_loss.detach())
        return reg_loss.detach()

    def note_task_loss(self, loss: paddle.Tensor) -> None:
        """Hook mode: remember this batch's empirical loss for the logs of the
        coming :meth:`step` (when the loop calls ``step()`` without it)."""
        self._noted_loss = loss.detach()

    def step(self, loss: paddle.Tensor | None = None) -> None:
        """Hook mode: project ``p.grad`` (gJ from ``backward()``) and step.

        Args:
            loss (Tensor, optional): the empirical loss, for the logs only.
                Default: the one given to :meth:`note_task_loss`, if any.
        """
        loss = loss if loss is not None else self._noted_loss
        self._noted_loss = None
        params = self._trainable()
        task_grads = [p.grad if p._grad_ivar() is not None else None for p in params]
        reg_value = None
        if self._stashed_reg is not None:
            stashed_params, reg_grads, reg_value = self._stashed_reg
            self._stashed_reg = None
            if [id(p) for p in stashed_params] != [id(p) for p in params]:
                raise RuntimeError(
                    "The trainable parameters changed between regularize() and step()."
                )
        elif self._needs_autograd_reg():
            raise RuntimeError(
                f"{type(self.regularizer).__name__} has no closed-form gradient: call "
                "opt.regularize(reg_loss) after the forward pass and before loss.backward()."
            )
        else:
            reg_grads = self._closed_form_grads(params)
        self._apply(params, task_grads, reg_grads, loss, reg_value, explicit=False)

    def minimize(self, loss=None, startup_program=None, parameters=None, no_grad_set=None):
        """Same as :meth:`step` (``paddle.Model`` calls it after ``backward()``)."""
        self.step(loss)

    def _wants_stats(self) -> bool:
        """Diagnostics for the coming step: always, or on the logger's steps."""
        return self.track_stats or (
            self.logger is not None and self.logger.wants_stats(self.num_steps + 1)
        )

    def _apply(self, params, task_grads, reg_grads, loss, reg_loss, *, explicit, combined=False):
        lam = self.lam
        with_stats = self._wants_stats()
        if combined:
            directions, stats = list(task_grads), {}
            sq = [paddle.sum(d * d) for d in directions if d is not None]
            check = paddle.add_n(sq) if sq else paddle.zeros([])
        else:
            # detach() shares storage (no copy) and lets Paddle write in place
            task_grads = [None if g is None else g.detach() for g in task_grads]
            reg_grads = [None if g is None else g.detach() for g in reg_grads]
            directions, stats = dtnh_direction(
                task_grads,
                reg_grads,
                lam,
                granularity=self.granularity,
                eps=self.eps,
                project=self.project,
                with_stats=with_stats,
                inplace=True,  # the gradients are ours: fresh from paddle.grad / grad()
            )
            check = stats["task_sq_norm"] + stats["reg_sq_norm"]
        # the one host sync of a step: whether to step at all
        if not bool(paddle.isfinite(check)):
            self.skipped_steps += 1
            if explicit:
                for p in params:
                    p.clear_gradient(False)
            message = (
                f"non-finite gradient at step {self.num_steps + self.skipped_steps} "
                f"({self.skipped_steps} skipped so far)"
            )
            if self.on_nonfinite == "raise":
                raise FloatingPointError(
                    message + "; weights and optimizer state were left unchanged. "
                    "Lower the learning rate or lam, or set on_nonfinite='skip'."
                )
            _log.warning("DTNH skipped a step: %s", message)
            if self.logger is not None:
                self.logger.on_skip(self)
            self.last_stats = {"skipped": True}
            return self.last_stats

        if with_stats and self.regularizer is not None and reg_loss is None:
            with paddle.no_grad():  # Omega at the weights gO was taken at
                reg_loss = self.regularizer()
        for p, d in zip(params, directions):
            if d is None:
                p.clear_gradient(False)
            else:
                p.grad = d
        self._inner.step()
        if explicit:
            for p in params:
                p.clear_gradient(False)
        self.num_steps += 1

        stats = dict(stats)
        stats["lam"] = lam
        if loss is not None:
            stats["task_loss"] = loss.detach()
        if reg_loss is not None:
            stats["reg_loss"] = reg_loss.detach()
        self.last_stats = stats
        if self.logger is not None:
            self.logger.on_step(self, stats)
        return stats

    # -- Paddle's optimizer interface ------------------------------------------
    @property
    def inner(self):
        """The wrapped Paddle optimizer."""
        return self._inner

    @property
    def _learning_rate(self):
        return self._inner._learning_rate

    @_learning_rate.setter
    def _learning_rate(self, value):
        self._inner._learning_rate = value

    @property
    def _parameter_list(self):
        return self._inner._parameter_list

    def get_lr(self) -> float:
        return self._inner.get_lr()

    def set_lr(self, value: float) -> None:
        self._inner.set_lr(value)

    def clear_grad(self, set_to_zero: bool = True) -> None:
        self._stashed_reg = None
        self._inner.clear_grad(set_to_zero)

    clear_gradients = clear_grad

    def state_dict(self) -> dict:
        """The inner optimizer's state under ``"optimizer"``, DTNH's under ``"dtnh"``."""
        return {
            _INNER_KEY: self._inner.state_dict(),
            _STATE_KEY: {
                "num_steps": self.num_steps,
                "skipped_steps": self.skipped_steps,
                "epoch": self._epoch,
                "lam": self.lam0,
                "lam_decay": self.lam_decay,
                "granularity": self.granularity,
                "project": self.project,
            },
        }

    def set_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict`, or by the bare inner optimizer."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}.")
        if _STATE_KEY not in state_dict:
            # a checkpoint of the bare inner optimizer: DTNH starts its counters fresh
            self._inner.set_state_dict(state_dict)
            return
        ours = state_dict[_STATE_KEY]
        missing = {"num_steps", "skipped_steps", "epoch"} - set(ours)
        if missing or _INNER_KEY not in state_dict:
            raise ValueError(
                f"Corrupt DTNH state_dict: missing {sorted(missing) or [_INNER_KEY]}."
            )
        changed = [
            f"{k}: saved {ours[k]!r}, now {getattr(self, attr)!r}"
            for k, attr in (("lam", "lam0"), ("lam_decay", "lam_decay"),
                            ("granularity", "granularity"), ("project", "project"))
            if k in ours and ours[k] != getattr(self, attr)
        ]
        if changed:
            warnings.warn(
                "Resuming with a different DTNH configuration than saved (the "
                "current one is used): " + "; ".join(changed),
                stacklevel=2,
            )
        self._inner.set_state_dict(state_dict[_INNER_KEY])
        self.num_steps = int(ours["num_steps"])
        self.skipped_steps = int(ours["skipped_steps"])
        self._epoch = int(ours["epoch"])

    def __repr__(self) -> str:
        reg = type(self.regularizer).__name__ if self.regularizer is not None else None
        return (
            f"DTNH({type(self._inner).__name__}, regularizer={reg}, lam={self.lam0}, "
            f"lam_decay={self.lam_decay}, granularity={self.granularity!r}, "
            f"project={self.project})"
        )
