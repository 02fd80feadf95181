r"""What a conflict is judged against: the reference :math:`r` of a rule.

The sign of :math:`\langle r_b, g_{\Omega,b}\rangle` is the one-step
hypergradient of the loss whose gradient :math:`r` is, with respect to block
:math:`b`'s :math:`\lambda`, so the reference decides what "hurt" means:

* :class:`BatchReference` (``"batch"``, the paper): this batch's
  :math:`g_J`; a conflict is one that slows the training loss on the batch.
* :class:`MovingAverage` (``"ema"``): :math:`m \leftarrow \beta m + (1-\beta)
  g_J`, a steadier estimate of the training loss's gradient.
* :class:`HoldoutReference` (``"holdout"``): the gradient of the empirical
  loss on held-out target data, data the step does not train on; a conflict
  is one that raises the held-out loss, so a pull toward the source is kept
  exactly where it helps generalization.

Each reference has one contract, :class:`Reference`: :meth:`~Reference.get`
gives the reference for a step (``None`` means "this batch's gJ"),
:meth:`~Reference.reset` forgets what it holds (after a skipped step),
:meth:`~Reference.state_dict` / :meth:`~Reference.set_state_dict` carry it in
a checkpoint, keyed by stable parameter names, and :meth:`~Reference.problems`
says what in a checkpoint does not fit. The built-in ones are registered
factories (:data:`REFERENCES`); a new reference is a :class:`Reference`
subclass (:class:`PerParameterReference` holds one tensor per parameter and
saves it) and one :func:`register_reference` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import paddle

from . import _paddle_compat as compat

from ._checks import tensor_problems as _tensor_problems
from .distributed import all_reduce_mean

__all__ = ["Reference", "BatchReference", "PerParameterReference", "MovingAverage", "HoldoutReference",
           "REFERENCES", "ReferenceKind", "register_reference", "make_reference", "frozen_batch_norm"]


class Reference:
    """The protocol of a reference: what conflicts are judged against, and its state.

    Every method has a do-nothing default (this batch's gJ, nothing held).
    ``params`` are the optimizer's trainable parameters and ``task_grads``
    this step's gJ aligned with them (all-reduced under data parallelism;
    read-only: the step writes the direction into them afterwards, so copy
    what you keep). ``names`` are the parameters' stable structured names.
    """

    def get(self, params, task_grads, step: int):
        """The reference for applied step ``step`` (1-based), aligned with
        ``params``; None: gJ itself."""
        return None

    def reset(self) -> None:
        """Forget what is held (called after a skipped step)."""

    def state_dict(self, names, params) -> dict:
        """What to save, merged into the ``"dtnh"`` entry of
        :meth:`paddle_dtnh.DTNH.state_dict` (pick keys of your own)."""
        return {}

    def set_state_dict(self, state: dict, names, params) -> None:
        """Load what :meth:`state_dict` saved (``state`` is the whole ``"dtnh"`` entry)."""

    def problems(self, state: dict, names, params) -> list:
        """What in ``state`` does not fit ``params`` (empty: it fits); checked
        before anything is loaded."""
        return []


class BatchReference(Reference):
    """This batch's gJ: nothing to keep."""

    name = "batch"


class PerParameterReference(Reference):
    """A reference that holds one tensor per parameter (at most one gradient
    copy), saved under :attr:`key` by structured name; :attr:`label` names it
    in errors. Subclasses fill ``self._held`` (``id(param) -> tensor``) in
    :meth:`get`."""

    key = ""
    label = ""

    def __init__(self):
        self._held = {}  # id(param) -> tensor

    def reset(self) -> None:
        self._held = {}

    def state_dict(self, names, params) -> dict:
        return {self.key: {n: self._held[id(p)] for n, p in zip(names, params) if id(p) in self._held}}

    def problems(self, state, names, params) -> list:
        by_name = dict(zip(names, params))
        found = []
        for name, tensor in (state.get(self.key) or {}).items():
            if name not in by_name:
                found.append(f"{self.label}: {name} is not a parameter of this optimizer")
            else:
                found += _tensor_problems(f"{self.label}: {name}", tensor, by_name[name])
        return found

    def set_state_dict(self, state, names, params) -> None:
        by_name = dict(zip(names, params))
        self._held = {id(by_name[n]): paddle.to_tensor(t, dtype=by_name[n].dtype, place=by_name[n].place)
                      for n, t in (state.get(self.key) or {}).items()}


class MovingAverage(PerParameterReference):
    r""":math:`m \leftarrow \beta m + (1-\beta) g_J`, started at the first
    :math:`g_J` (the projection is scale-invariant in :math:`r`, so no bias
    correction), restarted by :meth:`reset`. One gradient copy of memory.

    Held as :math:`M = m / (1-\beta)`, whose update :math:`M \leftarrow
    \beta M + g_J` is two in-place passes instead of three (every rule is
    invariant to the reference's scale, so the step is the same). The
    checkpoint stores :math:`M` under ``"ema_scaled"`` (a resume is
    bit-equal); checkpoints of 0.2-0.4.0 stored :math:`m` under ``"ema"``
    and still load.

    Args:
        decay (float): :math:`\beta \in [0, 1)`.
    """

    name = "ema"
    key = "ema_scaled"
    label = "moving average"
    legacy_key = "ema"  # m itself, as 0.2-0.4.0 saved it

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay

    def get(self, params, task_grads, step):
        beta = self.decay
        reference = []
        for p, g in zip(params, task_grads):
            m = self._held.get(id(p))
            if m is None:
                m = None if g is None else g.detach() * (1.0 / (1.0 - beta))
            elif g is None:
                m.scale_(beta)
            else:
                # M = beta*M + g in place: no temporary (paddle.lerp is
                # several times slower on CPU and allocates)
                m.scale_(beta).add_(g.detach())
            if m is not None:
                self._held[id(p)] = m
            reference.append(m)
        return reference

    def average(self, names, params) -> dict:
        """The moving average :math:`m` itself, by name (for inspection)."""
        return {n: self._held[id(p)] * (1.0 - self.decay) for n, p in zip(names, params) if id(p) in self._held}

    def _current(self, state: dict) -> dict:
        """``state`` with a 0.2-0.4.0 ``"ema"`` (m) converted to ``"ema_scaled"`` (M)."""
        legacy = state.get(self.legacy_key)
        if self.key in state or not isinstance(legacy, dict):
            return state
        # tensors or arrays (set_state_dict places them); to_tensor of a tensor would warn
        return {**state, self.key: {n: t * (1.0 / (1.0 - self.decay)) for n, t in legacy.items()}}

    def problems(self, state, names, params) -> list:
        return super().problems(self._current(state), names, params)

    def set_state_dict(self, state, names, params) -> None:
        super().set_state_dict(self._current(state), names, params)


class frozen_batch_norm:
    """Context manager: forwards inside it leave every BatchNorm's running
    mean and variance of ``model`` as they were (the layers stay in their
    mode, so the loss is the one training sees). One copy of the BN buffers.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.references import frozen_batch_norm
            >>> bn = paddle.nn.BatchNorm1D(2)
            >>> with frozen_batch_norm(bn):
            ...     _ = bn(paddle.randn([4, 2]) + 5.0)
            >>> bn._mean.numpy().tolist()
            [0.0, 0.0]
    """

    def __init__(self, model: paddle.nn.Layer | None):
        self.model = model
        self._saved = []

    def __enter__(self):
        if self.model is None:
            return self
        self._saved = [(stat, stat.clone()) for stat in compat.batch_norm_statistics(self.model)]
        return self

    def __exit__(self, *exc):
        with paddle.no_grad():
            for live, saved in self._saved:
                paddle.assign(saved, output=live)
        self._saved = []
        return False


class HoldoutReference(PerParameterReference):
    r"""The gradient of the empirical loss on held-out target data.

    Every ``every`` applied steps it calls ``fn()`` (a zero-argument callable
    returning that loss of the current model as a scalar Tensor: the user's
    own held-out loader and forward), takes its gradient with ``paddle.grad``
    (``p.grad`` is untouched), all-reduces it under data parallelism, and
    keeps it until the next refresh (one gradient copy of memory). The
    forward runs with ``model``'s BatchNorm statistics frozen
    (:class:`frozen_batch_norm`).

    Guarantee (with the rule's blocks): :math:`\langle d, r\rangle \ge
    \langle g_J, r\rangle`: to first order the step lowers the held-out loss
    at least as much as the plain fine-tuning step would.

    Args:
        fn (callable): ``() -> Tensor``, the held-out empirical loss.
        every (int): steps between refreshes.
        model (paddle.nn.Layer, optional): whose BatchNorm statistics to
            protect. Default: None (none protected).
    """

    name = "holdout"
    key = "holdout"
    label = "held-out gradient"

    def __init__(self, fn: Callable[[], paddle.Tensor], every: int = 1, model: paddle.nn.Layer | None = None):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"holdout must be a zero-argument callable returning the held-out loss, "
                            f"got {type(fn).__name__}.")
        self.fn = fn
        self.every = every
        self.model = model
        self._refreshed_at = None  # step of the last refresh

    def reset(self) -> None:
        super().reset()
        self._refreshed_at = None

    def _refresh(self, params) -> None:
        # the statistics are restored after the backward: the graph holds them
        with frozen_batch_norm(self.model):
            loss = self.fn()
            if not isinstance(loss, paddle.Tensor) or loss.size != 1:
                got = f"Tensor of shape {list(loss.shape)}" if isinstance(loss, paddle.Tensor) else type(loss).__name__
                raise TypeError(f"holdout() must return the held-out loss as a scalar Tensor, got a {got}.")
            if loss.stop_gradient:
                raise ValueError("holdout() returned a loss with no gradient path to the parameters (computed "
                                 "under paddle.no_grad() or detached?): return the model's loss on held-out data.")
            grads = paddle.grad(loss, params, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError("holdout() returned a loss that depends on none of the optimizer's parameters: "
                             "return the loss of the model being trained on held-out data.")
        grads = all_reduce_mean(grads)
        self._held = {id(p): g for p, g in zip(params, grads) if g is not None}

    def get(self, params, task_grads, step):
        if self._refreshed_at is None or step - self._refreshed_at >= self.every:
            self._refresh(params)
            self._refreshed_at = step
        return [self._held.get(id(p)) for p in params]

    def state_dict(self, names, params) -> dict:
        state = super().state_dict(names, params)
        state["holdout_refreshed_at"] = self._refreshed_at
        return state

    def set_state_dict(self, state, names, params) -> None:
        super().set_state_dict(state, names, params)
        self._refreshed_at = state.get("holdout_refreshed_at") if self._held else None


_PerParameter = PerParameterReference  # the 0.4 name


@dataclass(frozen=True)
class ReferenceKind:
    """A registered reference: how to build it and which options it reads.

    Attributes:
        factory (callable): ``factory(rule, *, holdout, model) -> Reference``.
        reads (tuple): the :class:`paddle_dtnh.Rule` options it reads
            (``ema_decay``, ``holdout_every``); another reference given one of
            them is an error, not a silent no-op.
        takes_holdout (bool): whether it needs ``DTNH(holdout=fn)`` (and may
            have a ``fallback`` rule for when none is given).
    """

    factory: Callable
    reads: tuple = ()
    takes_holdout: bool = False


#: the options of a :class:`paddle_dtnh.Rule` that only some references read
OPTIONS_OF_REFERENCES = ("ema_decay", "holdout_every")

_REGISTERED: dict = {}

#: name -> :class:`ReferenceKind`, every registered reference (read-only; add
#: with :func:`register_reference`)
REFERENCES = MappingProxyType(_REGISTERED)


def register_reference(name: str, factory: Callable, *, reads=(), takes_holdout: bool = False) -> None:
    """Make ``factory`` the ``reference=name`` choice of every :class:`paddle_dtnh.Rule`.

    Args:
        name (str): a new name (the built-ins: "batch", "ema", "holdout").
        factory (callable): ``factory(rule, *, holdout, model) -> Reference``,
            called once per :class:`paddle_dtnh.DTNH` (the object holds that
            optimizer's state).
        reads (tuple, optional): the Rule options it reads. Default: ().
        takes_holdout (bool, optional): it needs ``holdout=fn``. Default: False.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.references import BatchReference, register_reference
            >>> from paddle_dtnh.rules import Rule
            >>> register_reference("batch_doc", lambda rule, **_: BatchReference())
            >>> Rule(reference="batch_doc").reference
            'batch_doc'
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"A reference's name must be a non-empty str, got {name!r}.")
    if name in _REGISTERED:
        raise ValueError(f"Reference {name!r} is already registered; pick another name.")
    if not callable(factory):
        raise TypeError(f"factory must be callable as factory(rule, *, holdout, model) -> Reference, "
                        f"got {type(factory).__name__}.")
    unknown = sorted(set(reads) - set(OPTIONS_OF_REFERENCES))
    if unknown:
        raise ValueError(f"reads={tuple(reads)!r}: {unknown[0]!r} is no reference option of a Rule; "
                         f"they are {OPTIONS_OF_REFERENCES}.")
    _REGISTERED[name] = ReferenceKind(factory, tuple(reads), bool(takes_holdout))


def make_reference(rule, *, holdout=None, model=None) -> Reference:
    """The reference object of ``rule`` (a :class:`paddle_dtnh.rules.Rule`)."""
    kind = _REGISTERED[rule.reference]
    if kind.takes_holdout and holdout is None:
        raise ValueError(
            f"reference={rule.reference!r} needs holdout=fn: a zero-argument callable returning the empirical "
            "loss of the current model on held-out target data (a scalar Tensor).")
    if holdout is not None and not kind.takes_holdout:
        raise ValueError(f"holdout= was given but the rule's reference is {rule.reference!r}; "
                         "pass reference='holdout' (or a preset that uses it) to judge conflicts on it.")
    return kind.factory(rule, holdout=holdout, model=model)


register_reference("batch", lambda rule, **_: BatchReference())
register_reference("ema", lambda rule, **_: MovingAverage(rule.ema_decay), reads=("ema_decay",))
register_reference("holdout", lambda rule, *, holdout, model: HoldoutReference(holdout, rule.holdout_every, model),
                   reads=("holdout_every",), takes_holdout=True)
