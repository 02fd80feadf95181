"""``DTNH``: wraps any Paddle optimizer and feeds it the DTNH direction.

One path for every regularizer and both loops:

1. gather ``gJ`` (``paddle.grad`` in :meth:`DTNH.update`, ``p.grad`` after
   the loop's own ``backward()`` in :meth:`DTNH.step`) and ``gO``
   (``regularizer.grads``: closed form or autograd, the regularizer's
   business);
2. combine them with :func:`paddle_dtnh.projection.dtnh_direction`;
3. check the direction is finite (the one host sync of a step), write it into
   each parameter's ``.grad`` and call the inner optimizer's ``step()``.

The inner optimizer's own update rule, learning-rate schedule, ``grad_clip``
and ``weight_decay`` are untouched; clip and decay act on the direction.
"""

from __future__ import annotations

import logging
import warnings

import paddle

from . import files
from ._checks import check_choice, check_nonnegative, check_positive, check_positive_int, check_ratio
from .distributed import all_reduce_mean
from .presets import resolve_preset
from .projection import GRANULARITIES, RULES, dtnh_direction
from .regularizers.base import TransferRegularizer
from .stats import collect_step_stats

__all__ = ["DTNH", "NONFINITE_POLICIES", "REFERENCES"]

_log = logging.getLogger("paddle_dtnh")

#: What to do when the direction holds NaN or Inf: skip the step (and count
#: it) or raise ``FloatingPointError``. Weights and optimizer state are never
#: touched by a non-finite step either way.
NONFINITE_POLICIES = ("skip", "raise")

#: What conflicts are judged against: ``"batch"`` (this batch's gJ, the
#: paper) or ``"ema"`` (an exponential moving average of gJ).
REFERENCES = ("batch", "ema")

_STATE_KEY = "dtnh"
_INNER_KEY = "optimizer"
_INNER_FORMAT = "paddle_dtnh.optimizer/2"
#: entries of a Paddle optimizer's state dict that are not accumulators
_INNER_EXTRAS = ("LR_Scheduler", "master_weights")


def _tensor_problems(label: str, value, like) -> list:
    """What is wrong with a saved tensor that must match ``like`` (empty: nothing)."""
    if not isinstance(value, paddle.Tensor):
        return [f"{label} is a {type(value).__name__}, not a tensor"]
    if list(value.shape) != list(like.shape):
        return [f"{label}: shape {list(value.shape)} saved, {list(like.shape)} expected"]
    if value.dtype != like.dtype:
        return [f"{label}: dtype {value.dtype} saved, {like.dtype} expected"]
    return []


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


def _stable_names(params, model) -> list:
    """A name per parameter that does not depend on creation order: the
    model's structured name, else the parameter's position ("#3")."""
    named = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    return [named.get(id(p), f"#{i}") for i, p in enumerate(params)]


def _all_finite(tensors) -> paddle.Tensor:
    """A 0-d bool tensor: every entry of every tensor is finite.

    A tensor's plain sum is NaN or Inf exactly when an entry is, or when its
    entries add up beyond the float range (|entries| ~1e31 on average in
    float32, a step that would wreck the weights anyway); a sum of squares
    would overflow already at ~1e16. One read per tensor, no temporary (half
    the cost of ``isfinite(t).all()`` on CPU)."""
    sums = [paddle.sum(t) for t in tensors if t is not None]
    return paddle.isfinite(paddle.stack(sums)).all() if sums else paddle.to_tensor(True)


class DTNH:
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
      ``paddle.grad`` and steps;
    * hook, for loops that call ``loss.backward(); opt.step()`` themselves
      (PaddleHub's Trainer, ``paddle.Model``): ``opt.regularize(omega)``
      before ``loss.backward()``, then ``opt.step()``. Weight regularizers
      may skip ``regularize`` (their gradient is known in closed form).

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
        preset (str, optional): a name in :data:`paddle_dtnh.PRESETS` giving
            ``granularity``, ``rule``, ``reference`` (and ``max_reg_ratio``
            if it sets one); the explicit arguments below override it.
            Default: "paper".
        granularity (str, optional): the block a conflict is judged on:
            ``"global"`` (the paper), ``"layer"`` or ``"coordinate"``.
        rule (str, optional): ``"project"`` (the paper) or ``"drop"``; see
            :func:`paddle_dtnh.projection.dtnh_direction`.
        reference (str, optional): ``"batch"`` (this batch's :math:`g_J`, the
            paper) or ``"ema"``: an exponential moving average
            :math:`m \leftarrow \beta m + (1-\beta) g_J` (started at the first
            :math:`g_J` and again after a skipped step), which costs one
            gradient copy of memory and is part of :meth:`state_dict`.
            Guarantee: :math:`\langle d, r\rangle \ge \langle g_J, r\rangle`
            for the reference :math:`r`.
        ema_decay (float, optional): :math:`\beta` of ``reference="ema"``, in
            [0, 1). Default: 0.9.
        max_reg_ratio (float, optional): :math:`\rho > 0`: after the rule,
            scale the kept pull down so that :math:`\lVert\lambda
            g'_\Omega\rVert \le \rho \lVert g_J\rVert` (over all
            parameters): a pull that is not in conflict may still not
            outweigh the data. Default: None (no cap, the paper).
        project (bool, optional): ``False`` steps along :math:`g_J + \lambda
            g_\Omega` without projection: the vanilla regularized baseline,
            through the same code. Default: True.
        on_nonfinite (str, optional): ``"skip"`` skips a step whose direction
            holds NaN/Inf and counts it in :attr:`skipped_steps`; ``"raise"``
            raises ``FloatingPointError``. Default: "skip".
        track_stats (bool, optional): compute the diagnostics (angles,
            conflict, norms) into :attr:`last_stats` every step. Default: False.
        logger (paddle_dtnh.stats.StepLogger, optional): gets every applied
            step's stats; the diagnostics are computed on its logging steps
            only. Default: None.
        eps (float, optional): floor of :math:`\lVert r_b\rVert^2`, > 0. Default: 1e-20.
        model (paddle.nn.Layer, optional): the network being trained. Its
            structured parameter names (``layer1.0.conv1.weight``) key the
            optimizer state in :meth:`state_dict`, so a checkpoint resumes
            whatever order the layers were created in. Default: the
            regularizer's model; without either, the parameters' positions.

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
            ...            reg, lam=1.0, preset="never_hurt")
            >>> x, y = paddle.randn([8, 4]), paddle.randint(0, 3, [8])
            >>> logits, omega = reg.run(x)
            >>> stats = opt.update(F.cross_entropy(logits, y), omega)
            >>> opt.num_steps, opt.rule
            (1, 'drop')
    """

    def __init__(
        self,
        optimizer,
        regularizer: TransferRegularizer | None = None,
        *,
        lam: float,
        lam_decay: float = 1.0,
        steps_per_epoch: int | None = None,
        preset: str = "paper",
        granularity: str | None = None,
        rule: str | None = None,
        reference: str | None = None,
        ema_decay: float = 0.9,
        max_reg_ratio: float | None = None,
        project: bool = True,
        on_nonfinite: str = "skip",
        track_stats: bool = False,
        logger=None,
        eps: float = 1e-20,
        model: paddle.nn.Layer | None = None,
    ):
        options = resolve_preset(preset, granularity=granularity, rule=rule, reference=reference,
                                 max_reg_ratio=max_reg_ratio)
        check_choice("granularity", options["granularity"], GRANULARITIES)
        check_choice("rule", options["rule"], RULES)
        check_choice("reference", options["reference"], REFERENCES)
        check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        if isinstance(optimizer, DTNH):
            raise TypeError("optimizer is already wrapped in DTNH; wrap the inner optimizer once.")
        params = _optimizer_parameters(optimizer)
        self._check_weight_decay(optimizer)
        if regularizer is not None:
            self._check_regularizer(regularizer, params)

        self._inner = optimizer
        self._params = params
        model = model if model is not None else getattr(regularizer, "model", None)
        self._names = _stable_names(params, model)
        self._stable_of = {p.name: name for p, name in zip(params, self._names)}  # Paddle name -> stable
        self.regularizer = regularizer
        self.lam0 = check_nonnegative("lam", lam)
        self.lam_decay = check_ratio("lam_decay", lam_decay)
        self.steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
        self.preset = preset
        self.granularity = options["granularity"]
        self.rule = options["rule"]
        self.reference = options["reference"]
        self.ema_decay = check_ratio("ema_decay", ema_decay, low_open=False)
        ratio = options.get("max_reg_ratio")
        self.max_reg_ratio = None if ratio is None else check_positive("max_reg_ratio", ratio)
        self.project = bool(project)
        self.on_nonfinite = on_nonfinite
        self.track_stats = track_stats
        self.logger = logger
        self.eps = check_positive("eps", eps)

        self.num_steps = 0  # steps applied
        self.skipped_steps = 0  # steps skipped for a non-finite direction
        self._epoch = 0
        self._ema = {}  # id(param) -> moving average of gJ (reference="ema")
        self.last_stats: dict = {}
        self._pending = None  # (params, gO, omega) from regularize(), for step()
        self._noted_loss = None  # from note_task_loss(), for the logs
        self._warned_no_loss = False

    @staticmethod
    def _check_weight_decay(optimizer) -> None:
        groups = [g for g in getattr(optimizer, "_param_groups", None) or [] if isinstance(g, dict)]
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
                stacklevel=3,
            )

    @staticmethod
    def _check_regularizer(regularizer, params) -> None:
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
        return [p for p in self._params if not p.stop_gradient]

    def _reg_grads(self, params, omega) -> list:
        """gO aligned with ``params`` (None where Omega does not depend on p)."""
        if self.regularizer is None:
            if omega is not None:
                raise ValueError("omega was given but this DTNH has no regularizer.")
            return [None] * len(params)
        return self.regularizer.grads(params, omega)

    def update(self, loss: paddle.Tensor, omega: paddle.Tensor | None = None) -> dict:
        """Explicit mode: one DTNH step from this batch's losses.

        Args:
            loss (Tensor): the empirical loss J on the batch (not J + lam*Omega).
            omega (Tensor, optional): the regularizer's value on the same
                forward pass (``reg.run(x)[1]``). Weight regularizers may omit
                it (their gradient is known in closed form); feature-map
                regularizers need it. Default: None.

        Returns:
            dict: this step's stats (keys in :data:`paddle_dtnh.stats.STATS`):
            ``lam``, ``task_loss``, ``reg_loss`` (when known), ``conflict``
            and, with ``track_stats`` or on the logger's steps, the
            diagnostics; ``{"skipped": True}`` for a skipped step.
        """
        params = self._trainable()
        if omega is not None and not self.project and not self._wants_stats():
            # the vanilla baseline needs no separate gradients: one backward
            total = all_reduce_mean(paddle.grad(loss + self.lam * omega, params, allow_unused=True))
            return self._apply(params, total, [None] * len(params), loss, omega, owns_grads=True)
        reg_grads = self._reg_grads(params, omega)  # first: it keeps the graph for gJ
        # under data parallelism paddle.grad gives this rank's gradient only
        task_grads = all_reduce_mean(paddle.grad(loss, params, allow_unused=True))
        return self._apply(params, task_grads, reg_grads, loss, omega, owns_grads=True)

    def regularize(self, omega: paddle.Tensor) -> paddle.Tensor:
        """Hook mode: take gO of ``omega`` now, for the coming :meth:`step`.

        Call it after the forward pass and before ``loss.backward()``; it keeps
        the graph alive for that backward.

        Args:
            omega (Tensor): the regularizer's value on this batch.

        Returns:
            Tensor: ``omega`` detached, for logging.
        """
        params = self._trainable()
        self._pending = (params, self._reg_grads(params, omega), omega.detach())
        return omega.detach()

    def note_task_loss(self, loss: paddle.Tensor) -> None:
        """Hook mode: remember this batch's empirical loss for the logs of the
        coming :meth:`step` (when the loop calls ``step()`` without it)."""
        self._noted_loss = loss.detach()

    def step(self, loss: paddle.Tensor | None = None) -> None:
        """Hook mode: combine ``p.grad`` (gJ from ``backward()``) with gO and step.

        Args:
            loss (Tensor, optional): the empirical loss, for the logs only.
                Default: the one given to :meth:`note_task_loss`, if any.
        """
        loss = loss if loss is not None else self._noted_loss
        self._noted_loss = None
        if loss is None and self.logger is not None and not self._warned_no_loss:
            self._warned_no_loss = True
            warnings.warn(
                "DTNH.step() got no empirical loss, so its logger cannot write it: wrap the model in "
                "paddle_dtnh.hub.TransferTask (hub.Trainer, paddle.Model), or call "
                "opt.note_task_loss(loss) or opt.step(loss).",
                stacklevel=2,
            )
        params = self._trainable()
        pending, self._pending = self._pending, None
        if pending is None:
            omega, reg_grads = None, self._reg_grads(params, None)
        else:
            pending_params, reg_grads, omega = pending
            if [id(p) for p in pending_params] != [id(p) for p in params]:
                raise RuntimeError("The trainable parameters changed between regularize() and step().")
        task_grads = [p.grad if p._grad_ivar() is not None else None for p in params]
        self._apply(params, task_grads, reg_grads, loss, omega, owns_grads=False)

    def minimize(self, loss=None, startup_program=None, parameters=None, no_grad_set=None):
        """Same as :meth:`step` (``paddle.Model`` calls it after ``backward()``)."""
        self.step(loss)

    def _wants_stats(self) -> bool:
        """Diagnostics for the coming step: always, or on the logger's steps."""
        return self.track_stats or (
            self.logger is not None and self.logger.wants_stats(self.num_steps + 1)
        )

    def _update_reference(self, params, task_grads):
        """The reference conflicts are judged against: None (the batch's gJ),
        or the moving average of gJ, updated in place with this batch's gJ
        (before the direction overwrites it). A skipped step restarts the
        average (see :meth:`_skip`), so a non-finite gJ never stays in it."""
        if self.reference == "batch" or not self.project:
            return None
        beta = self.ema_decay
        reference = []
        for p, g in zip(params, task_grads):
            m = self._ema.get(id(p))
            if m is None:
                m = None if g is None else g.detach().clone()
            elif g is None:
                m.scale_(beta)
            else:
                # beta*m + (1-beta)*g in three in-place passes: no temporary
                # (paddle.lerp is several times slower on CPU and allocates)
                m.scale_(beta / (1.0 - beta)).add_(g.detach()).scale_(1.0 - beta)
            if m is not None:
                self._ema[id(p)] = m
            reference.append(m)
        return reference

    def _apply(self, params, task_grads, reg_grads, loss, omega, *, owns_grads):
        lam = self.lam
        with_stats = self._wants_stats()
        reference = self._update_reference(params, task_grads)
        # detach() shares storage (no copy) and lets Paddle write in place; in
        # hook mode that is p.grad itself, which the direction replaces anyway
        directions, stats = dtnh_direction(
            [None if g is None else g.detach() for g in task_grads],
            [None if g is None else g.detach() for g in reg_grads],
            lam,
            granularity=self.granularity,
            rule=self.rule,
            reference_grads=reference,
            max_reg_ratio=self.max_reg_ratio,
            eps=self.eps,
            project=self.project,
            with_stats=with_stats,
            inplace=True,
        )
        # the one host sync of a step: whether to step at all
        if not bool(_all_finite(directions)):
            return self._skip(params, owns_grads)
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
        stats = collect_step_stats(stats, lam=lam, task_loss=loss, reg_loss=omega)
        self.last_stats = stats
        if self.logger is not None:
            self.logger.on_step(self, stats)
        return stats

    def _skip(self, params, owns_grads) -> dict:
        self.skipped_steps += 1
        self._ema = {}  # restart the moving average: this batch's gJ is in it
        if owns_grads:
            for p in params:
                p.clear_gradient(False)
        message = (
            f"non-finite direction at step {self.num_steps + self.skipped_steps} "
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

    # -- Paddle's optimizer interface ------------------------------------------
    @property
    def inner(self):
        """The wrapped Paddle optimizer."""
        return self._inner

    @property
    def parameters(self) -> list:
        """Every parameter the inner optimizer owns."""
        return list(self._params)

    @property
    def _name(self):
        """The inner optimizer's name (``paddle.Model.load`` reads it)."""
        return getattr(self._inner, "_name", None)

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
        self._pending = None
        self._inner.clear_grad(set_to_zero)

    clear_gradients = clear_grad

    def _config(self) -> dict:
        return {"lam": self.lam0, "lam_decay": self.lam_decay, "granularity": self.granularity,
                "rule": self.rule, "reference": self.reference, "ema_decay": self.ema_decay,
                "max_reg_ratio": self.max_reg_ratio, "project": self.project}

    def _inner_state(self) -> dict:
        """The inner optimizer's state keyed by stable parameter names."""
        accumulators, generated = {}, set()
        for acc, per_param in self._inner._accumulators.items():
            for param_name, var in per_param.items():
                accumulators.setdefault(self._stable_of[param_name], {})[acc] = var
                generated.add(var.name)
        other = {k: v for k, v in self._inner.state_dict().items() if k not in generated}
        return {"format": _INNER_FORMAT, "accumulators": accumulators, "other": other}

    def state_dict(self) -> dict:
        """The inner optimizer's state under ``"optimizer"`` (accumulators keyed
        by the model's structured parameter names, so resuming never depends
        on the order layers were created in), DTNH's under ``"dtnh"``
        (counters, configuration, the moving average of ``reference="ema"``)."""
        return {
            _INNER_KEY: self._inner_state(),
            _STATE_KEY: {
                "num_steps": self.num_steps,
                "skipped_steps": self.skipped_steps,
                "epoch": self._epoch,
                "ema": {name: self._ema[id(p)] for p, name in zip(self._params, self._names)
                        if id(p) in self._ema},
                **self._config(),
            },
        }

    def check_state_dict(self, state_dict) -> None:
        """Raise ValueError (naming the item and the fix) unless ``state_dict``
        fits this optimizer; nothing is changed."""
        self._validated(state_dict)

    def _validated(self, state_dict) -> dict:
        """``state_dict`` with its arrays as tensors, once checked to fit (see
        :meth:`check_state_dict`)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}.")
        state_dict = files.to_tensors(state_dict)  # paddle.Model.load leaves (name, ndarray) pairs
        if _STATE_KEY not in state_dict:
            self._check_bare_inner(state_dict)
            return state_dict
        ours, inner = state_dict[_STATE_KEY], state_dict.get(_INNER_KEY)
        missing = {"num_steps", "skipped_steps", "epoch"} - set(ours if isinstance(ours, dict) else {})
        if missing or not isinstance(inner, dict):
            raise ValueError(f"Corrupt DTNH state_dict: missing {sorted(missing) or [_INNER_KEY]}.")
        if inner.get("format") != _INNER_FORMAT:
            raise ValueError(
                f"The optimizer state has format {inner.get('format')!r}, not {_INNER_FORMAT!r}: it was "
                "saved by an older paddle_dtnh, whose state is keyed by generated names; restart the "
                "optimizer state or load it into the bare inner optimizer."
            )
        params = dict(zip(self._names, self._params))
        problems = []
        saved = inner.get("accumulators", {})
        expected = self._accumulator_vars() if saved else {}
        found = set()
        for name, per_acc in saved.items():
            if name not in params:
                problems.append(f"optimizer: {name} is not a parameter of this optimizer")
                continue
            for acc, tensor in per_acc.items():
                found.add((name, acc))
                var = expected.get((name, acc))
                if var is None:
                    problems.append(f"optimizer: {type(self._inner).__name__} keeps no {acc} for {name} "
                                    "(saved by another kind of optimizer?)")
                else:
                    problems += _tensor_problems(f"optimizer: {name} ({acc})", tensor, var)
        problems += [f"optimizer: {acc} of {name} is missing" for name, acc in expected if (name, acc) not in found]
        for name, tensor in ours.get("ema", {}).items():
            if name not in params:
                problems.append(f"moving average: {name} is not a parameter of this optimizer")
            else:
                problems += _tensor_problems(f"moving average: {name}", tensor, params[name])
        if problems:
            raise ValueError(
                "The saved optimizer state does not fit this model and optimizer:\n  "
                + "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "")
                + "\nBuild the same model, optimizer and model= as when it was saved."
            )
        return state_dict

    def _check_bare_inner(self, state_dict) -> None:
        """A bare inner optimizer's checkpoint is keyed by generated names: accept
        it only where every accumulator names a parameter of this optimizer."""
        names = sorted((p.name for p in self._params), key=len, reverse=True)
        unmatched = [k for k in state_dict if k not in _INNER_EXTRAS
                     and not any(k.startswith(n + "_") for n in names)]
        if unmatched:
            raise ValueError(
                f"This checkpoint of a bare {type(self._inner).__name__} names parameters this process "
                f"does not have ({', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}): Paddle "
                "names them in creation order. Resume in a fresh process that builds the model the same "
                "way, or start the optimizer state afresh; DTNH's own checkpoints do not depend on it."
            )

    def set_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict` (or, where its generated names
        still match, by the bare inner optimizer). All or nothing: the whole dict
        is checked (names, shapes, dtypes) before anything is written."""
        state_dict = self._validated(state_dict)
        if _STATE_KEY not in state_dict:
            self._inner.set_state_dict(state_dict)  # DTNH starts its counters fresh
            return
        ours, inner = state_dict[_STATE_KEY], state_dict[_INNER_KEY]
        changed = [f"{k}: saved {ours[k]!r}, now {v!r}" for k, v in self._config().items()
                   if k in ours and ours[k] != v]
        if changed:
            warnings.warn(
                "Resuming with a different DTNH configuration than saved (the "
                "current one is used): " + "; ".join(changed),
                stacklevel=2,
            )
        params = dict(zip(self._names, self._params))
        self._load_accumulators(inner.get("accumulators", {}), params)
        other = inner.get("other", {})
        schedule = self._inner._learning_rate
        if isinstance(schedule, paddle.optimizer.lr.LRScheduler) and "LR_Scheduler" in other:
            schedule.set_state_dict(other["LR_Scheduler"])
        self.num_steps = int(ours["num_steps"])
        self.skipped_steps = int(ours["skipped_steps"])
        self._epoch = int(ours["epoch"])
        self._ema = {id(params[n]): paddle.to_tensor(m, dtype=params[n].dtype, place=params[n].place)
                     for n, m in ours.get("ema", {}).items()}

    def _accumulator_vars(self) -> dict:
        """(stable name, accumulator) -> the inner optimizer's tensor, created
        now if it was not yet (as the first step would, with the same values)."""
        trainable = [p for p in self._params if not p.stop_gradient]
        if trainable:
            block = paddle.static.default_main_program().global_block()
            self._inner._create_accumulators(block, trainable)
        return {(self._stable_of[param_name], acc): var for acc, per_param in self._inner._accumulators.items()
                for param_name, var in per_param.items()}

    def _load_accumulators(self, saved: dict, params: dict) -> None:
        """Write the saved values into the inner optimizer's accumulators,
        matched by parameter, never by generated name (validated before)."""
        if not saved:
            return
        variables = self._accumulator_vars()
        for name, per_acc in saved.items():
            for acc, value in per_acc.items():
                var = variables[(name, acc)]
                var.set_value(paddle.to_tensor(value, dtype=var.dtype, place=var.place))

    def __repr__(self) -> str:
        reg = type(self.regularizer).__name__ if self.regularizer is not None else None
        return (
            f"DTNH({type(self._inner).__name__}, regularizer={reg}, lam={self.lam0}, "
            f"lam_decay={self.lam_decay}, granularity={self.granularity!r}, rule={self.rule!r}, "
            f"reference={self.reference!r}, max_reg_ratio={self.max_reg_ratio}, project={self.project})"
        )
