"""``DTNH``: wraps any Paddle optimizer and feeds it the DTNH direction.

DTNH itself holds what both loops share: the rule (chosen at construction,
``preset="auto"`` included), the lam schedule, the step along the direction
(:meth:`DTNH._step_along`: reference, kernel, finiteness check, the inner
optimizer's ``step()``), the skip policy, stats and logging, and its
checkpoint state. Each loop is its own object:

* :class:`paddle_dtnh._explicit_mode.ExplicitLoop`: ``update(loss, omega)``,
  both gradients by ``paddle.grad``;
* :class:`paddle_dtnh._hook_mode.HookLoop`: ``regularize(omega)`` per
  micro-batch, the loop's ``backward()``, then ``step()``.

Elsewhere: the reference (:mod:`paddle_dtnh.references`), the direction
(:func:`paddle_dtnh.projection.dtnh_direction`), mixed precision
(:mod:`paddle_dtnh._amp`), checkpoints by structured parameter names
(:mod:`paddle_dtnh._optim_state`), every private Paddle name
(:mod:`paddle_dtnh._paddle_compat`). Why DTNH wraps an optimizer instead of
subclassing ``paddle.optimizer.Optimizer``: docs/design.md.

The inner optimizer's own update rule, learning-rate schedule, ``grad_clip``
and ``weight_decay`` are untouched; clip and decay act on the direction.
"""
from __future__ import annotations

import logging

import paddle

from . import _paddle_compat as compat
from ._checks import check_choice, check_nonnegative, check_positive, check_positive_int, check_ratio
from . import _amp as amp
from ._explicit_mode import ExplicitLoop
from ._hook_mode import HookLoop
from ._reg_gradient import RegularizerGradient
from ._optim_state import StructuredState, optimizer_parameters, stable_names
from .diagnostics import collect_step_stats, notify_source_fit
from .distributed import rank
from .projection import dtnh_direction
from .references import make_reference
from .regularizers.base import TransferRegularizer
from ._checkpoint import DTNHCheckpoint
from ._construction import UNSET, check_fit_source, check_inner, check_regularizer, choose_rule, pulled_parameters
from .rules import REFERENCES, Rule

__all__ = ["DTNH", "ACCUMULATIONS", "NONFINITE_POLICIES", "REFERENCES"]

_log = logging.getLogger("paddle_dtnh")

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

class DTNH(compat.OptimizerFacade):
    r"""Make a regularized transfer-learning step "never hurt" the data fit.

    Wraps a ``paddle.optimizer.Optimizer``. Each step it gets the gradient
    of the empirical loss :math:`g_J` and of the regularizer
    :math:`g_\Omega` separately, removes the part of :math:`g_\Omega`
    that conflicts with :math:`g_J` (DTNH paper, Algorithm 1, by default)
    and lets the inner optimizer step along

    .. math::

        d = g_J + \lambda \Big(g_\Omega - \frac{\min(\langle g_J, g_\Omega\rangle, 0)}
            {\lVert g_J\rVert^2} g_J\Big).

    The same loop serves every regularizer (``output, omega = reg.run(x)``):

    * explicit: ``opt.update(loss, omega)`` takes both gradients with
      ``paddle.grad`` and steps (``scaler=`` for mixed precision);
    * hook, for loops that call ``loss.backward()`` themselves (PaddleHub's
      Trainer, ``paddle.Model``, a ``GradScaler`` loop): per micro-batch,
      ``opt.regularize(omega)`` then ``loss.backward()``; then
      ``opt.step()`` once. With gradient accumulation, say how the loop
      scales its micro-batch losses (``accumulation``); either way the step
      is the whole batch's (``"sum"``: times the number of micro-batches, as
      the loop's own gradient is). Weight regularizers may skip
      ``regularize`` (closed form).

    Args:
        optimizer (paddle.optimizer.Optimizer): the inner optimizer (SGD,
            Momentum, Adam, AdamW, ...), built over the model's parameters.
        regularizer (TransferRegularizer, optional): the transfer
            regularizer :math:`\Omega`. ``None`` trains on the empirical loss
            alone (plain fine-tuning through the same code path). Default: None.
        lam (float): the regularization coefficient :math:`\lambda \ge 0`.
        lam_decay (float, optional): multiply :math:`\lambda` by this ratio,
            in (0, 1], at every epoch (the paper's schedule). Default: 1.0.
        steps_per_epoch (int, optional): if given, an epoch ends every this
            many applied steps; otherwise call :meth:`next_epoch`. Default: None.
        preset (str|Rule, optional): a name in :data:`paddle_dtnh.PRESETS`,
            ``"auto"`` (the rule ``fit`` chose) or a :class:`paddle_dtnh.Rule`;
            the options below override its fields (``max_reg_ratio=None``
            lifts a preset's cap). Default: "paper".
        granularity (str, optional): ``"global"`` (the paper), ``"layer"``
            or ``"coordinate"``; see :class:`paddle_dtnh.Rule`.
        on_conflict (str, optional): ``"project"`` (the paper), ``"drop"``,
            or ``"ignore"`` (the vanilla regularized baseline).
        reference (str, optional): ``"batch"`` (the paper), ``"ema"`` (a
            moving average of :math:`g_J`; one gradient copy, saved in
            :meth:`state_dict`) or ``"holdout"`` (the gradient of the
            held-out loss ``holdout()``). Guarantee:
            :math:`\langle d, r\rangle \ge \langle g_J, r\rangle` for the
            reference :math:`r`.
        max_reg_ratio (float, optional): :math:`\rho > 0`: cap
            :math:`\lVert\lambda g'_\Omega\rVert \le \rho\lVert g_J\rVert`.
        ema_decay (float, optional): :math:`\beta` of ``reference="ema"``.
        holdout_every (int, optional): steps between refreshes of the
            held-out gradient.
        holdout (callable, optional): ``() -> Tensor``: the empirical loss of
            the current model on held-out target data (your loader and
            forward), for ``reference="holdout"``. BatchNorm statistics are
            left unchanged by it. Without it, a holdout rule with a
            ``fallback`` uses that rule, with a warning; one without raises
            ValueError. Default: None.
        on_nonfinite (str, optional): ``"skip"`` skips a step whose direction
            holds NaN/Inf and counts it in :attr:`skipped_steps`; ``"raise"``
            raises ``FloatingPointError``. Default: "skip".
        accumulation (str, optional): hook mode with several micro-batches
            per step: ``"sum"`` when each micro-batch's loss is backpropagated
            as it is (``paddle.Model(accumulate_grad_batches=k)``), ``"mean"``
            for the ``(loss / k).backward()`` idiom. Pass ``omega`` to
            :meth:`regularize` unscaled either way. Default: "sum".
        max_consecutive_skips (int, optional): a run whose last this many
            steps were all skipped (non-finite, GradScaler overflows
            included) has diverged: the next skip raises
            ``FloatingPointError`` with the step and what to try. Default: 50.
        track_stats (bool, optional): compute the diagnostics (angles,
            conflict, norms) into :attr:`last_stats` every step. Default: False.
        logger (paddle_dtnh.diagnostics.StepLogger, optional): gets every
            applied step's stats; the diagnostics are computed on its logging
            steps only. Default: None.
        eps (float, optional): floor of :math:`\lVert r_b\rVert^2`, > 0. Default: 1e-20.
        fit (paddle_dtnh.SourceFit, optional): for ``preset="auto"`` only:
            the result of :func:`paddle_dtnh.source_fit` on the training set;
            the paper's rule where the source fits, ``"never_hurt"`` where it
            does not. The decision is printed once, logged
            (``dtnh/source_fit/*``) and saved in :meth:`state_dict`. Default: None.
        data_parallel (bool, optional): under ``paddle.distributed`` with more
            than one process, average the gradients across the ranks (every
            rank must then step). False: this optimizer trains on its own
            process's data only, e.g. on rank 0 alone inside a multi-process
            job (no collective is called; without a regularizer or with a
            closed-form one). Default: True.
        model (paddle.nn.Layer, optional): the network being trained. Its
            structured parameter names key the optimizer state in
            :meth:`state_dict`; its BatchNorms are protected from the held-out
            forward. Default: the regularizer's model.

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
            >>> x_held, y_held = paddle.randn([6, 4]), paddle.randint(0, 3, [6])  # never trained on
            >>> opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()),
            ...            reg, lam=1.0, preset="never_hurt", reference="holdout",
            ...            holdout=lambda: F.cross_entropy(model(x_held), y_held))
            >>> x, y = paddle.randn([8, 4]), paddle.randint(0, 3, [8])
            >>> logits, omega = reg.run(x)
            >>> stats = opt.update(F.cross_entropy(logits, y), omega)
            >>> opt.num_steps, opt.rule.on_conflict, opt.rule.reference
            (1, 'drop', 'holdout')
    """

    def __init__(
        self,
        optimizer,
        regularizer: TransferRegularizer | None = None,
        *,
        lam: float,
        lam_decay: float = 1.0,
        steps_per_epoch: int | None = None,
        preset: str | Rule = "paper",
        granularity=UNSET,
        on_conflict=UNSET,
        reference=UNSET,
        max_reg_ratio=UNSET,
        ema_decay=UNSET,
        holdout_every=UNSET,
        holdout=None,
        on_nonfinite: str = "skip",
        max_consecutive_skips: int = 50,
        track_stats: bool = False,
        logger=None,
        eps: float = 1e-20,
        model: paddle.nn.Layer | None = None,
        fit=None,
        data_parallel: bool = True,
        accumulation: str = "sum",
    ):
        options = dict(granularity=granularity, on_conflict=on_conflict, reference=reference,
                       max_reg_ratio=max_reg_ratio, ema_decay=ema_decay, holdout_every=holdout_every)
        chosen = choose_rule(preset, options, fit=fit, has_holdout=holdout is not None)
        self.rule, self.preset, self.source_fit = chosen.rule, chosen.preset, chosen.source_fit
        self.decision = chosen.decision
        check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        check_choice("accumulation", accumulation, ACCUMULATIONS)
        self.accumulation = accumulation
        if isinstance(optimizer, DTNH):
            raise TypeError("optimizer is already wrapped in DTNH; wrap the inner optimizer once.")
        params = optimizer_parameters(optimizer)
        check_inner(optimizer)
        if regularizer is not None:
            check_regularizer(regularizer, params)
        if self.source_fit is not None:
            check_fit_source(self.source_fit, regularizer)

        self._inner = optimizer
        self._params = params
        self.model = model if model is not None else getattr(regularizer, "model", None)
        self._names = stable_names(params, self.model)
        self._state = StructuredState(optimizer, params, self._names)
        self.regularizer = regularizer
        self.lam0 = check_nonnegative("lam", lam)
        self.lam_decay = check_ratio("lam_decay", lam_decay)
        self.steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
        self._reference = make_reference(self.rule, holdout=holdout, model=self.model)
        self.on_nonfinite = on_nonfinite
        self.data_parallel = bool(data_parallel)
        pulled = pulled_parameters(self.decision, params, self._names, self.model)
        self._reg_gradient = None if regularizer is None else RegularizerGradient(
            regularizer, data_parallel=self.data_parallel, pulled=pulled)
        self.max_consecutive_skips = check_positive_int("max_consecutive_skips", max_consecutive_skips)
        self._consecutive_skips = 0
        self.track_stats = track_stats
        self.logger = logger
        self.eps = check_positive("eps", eps)

        self.num_steps = 0  # steps applied
        self.skipped_steps = 0  # steps skipped for a non-finite direction
        self._epoch = 0
        self.last_stats: dict = {}
        self._explicit = ExplicitLoop(self)  # update()
        self._hook = HookLoop(self)  # regularize(), step(): gO per micro-batch, paired with backward()
        self._aux = {}  # GradScaler's auxiliary variables (found_inf)
        self._checkpoint = DTNHCheckpoint(self)
        if self.source_fit is not None:
            if rank() == 0:  # one line per job, not per process
                print(f"DTNH preset {self.preset!r}: {self.source_fit.summary(self.decision)}", flush=True)
            notify_source_fit(logger, self.source_fit)

    # -- the rule's fields, read-only -------------------------------------------
    granularity = property(lambda self: self.rule.granularity)
    reference = property(lambda self: self.rule.reference)
    max_reg_ratio = property(lambda self: self.rule.max_reg_ratio)
    ema_decay = property(lambda self: self.rule.ema_decay)

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

    # -- the two loops -------------------------------------------------------
    def _trainable(self) -> list:
        params = [p for p in self._params if not p.stop_gradient]
        if not params:
            raise ValueError(
                "Every parameter of the optimizer is frozen (stop_gradient=True): there is nothing to "
                "train. Unfreeze some (p.stop_gradient = False) or build the optimizer over trainable ones."
            )
        return params

    def _refuse_omega_without_regularizer(self, omega) -> None:
        """The one "no regularizer" check of an ``omega`` (every loop's)."""
        if self.regularizer is None and omega is not None:
            raise ValueError("omega was given but this DTNH has no regularizer.")

    def _reg_grads(self, params, omega) -> list:
        """gO aligned with ``params`` (None where Omega does not depend on p)."""
        self._refuse_omega_without_regularizer(omega)
        if self.regularizer is None:
            return [None] * len(params)
        return self._reg_gradient(params, omega)

    def update(self, loss: paddle.Tensor, omega: paddle.Tensor | None = None, *, scaler=None) -> dict:
        """Explicit mode: one DTNH step from this batch's losses.

        ``loss`` must be unscaled: under mixed precision pass ``scaler=``
        rather than ``scaler.scale(loss)``, which would weigh J against
        Omega by the loss scale and step along a wrong direction.

        An empty batch is a ``ValueError`` before anything changes: the
        batch size is read from the shape of the model's last training
        forward (a Python int, no device sync), since the scalar loss of
        an empty batch (NaN under mean reduction) no longer shows it.

        Args:
            loss (Tensor): the empirical loss J on the batch (not J + lam*Omega),
                unscaled.
            omega (Tensor, optional): the regularizer's value on the same
                forward pass (``reg.run(x)[1]``). Weight regularizers may omit
                it (their gradient is known in closed form); feature-map
                regularizers need it. Default: None.
            scaler (paddle.amp.GradScaler, optional): mixed precision: pass the
                unscaled ``loss``; both backward passes run on scaled losses
                (so float16 gradients do not underflow), both gradients are
                unscaled before the rule, and the scaler skips the step on
                inf/nan and updates its scale. Default: None.

        Returns:
            dict: this step's stats (keys in :data:`paddle_dtnh.diagnostics.STATS`):
            ``lam``, ``task_loss``, ``reg_loss`` (when known), ``conflict``
            and, with ``track_stats`` or on the logger's steps, the
            diagnostics; ``{"skipped": True}`` for a skipped step.
        """
        return self._explicit.update(loss, omega, scaler=scaler)

    def regularize(self, omega: paddle.Tensor, *, scaler=None) -> paddle.Tensor:
        """Hook mode: take gO of ``omega`` now, for the coming :meth:`step`.

        Call it once per micro-batch, after the forward pass and before that
        batch's ``loss.backward()``; it keeps the graph alive for the
        backward. gO adds up over the micro-batches until :meth:`step`
        as ``backward()`` adds gJ up in ``p.grad``: summed with
        ``accumulation="sum"``, averaged with ``"mean"`` (the ``loss / k``
        idiom); pass ``omega`` unscaled either way. A ``regularize`` whose
        forward never gets its ``backward()`` makes :meth:`step` raise.

        Args:
            omega (Tensor): the regularizer's value on this batch, unscaled.
            scaler (paddle.amp.GradScaler, optional): take gO of the scaled
                ``omega`` and unscale it (float16 forwards). Default: None.

        Returns:
            Tensor: ``omega`` detached, for logging.
        """
        return self._hook.regularize(omega, scaler=scaler)

    def _unscaled_reg(self, grads, scale) -> list:
        """gO of a scaled omega, unscaled (a closed form never saw the scale)."""
        if self.regularizer is None or self.regularizer.has_closed_form:
            return grads
        return amp.unscaled(grads, scale)

    def note_task_loss(self, loss: paddle.Tensor) -> None:
        """Hook mode: remember this batch's empirical loss for the logs of the
        coming :meth:`step` (when the loop calls ``step()`` without it)."""
        self._hook.note_task_loss(loss)

    def step(self, loss: paddle.Tensor | None = None) -> None:
        """Hook mode: combine ``p.grad`` (gJ from ``backward()``) with gO and step.

        Raises ``RuntimeError``, with weights and optimizer state unchanged,
        when the gradients cannot be paired: a ``regularize`` whose forward
        got no ``backward()``, or a ``backward()`` without ``regularize``
        under a regularizer that needs it.

        Args:
            loss (Tensor, optional): the empirical loss, for the logs only.
                Default: the one given to :meth:`note_task_loss`, if any.
        """
        self._hook.step(loss)

    def minimize(self, loss=None, startup_program=None, parameters=None, no_grad_set=None):
        """What Paddle's dygraph ``minimize`` does after ``loss.backward()``:
        step with the gradients in ``p.grad`` (here: :meth:`step`). Returns
        ``(None, [(param, direction), ...])`` as Paddle's does, for
        ``GradScaler.minimize`` and ``paddle.Model``. The loss
        ``GradScaler.minimize`` hands on is scaled: it is not logged (the
        one given to :meth:`note_task_loss` is), with a warning once when a
        logger is attached."""
        self.step(loss)
        return None, [(p, p.grad) for p in self._params if not p.stop_gradient and compat.has_grad(p)]

    def auxiliary_var(self, key):
        """GradScaler's protocol: ``found_inf`` is whether the last step was
        skipped (the scaler then lowers its scale); other keys as it set them."""
        if key == "found_inf":
            return bool(self.last_stats.get("skipped", False))
        return self._aux.get(key)

    def _wants_stats(self) -> bool:
        """Diagnostics for the coming step: always, or on the logger's steps."""
        return self.track_stats or (
            self.logger is not None and self.logger.wants_stats(self.num_steps + 1)
        )

    def _step_along(self, params, task_grads, reg_grads, loss, omega, *, owns_grads, scaler=None,
                    scaler_driven=False, measured_conflict=True):
        lam = self.lam
        with_stats = self._wants_stats()
        like = next((g for g in task_grads if g is not None), params[0])
        reference = self._reference.get(params, task_grads, self.num_steps + 1) if self.rule.projects else None
        # detach() shares storage (no copy) and lets Paddle write in place; in
        # hook mode that is p.grad itself, which the direction replaces anyway
        task32 = amp.in_float32([None if g is None else g.detach() for g in task_grads])
        reg32 = amp.in_float32([None if g is None else g.detach() for g in reg_grads])
        ref32 = None if reference is None else amp.in_float32(reference)
        directions, stats = dtnh_direction(task32, reg32, lam, self.rule, reference=ref32, eps=self.eps,
                                           with_stats=with_stats, inplace=True)
        directions = [d if d is None or d.dtype == p.dtype else d.astype(p.dtype) for d, p in zip(directions, params)]
        # the one host sync of a step: whether to step at all
        finite = bool(amp.all_finite(directions, like))
        if scaler is not None:
            amp.tell_scaler(scaler, finite)
        if not finite:
            return self._skip(params, owns_grads, routine=scaler is not None or scaler_driven)
        if with_stats and self.regularizer is not None and omega is None:
            with paddle.no_grad():  # Omega at the weights gO was taken at
                omega = self.regularizer()
        for p, d in zip(params, directions):
            if d is None:
                p.clear_gradient(False)
            else:
                p.grad = d
        self._inner.step()
        if owns_grads:
            for p in params:
                p.clear_gradient(False)
        self.num_steps += 1
        self._consecutive_skips = 0
        if not measured_conflict:
            stats.pop("conflict", None)
        stats = collect_step_stats(stats, lam=lam, task_loss=loss, reg_loss=omega)
        self.last_stats = stats
        if self.logger is not None:
            self.logger.on_step(self, stats)
        return stats

    def _skip(self, params, owns_grads, routine=False) -> dict:
        self.skipped_steps += 1
        self._reference.reset()  # restart the moving average: this batch's gJ is in it
        if owns_grads:
            for p in params:
                p.clear_gradient(False)
        message = (
            f"non-finite direction at step {self.num_steps + self.skipped_steps} "
            f"({self.skipped_steps} skipped so far)"
        )
        self.last_stats = {"skipped": True}
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise FloatingPointError(
                f"{self._consecutive_skips} consecutive steps were skipped for a non-finite direction (the last "
                f"at step {self.num_steps + self.skipped_steps}): the run has diverged. Weights and optimizer "
                "state were left as at the last finite step. Try: lower the learning rate or lam, check the "
                "inputs and labels for NaN/Inf, start from the last good checkpoint; under a GradScaler, a "
                "smaller init_loss_scaling; or raise max_consecutive_skips.")
        if self.on_nonfinite == "raise" and not routine:
            raise FloatingPointError(
                message + "; weights and optimizer state were left unchanged. "
                "Lower the learning rate or lam, or set on_nonfinite='skip'."
            )
        (_log.info if routine else _log.warning)("DTNH skipped a step: %s", message)
        if self.logger is not None:
            self.logger.on_skip(self)
        return self.last_stats

    # -- Paddle's optimizer interface ------------------------------------------
    @property
    def inner(self):
        """The wrapped Paddle optimizer."""
        return self._inner

    @property
    def parameters(self) -> list:
        """Every parameter the inner optimizer owns."""
        return list(self._params)

    def get_lr(self) -> float:
        return self._inner.get_lr()

    def set_lr(self, value: float) -> None:
        self._inner.set_lr(value)

    def clear_grad(self, set_to_zero: bool = True) -> None:
        self._hook.pending.clear()
        self._aux = {}
        self._inner.clear_grad(set_to_zero)

    clear_gradients = clear_grad

    def state_dict(self) -> dict:
        """The inner optimizer's state under ``"optimizer"`` (accumulators keyed
        by the model's structured parameter names, so resuming never depends
        on the order layers were created in), DTNH's under ``"dtnh"``
        (counters, configuration, the reference's state: the moving average
        or the held-out gradient). Layout: :mod:`paddle_dtnh._checkpoint`."""
        return self._checkpoint.state_dict()

    def check_state_dict(self, state_dict) -> None:
        """Raise ValueError (naming the item and the fix) unless ``state_dict``
        fits this optimizer; nothing is changed."""
        self._checkpoint.validated(state_dict)

    def set_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict` (or, where its generated names
        still match, by the bare inner optimizer). All or nothing: the whole dict
        is checked (names, shapes, dtypes) before anything is written; a
        configuration other than the saved one warns, naming what changed."""
        self._checkpoint.load(state_dict)

    def __repr__(self) -> str:
        reg = type(self.regularizer).__name__ if self.regularizer is not None else None
        return f"DTNH({type(self._inner).__name__}, regularizer={reg}, lam={self.lam0}, {self.rule})"
