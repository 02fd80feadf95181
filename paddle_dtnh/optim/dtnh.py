"""``DTNH``: wraps any Paddle optimizer and feeds it the DTNH direction.

DTNH builds its parts (:func:`paddle_dtnh.optim.construction.assemble`) and
hands each what it needs; none of them holds a pointer back to DTNH:

* :class:`~paddle_dtnh.optim.step.Stepper`: the step both loops share
  (:func:`~paddle_dtnh.optim.step.take_step`: (rule, lam, state, gJ, gO) ->
  (direction, stats, new state)), the non-finite policy, the inner step;
* :class:`~paddle_dtnh.optim.explicit_loop.ExplicitLoop` (``update``) and
  :class:`~paddle_dtnh.optim.hook_loop.HookLoop` (``regularize``, the loop's
  ``backward()``, ``step``): they gather gJ and gO and call the stepper;
* :class:`~paddle_dtnh.optim.reg_gradient.RegularizerGradient`: gO;
* :class:`~paddle_dtnh.optim.checkpoint.DTNHCheckpoint`: the inner
  optimizer's state and the :class:`~paddle_dtnh.optim.state.StepState`.

DTNH itself keeps the public entry points, the logger calls and the
configuration. Why it wraps an optimizer instead of subclassing
``paddle.optimizer.Optimizer``: docs/design.md. The inner optimizer's own
update rule, learning-rate schedule, ``grad_clip`` and ``weight_decay`` are
untouched; clip and decay act on the direction.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import paddle

from .. import _paddle_compat as compat
from ..diagnostics import notify_source_fit
from ..distributed import rank
from ..regularizers.base import TransferRegularizer
from ..rules import Rule
from .construction import assemble, choose_rule
from .options import (ACCUMULATIONS, NONFINITE_POLICIES, LamSchedule, LoopOptions, NonFinitePolicy, Observation,
                      group_options, rule_options, with_model)

__all__ = ["DTNH", "ACCUMULATIONS", "NONFINITE_POLICIES"]

_log = logging.getLogger("paddle_dtnh")


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
        preset (str|Rule, optional): a name in :data:`paddle_dtnh.PRESETS`,
            ``"auto"`` (what ``fit`` decided: :mod:`paddle_dtnh.auto`) or a
            :class:`paddle_dtnh.Rule`; the rule's fields given as keywords
            override it (``granularity``, ``on_conflict``, ``reference``,
            ``max_reg_ratio``, ``ema_decay``, ``holdout_every``: see
            :class:`paddle_dtnh.Rule`; ``max_reg_ratio=None`` lifts a preset's
            cap). Default: "paper".
        fit (paddle_dtnh.SourceFit, optional): for ``preset="auto"`` only:
            :func:`paddle_dtnh.source_fit` on the training set. The decision
            is logged once (logger ``paddle_dtnh``, rank 0), given to the
            logger's ``on_source_fit`` and saved in :meth:`state_dict`. Default: None.
        holdout (callable, optional): ``() -> Tensor``: the empirical loss of
            the current model on held-out target data, for
            ``reference="holdout"`` (BatchNorm statistics left unchanged).
            Without it, a holdout rule with a ``fallback`` uses that rule,
            with a warning; one without raises ValueError. Default: None.
        schedule (LamSchedule, optional): ``lam_decay`` (times :math:`\lambda`
            at every epoch, in (0, 1]; default 1.0) and ``steps_per_epoch``
            (an epoch every this many applied steps; default: at each
            :meth:`next_epoch`).
        nonfinite (NonFinitePolicy, optional): ``on_nonfinite``: ``"skip"``
            (default) skips a step whose direction holds NaN/Inf and counts it
            in :attr:`skipped_steps`, ``"raise"`` raises ``FloatingPointError``;
            ``max_consecutive_skips`` (default 50) skipped in a row raise
            either way (a diverged run).
        observe (Observation, optional): ``track_stats`` (the diagnostics
            into :attr:`last_stats` every step; default False) and ``logger``
            (a :class:`paddle_dtnh.diagnostics.StepLogger`: every applied
            step's stats, diagnostics on its logging steps only).
        loop (LoopOptions, optional): ``accumulation`` (hook mode:
            ``"sum"`` when each micro-batch's loss is backpropagated as it is,
            ``"mean"`` for ``(loss / k).backward()``; default "sum"),
            ``data_parallel`` (average gradients across ranks, every rank
            must step; False trains on this process's data alone; default
            True) and ``model`` (the network trained: its structured names
            key the state, its BatchNorms are protected from the held-out
            forward; default: the regularizer's model).
        eps (float, optional): floor of :math:`\lVert r_b\rVert^2`, > 0. Default: 1e-20.
        **options: the rule's fields above, and any group's field as a flat
            keyword (``lam_decay=0.9``, ``logger=...``, ``accumulation="mean"``),
            as in 0.4.

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

    def __init__(self, optimizer, regularizer: TransferRegularizer | None = None, *, lam: float,
                 preset: str | Rule = "paper", fit=None, holdout=None, schedule: LamSchedule | None = None,
                 nonfinite: NonFinitePolicy | None = None, observe: Observation | None = None,
                 loop: LoopOptions | None = None, eps: float = 1e-20, **options):
        self._chosen = choose_rule(preset, rule_options(options), fit=fit, has_holdout=holdout is not None)
        schedule, nonfinite, observe, loop = group_options(
            options, schedule=schedule, nonfinite=nonfinite, observe=observe, loop=loop)
        if isinstance(optimizer, DTNH):
            raise TypeError("optimizer is already wrapped in DTNH; wrap the inner optimizer once.")
        self._loop = with_model(loop, regularizer)
        parts = assemble(optimizer, regularizer, self._chosen, schedule, nonfinite, observe, self._loop,
                         lam=lam, holdout=holdout, eps=eps)
        self._inner, self._params = optimizer, parts.params
        self._stepper, self._explicit, self._hook, self._checkpoint = parts.stepper, parts.explicit, parts.hook, \
            parts.checkpoint
        if self.source_fit is not None:
            if rank() == 0:  # one line per job, not per process
                _log.info("DTNH preset %r: %s", self.preset, self.source_fit.summary(self.decision))
            notify_source_fit(self.logger, self.source_fit)

    # -- what it was built with, the groups' settings and the state: read-only ---
    rule = property(lambda self: self._chosen.rule, doc="The :class:`~paddle_dtnh.Rule` that runs.")
    preset = property(lambda self: self._chosen.preset, doc="The preset's name (None for a Rule object).")
    source_fit = property(lambda self: self._chosen.source_fit, doc="``preset='auto'``'s SourceFit, or None.")
    decision = property(lambda self: self._chosen.decision, doc="``preset='auto'``'s Decision, or None.")
    regularizer = property(lambda self: self._stepper.regularizer)
    model = property(lambda self: self._loop.model, doc="The network trained (its names key the state).")
    lam0 = property(lambda self: self._stepper.lam0, doc="``lam`` as given.")
    eps = property(lambda self: self._stepper.eps)
    granularity = property(lambda self: self.rule.granularity)
    reference = property(lambda self: self.rule.reference)
    max_reg_ratio = property(lambda self: self.rule.max_reg_ratio)
    ema_decay = property(lambda self: self.rule.ema_decay)
    lam_decay = property(lambda self: self._stepper.schedule.lam_decay)
    steps_per_epoch = property(lambda self: self._stepper.schedule.steps_per_epoch)
    on_nonfinite = property(lambda self: self._stepper.nonfinite.on_nonfinite)
    max_consecutive_skips = property(lambda self: self._stepper.nonfinite.max_consecutive_skips)
    accumulation = property(lambda self: self._loop.accumulation)
    data_parallel = property(lambda self: self._loop.data_parallel)
    num_steps = property(lambda self: self._stepper.state.num_steps, doc="Steps applied.")
    skipped_steps = property(lambda self: self._stepper.state.skipped_steps,
                             doc="Steps skipped for a non-finite direction.")
    last_stats = property(lambda self: self._stepper.state.last_stats, doc="The last step's stats.")
    state = property(lambda self: self._stepper.state, doc="The :class:`~paddle_dtnh.optim.StepState`.")

    @property
    def logger(self):
        """The :class:`~paddle_dtnh.diagnostics.StepLogger` (settable)."""
        return self._stepper.observation.logger

    @logger.setter
    def logger(self, logger):
        self._stepper.observation = replace(self._stepper.observation, logger=logger)

    @property
    def track_stats(self) -> bool:
        """Whether every step computes the diagnostics (settable)."""
        return self._stepper.observation.track_stats

    @track_stats.setter
    def track_stats(self, value: bool):
        self._stepper.observation = replace(self._stepper.observation, track_stats=bool(value))

    # -- the coefficient ---------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs finished, counted by :meth:`next_epoch` or ``steps_per_epoch``."""
        return self._stepper.epoch

    @property
    def lam(self) -> float:
        """The current coefficient: ``lam * lam_decay ** epoch``."""
        return self._stepper.lam

    def next_epoch(self) -> None:
        """Mark the end of an epoch (decays ``lam`` by ``lam_decay``)."""
        if self.steps_per_epoch:
            raise RuntimeError("steps_per_epoch is set, so epochs are counted from the steps; "
                               "do not also call next_epoch().")
        self._stepper.state = self._stepper.state.next_epoch()

    # -- the two loops: each gathers gJ and gO and calls the shared step ---------
    def update(self, loss: paddle.Tensor, omega: paddle.Tensor | None = None, *, scaler=None) -> dict:
        """Explicit mode: one DTNH step from this batch's losses.

        ``loss`` must be unscaled: under mixed precision pass ``scaler=``
        rather than ``scaler.scale(loss)``, which would weigh J against
        Omega by the loss scale and step along a wrong direction. An empty
        batch is a ``ValueError`` before anything changes (its size is read
        from the shape of the model's last training forward: no device sync).

        Args:
            loss (Tensor): the empirical loss J on the batch (not J + lam*Omega),
                unscaled.
            omega (Tensor, optional): the regularizer's value on the same
                forward pass (``reg.run(x)[1]``). Weight regularizers may omit
                it (their gradient is known in closed form); feature-map
                regularizers need it. Default: None.
            scaler (paddle.amp.GradScaler, optional): mixed precision: pass the
                unscaled ``loss``; both backward passes run on scaled losses,
                both gradients are unscaled before the rule, and the scaler
                skips the step on inf/nan and updates its scale. Default: None.

        Returns:
            dict: this step's stats (keys in :data:`paddle_dtnh.diagnostics.STATS`):
            ``lam``, ``task_loss``, ``reg_loss`` (when known), ``conflict``
            and, with ``track_stats`` or on the logger's steps, the
            diagnostics; ``{"skipped": True}`` for a skipped step.
        """
        return self._observed(self._explicit.update(loss, omega, scaler=scaler))

    def regularize(self, omega: paddle.Tensor, *, scaler=None) -> paddle.Tensor:
        """Hook mode: take gO of ``omega`` now, for the coming :meth:`step`.

        Call it once per micro-batch, after the forward pass and before that
        batch's ``loss.backward()``; it keeps the graph alive for the
        backward. gO adds up over the micro-batches until :meth:`step` as
        ``backward()`` adds gJ up in ``p.grad`` (``accumulation``); pass
        ``omega`` unscaled. A ``regularize`` whose forward never gets its
        ``backward()`` makes :meth:`step` raise. Contract: docs/loop_contract.md.

        Args:
            omega (Tensor): the regularizer's value on this batch, unscaled.
            scaler (paddle.amp.GradScaler, optional): take gO of the scaled
                ``omega`` and unscale it (float16 forwards). Default: None.

        Returns:
            Tensor: ``omega`` detached, for logging.
        """
        return self._hook.regularize(omega, scaler=scaler)

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
        self._observed(self._hook.step(loss))

    def _observed(self, stats: dict) -> dict:
        """The step's stats, handed to the logger."""
        if self.logger is not None:
            if stats.get("skipped"):
                self.logger.on_skip(self)
            else:
                self.logger.on_step(self, stats)
        return stats

    def minimize(self, loss=None, startup_program=None, parameters=None, no_grad_set=None):
        """What Paddle's dygraph ``minimize`` does after ``loss.backward()``:
        :meth:`step`. Returns ``(None, [(param, direction), ...])`` as Paddle's
        does, for ``GradScaler.minimize`` and ``paddle.Model``. The loss
        ``GradScaler.minimize`` hands on is scaled: it is not logged (the
        one given to :meth:`note_task_loss` is), with a warning once when a
        logger is attached."""
        self.step(loss)
        return None, [(p, p.grad) for p in self._params if not p.stop_gradient and compat.has_grad(p)]

    def set_auxiliary_var(self, key, value) -> None:
        """GradScaler's protocol: it hands ``found_inf`` to the optimizer here."""
        self._hook.scaler_aux[key] = value

    def auxiliary_var(self, key):
        """GradScaler's protocol: ``found_inf`` is whether the last step was
        skipped (the scaler then lowers its scale); other keys as it set them."""
        if key == "found_inf":
            return bool(self.last_stats.get("skipped", False))
        return self._hook.scaler_aux.get(key)

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
        self._hook.clear()
        self._inner.clear_grad(set_to_zero)

    clear_gradients = clear_grad

    def state_dict(self) -> dict:
        """The inner optimizer's state under ``"optimizer"`` (accumulators keyed
        by the model's structured parameter names, so resuming never depends
        on the order layers were created in), DTNH's :attr:`state` under
        ``"dtnh"`` (counters, configuration, the reference's state).
        Layout: :mod:`paddle_dtnh.optim.checkpoint`."""
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
