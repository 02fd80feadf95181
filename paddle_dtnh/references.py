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

Each reference has one contract: :meth:`~BatchReference.get` gives the
reference for a step (``None`` means "this batch's gJ"),
:meth:`~BatchReference.reset` forgets what it holds (after a skipped step),
and :meth:`~BatchReference.state_dict` / :meth:`~BatchReference.set_state_dict`
carry it in a checkpoint, keyed by stable parameter names.
"""

from __future__ import annotations

from collections.abc import Callable

import paddle

from . import _paddle_compat as compat

from ._optim_state import tensor_problems as _tensor_problems
from .distributed import all_reduce_mean

__all__ = ["BatchReference", "MovingAverage", "HoldoutReference", "make_reference", "frozen_batch_norm"]


class BatchReference:
    """This batch's gJ: nothing to keep."""

    name = "batch"

    def get(self, params, task_grads, step: int):
        """The reference for applied step ``step`` (1-based); None: gJ itself."""
        return None

    def reset(self) -> None:
        """Forget what is held (called after a skipped step)."""

    def state_dict(self, names, params) -> dict:
        return {}

    def set_state_dict(self, state: dict, names, params) -> None:
        pass

    def problems(self, state: dict, names, params) -> list:
        """What in ``state`` does not fit ``params`` (empty: it fits)."""
        return []


class _PerParameter(BatchReference):
    """A reference that holds one tensor per parameter (at most one gradient copy)."""

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


class MovingAverage(_PerParameter):
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


class HoldoutReference(_PerParameter):
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


def make_reference(rule, *, holdout=None, model=None) -> BatchReference:
    """The reference object of ``rule`` (a :class:`paddle_dtnh.rules.Rule`)."""
    if rule.reference == "holdout":
        if holdout is None:
            raise ValueError(
                "reference='holdout' needs holdout=fn: a zero-argument callable returning the empirical "
                "loss of the current model on held-out target data (a scalar Tensor).")
        return HoldoutReference(holdout, rule.holdout_every, model)
    if holdout is not None:
        raise ValueError(f"holdout= was given but the rule's reference is {rule.reference!r}; "
                         "pass reference='holdout' (or a preset that uses it) to judge conflicts on it.")
    if rule.reference == "ema" and rule.projects:
        return MovingAverage(rule.ema_decay)
    return BatchReference()
