"""The hook side of the training-loop contract (docs/loop_contract.md) as one
Layer, for loops that call ``loss.backward(); optimizer.step()`` themselves.

:class:`RegularizedTask` knows no task: in training mode its ``forward``
runs ``regularizer.run`` and hands omega to ``optimizer.regularize`` before
the loop's ``backward()``; ``training_step`` notes the loss for the logs.
A subclass says what the loss is (:meth:`RegularizedTask.loss_and_metrics`);
:class:`ClassificationTask` is cross-entropy and top-1 accuracy, which
``paddle_dtnh.integrations.hub.TransferTask`` (hub.Trainer, paddle.Model)
and the shipped PaddleHub module use.
"""

from __future__ import annotations

import paddle

from .._checks import check_not_empty_batch
from .._layers import loss_and_accuracy
from ..optim import DTNH
from ..optim.construction import check_owned

__all__ = ["RegularizedTask", "ClassificationTask", "classification_step", "logits_of"]


def logits_of(output):
    """PaddleHub classifiers return ``(logits, feature)``; others, logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


def classification_step(output, labels) -> tuple:
    """``(mean cross-entropy, {"acc": top-1 accuracy})`` of a classifier's
    output (logits, or PaddleHub's ``(logits, feature)``) for integer labels
    of shape ``[N]`` or ``[N, 1]``."""
    loss, acc = loss_and_accuracy(logits_of(output), labels)
    return loss, {"acc": acc}


class RegularizedTask(paddle.nn.Layer):
    """A model and its DTNH, for a loop that owns ``backward()`` and ``step()``.

    Subclasses implement :meth:`loss_and_metrics`; the contract's calls
    (``regularize`` per forward in training mode, ``note_task_loss`` per
    training step) are made here. Only ``model`` is a sublayer: checkpoints
    hold the target's weights, never the source's.

    Args:
        model (paddle.nn.Layer): the network trained (the one the
            regularizer and the optimizer were built on).
        optimizer (DTNH): the DTNH optimizer that trains it.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.integrations.task import RegularizedTask
            >>> class Regression(RegularizedTask):
            ...     def loss_and_metrics(self, output, batch):
            ...         return paddle.nn.functional.mse_loss(output, batch[1]), {}
            >>> net = paddle.nn.Linear(4, 1)
            >>> opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0)
            >>> task = Regression(net, opt)
            >>> out = task.training_step((paddle.randn([2, 4]), paddle.randn([2, 1])), 0)
            >>> out["loss"].backward(); opt.step(); opt.num_steps
            1
    """

    def __init__(self, model: paddle.nn.Layer, optimizer: DTNH):
        super().__init__()
        if not isinstance(optimizer, DTNH):
            raise TypeError(f"optimizer must be a paddle_dtnh.DTNH, got {type(optimizer).__name__}.")
        check_owned(optimizer.parameters, [(n, p) for n, p in model.named_parameters() if not p.stop_gradient],
                    what="The optimizer does not own {n} trainable parameter(s) of the model (e.g. {names}):",
                    fix="build it over this model's parameters.")
        reg = optimizer.regularizer
        if reg is not None and reg.model is not model:
            raise ValueError("The regularizer was built on another model than the one given here.")
        self.model = model
        object.__setattr__(self, "_optimizer", optimizer)  # not a sublayer: not saved

    @property
    def optimizer(self) -> DTNH:
        """The DTNH that trains ``model``."""
        return self._optimizer

    def forward(self, *inputs):
        reg = self.optimizer.regularizer
        if self.training and reg is not None:
            output, omega = reg.run(*inputs)
            self.optimizer.regularize(omega)
            return output
        return self.model(*inputs)

    def loss_and_metrics(self, output, batch) -> tuple:
        """``(loss, metrics dict)`` of the model's ``output`` on ``batch``
        (the empirical loss J alone, never ``J + lam * omega``)."""
        raise NotImplementedError(f"{type(self).__name__} must define loss_and_metrics(output, batch).")

    def check_batch(self, batch) -> None:
        """Raise a clear error for a bad batch, before anything runs (default: an empty batch)."""
        check_not_empty_batch(batch[0], type(self).__name__)

    def _evaluate(self, batch) -> tuple:
        self.check_batch(batch)
        return self.loss_and_metrics(self(batch[0]), batch)

    def training_step(self, batch, batch_idx):
        loss, metrics = self._evaluate(batch)
        self.optimizer.note_task_loss(loss)
        return {"loss": loss, "metrics": metrics}

    def validation_step(self, batch, batch_idx):
        loss, metrics = self._evaluate(batch)
        return {"loss": loss, "metrics": metrics}


class ClassificationTask(RegularizedTask):
    """A classifier: cross-entropy and top-1 accuracy (``metrics["acc"]``);
    batches ``(images, labels)`` in NCHW, checked before anything runs
    (channels, label count, label range). ``forward`` returns logits
    (PaddleHub's ``(logits, feature)`` output is understood)."""

    def forward(self, images):
        return logits_of(super().forward(images))

    def loss_and_metrics(self, output, batch) -> tuple:
        return classification_step(output, batch[1])

    def _input_channels(self):
        for layer in self.model.sublayers():
            if isinstance(layer, paddle.nn.Conv2D):
                return layer.weight.shape[1]
        return None

    def _num_classes(self):
        linears = [layer for layer in self.model.sublayers() if isinstance(layer, paddle.nn.Linear)]
        return linears[-1].weight.shape[1] if linears else None

    def check_batch(self, batch) -> None:
        images, labels = batch[0], batch[1].reshape([-1, 1]).astype("int64")
        channels, num_classes = self._input_channels(), self._num_classes()
        check_not_empty_batch(images, type(self).__name__)
        if channels is not None and (images.ndim != 4 or images.shape[1] != channels):
            raise ValueError(
                f"Expected images of shape [batch, {channels}, height, width], got {list(images.shape)}. "
                "Convert grayscale images to 3 channels (paddle_dtnh.data.to_tensor_batch does) "
                "and use NCHW layout."
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in the batch.")
        if num_classes is None:
            return
        # one small host read per step; these loops already read the loss every step
        low, high = paddle.stack([labels.min(), labels.max()]).numpy().tolist()
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"Label {bad} is out of range for a {num_classes}-class head (labels must be in "
                f"[0, {num_classes - 1}]). Check the dataset's labels or the model's label_list."
            )
