"""Hook mode: gO per micro-batch, paired with the loop's backward(), then the step.

In hook mode the loop owns the backward pass, so gJ arrives in ``p.grad``
(summed over micro-batches) while gO arrives through ``regularize(omega)``.
:class:`PendingRegularizer` sums gO the same way and checks, at ``step()``,
that the two come from the same forwards:

* every ``regularize`` hangs a token on its forward's output (a forward
  post-hook on the regularizer's model keeps the last output that has a
  graph); the loss's backward passes through it and marks the token, so a
  ``regularize`` whose forward got no backward is caught (a stale value from
  an evaluation pass, a forward whose loss was dropped, ``step()`` with no
  backward);
* a hook on every trainable parameter counts backward passes, so a backward
  without ``regularize`` is caught where the regularizer needs one, and a
  closed-form gO is counted once per backward, as gJ is.

Hooks are host callbacks: no device synchronisation. The explicit loop pays
nothing for them: Paddle runs tensor hooks in ``backward()``, not in
``paddle.grad`` (measured: 0 calls, the same time).
"""

from __future__ import annotations

import warnings
import weakref

import paddle

from . import amp
from .. import _paddle_compat as compat
from ..distributed import synchronised
from .step import trainable

__all__ = ["PendingRegularizer", "HookLoop"]

_ORDER = ("each micro-batch: output, omega = reg.run(x); opt.regularize(omega); loss.backward(); "
          "then opt.step() once (and opt.clear_grad())")


class _Token:
    """One regularize() call: whether its forward's backward has run."""

    __slots__ = ("seen", "anchored")

    def __init__(self, anchored: bool):
        self.seen = False
        self.anchored = anchored


def _graph_tensor(output):
    """The first tensor of a forward's output that has a graph, or None."""
    if isinstance(output, paddle.Tensor):
        return None if output.stop_gradient else output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return next((t for t in map(_graph_tensor, values) if t is not None), None)


def _remove_all(handles) -> None:
    for handle in handles:
        handle.remove()


def _batch_size(inputs):
    """The leading dimension of a forward's first tensor input, or None."""
    first = next((t for t in inputs if isinstance(t, paddle.Tensor)), None) if isinstance(inputs, tuple) else inputs
    return first.shape[0] if isinstance(first, paddle.Tensor) and first.ndim > 0 else None


class PendingRegularizer:
    """gO summed over the micro-batches since the last step, with the checks above.

    Args:
        gradient (RegularizerGradient): gO (its regularizer: which forwards to watch).
        params (list): the optimizer's parameters (their backward passes are counted).
        model (paddle.nn.Layer|None): the network trained (its forwards give the batch size).
        accumulation (str): ``"sum"`` or ``"mean"``.
    """

    def __init__(self, gradient, params, model, *, accumulation: str):
        self.gradient, self.accumulation = gradient, accumulation
        self._hooked = set()  # id(param) with a counting hook
        self._handles = []  # removed with this object: re-wrapping a model leaves no hooks behind
        # a finalizer, not __del__: it holds the handles itself, so it runs and removes them also when
        # this object dies in a reference cycle (200 DTNHs on one model left dead hooks on it)
        weakref.finalize(self, _remove_all, self._handles)
        self._counts = {}  # id(param) -> backward passes that reached it
        self._last_output = None  # the regularizer model's last output with a graph
        self.last_batch = None  # images in the model's last forward with a graph (a Python int)
        self.clear()
        reg = gradient.regularizer
        anchored = reg is not None and not reg.has_closed_form and reg.model is not None
        if reg is not None:
            for p in params:
                self._hook(p)
            if anchored:
                self._watch_forwards(reg.model, anchor=True)
        if model is not None and not (anchored and model is reg.model):
            self._watch_forwards(model, anchor=False)

    def _watch_forwards(self, model, anchor: bool) -> None:
        owner = weakref.ref(self)

        def keep(layer, inputs, output):
            me = owner()
            if me is not None:
                me.saw_forward(inputs, output, anchor)

        self._handles.append(model.register_forward_post_hook(keep))

    def saw_forward(self, inputs, output, anchor: bool) -> None:
        """A forward of a watched model ran: keep its output (the anchor) and batch size."""
        graph = _graph_tensor(output)
        if anchor:
            self._last_output = graph
        if graph is not None:  # a training forward, not an evaluation under no_grad
            self.last_batch = _batch_size(inputs)

    def check_batch(self, where: str) -> None:
        """ValueError, before anything changes, when the last training forward
        had no images: its mean loss is NaN (0/0) and its gradient zero, so a
        step would only advance the counters and the optimizer's state. The
        batch size comes from the input's shape, a Python int: no device sync."""
        if self.last_batch == 0:  # until the next training forward
            raise ValueError(
                f"{where} got an empty batch (0 images in the model's last forward): nothing to learn from, "
                "and its mean loss is NaN. Skip empty batches in the loop (e.g. "
                "if x.shape[0] == 0: continue). Weights, optimizer state and counters are unchanged.")

    @property
    def active(self) -> bool:
        """Whether a regularize() result waits for step()."""
        return bool(self._tokens)

    def clear(self) -> None:
        self._sum, self._omega, self._ids, self._tokens = None, None, None, []
        self._counts = {}

    def _hook(self, param) -> None:
        if id(param) in self._hooked or param.stop_gradient:
            return
        key, owner = id(param), weakref.ref(self)  # the parameter must not keep DTNH alive

        def count(grad):
            me = owner()
            if me is not None:
                me.saw_backward(key)

        self._handles.append(param.register_hook(count))
        self._hooked.add(key)

    def saw_backward(self, key) -> None:
        """A backward pass reached parameter ``key``."""
        self._counts[key] = self._counts.get(key, 0) + 1

    def take_anchor(self) -> list:
        """The last forward's output, handed over once: its backward marks the token."""
        output, self._last_output = self._last_output, None
        return [] if output is None else [output]

    def backward_passes(self) -> int:
        """Backward passes since the last step (the most any parameter saw)."""
        return max(self._counts.values(), default=0)

    def add(self, params, grads, omega, anchors) -> None:
        """One micro-batch's gO (fresh tensors, summed in place)."""
        ids = [id(p) for p in params]
        if self._ids is not None and ids != self._ids:
            raise RuntimeError("The trainable parameters changed between regularize() calls of one step.")
        for p in params:
            self._hook(p)
        if self._sum is None:
            self._sum, self._omega, self._ids = list(grads), omega, ids
        else:
            self._sum = [a if b is None else (b if a is None else a.add_(b)) for a, b in zip(self._sum, grads)]
            self._omega = self._omega + omega
        token = _Token(anchored=bool(anchors))

        def mark(grad):
            token.seen = True

        for tensor in anchors:
            tensor.register_hook(mark)
        self._tokens.append(token)

    def collect(self, params) -> tuple:
        """``(gO aligned with params, omega for the logs)`` for this step;
        RuntimeError (pending state cleared, nothing else changed) where the
        gradients cannot be paired."""
        tokens, total, omega, ids = self._tokens, self._sum, self._omega, self._ids
        passes = self.backward_passes()
        self.clear()
        reg = self.gradient.regularizer
        if tokens and ids != [id(p) for p in params]:
            raise RuntimeError("The trainable parameters changed between regularize() and step().")
        unseen = sum(1 for t in tokens if t.anchored and not t.seen)
        if unseen:
            raise RuntimeError(
                f"{unseen} of {len(tokens)} regularize() call(s) since the last step belong to a forward "
                f"whose loss.backward() never ran (a stale regularize, e.g. from an evaluation pass in train "
                f"mode, or step() without backward). Expected order: {_ORDER}. Weights and optimizer state "
                "are unchanged.")
        if reg is None:
            return [None] * len(params), None
        if tokens and passes != len(tokens):
            raise RuntimeError(
                f"regularize() ran {len(tokens)} time(s) but loss.backward() {passes} time(s) since the last "
                f"step: the gradients cannot be paired. Expected order: {_ORDER}. Weights and optimizer state "
                "are unchanged.")
        mean = self.accumulation == "mean"
        if tokens:
            if mean and len(tokens) > 1:  # the loop backpropagated loss / k: gJ is the micro-batches' mean
                total = [None if g is None else g.scale_(1.0 / len(tokens)) for g in total]
                omega = omega / len(tokens)
            return total, omega
        if passes == 0:
            raise RuntimeError(
                f"step() found no loss.backward() since the last step. Expected order: {_ORDER}. "
                "Weights and optimizer state are unchanged.")
        if not reg.has_closed_form:
            raise RuntimeError(
                f"loss.backward() ran {passes} time(s) without opt.regularize(omega), which "
                f"{type(reg).__name__} needs (its gradient is not known in closed form). Expected order: "
                f"{_ORDER}; hub.Trainer and paddle.Model do this through paddle_dtnh.integrations.hub.TransferTask.")
        grads = self.gradient(params, None)
        if passes > 1 and not mean:  # accumulated micro-batches: gJ is a sum of that many gradients, so is gO
            grads = [None if g is None else g.scale_(float(passes)) for g in grads]
        return grads, None


class HookLoop:
    """``regularize(omega)`` per micro-batch, the loop's ``backward()``, then
    ``step()``: gO taken and paired here, gJ read from ``p.grad``, then the
    shared step.

    Args:
        params (list): the optimizer's parameters.
        gradient (RegularizerGradient): gO.
        stepper (Stepper): the shared step (its observation: whether a logger waits for the loss).
        model (paddle.nn.Layer|None): the network trained.
        accumulation (str): ``"sum"`` or ``"mean"``.
        data_parallel (bool): average ``p.grad`` across ranks where DataParallel did not.
    """

    def __init__(self, params, gradient, stepper, model, *, accumulation: str, data_parallel: bool):
        self.params, self.gradient, self.stepper, self.data_parallel = params, gradient, stepper, data_parallel
        self.pending = PendingRegularizer(gradient, params, model, accumulation=accumulation)
        self.scaler_aux = {}  # GradScaler's auxiliary variables (found_inf), set through the optimizer
        self._noted_loss = None  # from note_task_loss(), for the logs
        self._warned_no_loss = False

    def regularize(self, omega, *, scaler=None):
        if self.gradient.regularizer is None:
            raise ValueError("regularize() was called but this DTNH has no regularizer.")
        self.pending.check_batch("regularize()")
        params = trainable(self.params)
        scale = amp.scale_of(scaler)
        try:
            grads = self.gradient(params, omega if scale is None else scaler.scale(omega), scale)
        except (SystemError, RuntimeError) as err:
            if not compat.is_freed_graph_error(err):
                raise
            raise RuntimeError(
                "regularize(omega) came after loss.backward() of the same forward pass, which freed the graph "
                f"omega's gradient needs. Expected order: {_ORDER}. Weights and optimizer state are "
                "unchanged.") from err
        self.pending.add(params, grads, omega.detach(), self.pending.take_anchor())
        return omega.detach()

    def note_task_loss(self, loss):
        self._noted_loss = loss.detach()

    def clear(self) -> None:
        """Drop what waits for the next step (``clear_grad``)."""
        self.pending.clear()
        self.scaler_aux.clear()

    def step(self, loss=None) -> dict:
        self.pending.check_batch("step()")
        logged = self.stepper.observation.logger is not None
        if loss is not None and self.scaler_aux.get("found_inf") is not None:
            # GradScaler.minimize(opt, loss) hands on its argument, which paddle.Model's AMP and Paddle's
            # examples scale: logged, it would be the task loss times the loss scale
            loss = None
            if self._noted_loss is None and logged and not self._warned_no_loss:
                self._warned_no_loss = True
                warnings.warn(
                    "DTNH.minimize() got its loss from GradScaler.minimize, which is scaled by the loss "
                    "scale, so it is not logged as the task loss (the step uses the unscaled gradients). Call "
                    "opt.note_task_loss(loss) with the unscaled loss before scaler.minimize to log it.",
                    stacklevel=3,
                )
        loss = loss if loss is not None else self._noted_loss
        self._noted_loss = None
        if loss is None and logged and not self._warned_no_loss:
            self._warned_no_loss = True
            warnings.warn(
                "DTNH.step() got no empirical loss, so its logger cannot write it: wrap the model in "
                "paddle_dtnh.integrations.hub.TransferTask (hub.Trainer, paddle.Model), or call "
                "opt.note_task_loss(loss) or opt.step(loss).",
                stacklevel=2,
            )
        params = trainable(self.params)
        reg_grads, omega = self.pending.collect(params)
        # under data parallelism: averaged here unless DataParallel's reducer already did
        task_grads = [p.grad if compat.has_grad(p) else None for p in params]
        if self.data_parallel:
            task_grads = synchronised(task_grads)
        scaler_driven = self.scaler_aux.pop("found_inf", None) is not None  # GradScaler.step / minimize
        return self.stepper(params, task_grads, reg_grads, loss, omega, owns_grads=False,
                            scaler_driven=scaler_driven)
