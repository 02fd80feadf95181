"""One Layer that lets PaddleHub's Trainer and ``paddle.Model`` train with DTNH."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from ..._checks import check_not_empty_batch
from ...optim.construction import check_owned
from ..._layers import loss_and_accuracy
from ...optim import DTNH

__all__ = ["TransferTask", "held_out_loss"]


def _logits(output):
    """PaddleHub classifiers return ``(logits, feature)``; others, logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


class TransferTask(paddle.nn.Layer):
    """Wrap a classifier so the loops that call ``loss.backward();
    optimizer.step()`` themselves train it with DTNH and any regularizer.

    In training mode, ``forward`` runs ``regularizer.run`` (the target, and
    for a feature-map regularizer the frozen source, once each) and hands
    the regularizer's value to ``optimizer.regularize`` before the loop's
    ``backward()``, whatever the regularizer. Only
    ``model`` is a sublayer: checkpoints hold the target's weights, never
    the source's.

    * hub.Trainer: ``hub.Trainer(task, optimizer, ...)``; ``training_step``
      and ``validation_step`` return ``{'loss', 'metrics': {'acc'}}``.
    * paddle.Model: ``paddle.Model(task).prepare(optimizer, CrossEntropyLoss())``.

    Args:
        model (paddle.nn.Layer): the target classifier (the one the
            regularizer and the optimizer were built on).
        optimizer (DTNH): the DTNH optimizer that trains it.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.integrations.hub import TransferTask
            >>> net = paddle.nn.Linear(4, 3)
            >>> opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0)
            >>> task = TransferTask(net, opt)
            >>> out = task.training_step((paddle.randn([2, 4]), paddle.to_tensor([0, 1])), 0)
            >>> sorted(out)
            ['loss', 'metrics']
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

    def forward(self, images):
        reg = self._optimizer.regularizer
        if self.training and reg is not None:
            output, omega = reg.run(images)
            self._optimizer.regularize(omega)
        else:
            output = self.model(images)
        return _logits(output)

    def _input_channels(self):
        for layer in self.model.sublayers():
            if isinstance(layer, paddle.nn.Conv2D):
                return layer.weight.shape[1]
        return None

    def _check_batch(self, images, labels):
        """Clear errors for bad batches, before anything is computed or updated."""
        channels, num_classes = self._input_channels(), self._num_classes()
        check_not_empty_batch(images, "TransferTask")
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

    def _step(self, batch):
        images, labels = batch[0], batch[1]
        labels = labels.reshape([-1, 1]).astype("int64")
        self._check_batch(images, labels)
        return loss_and_accuracy(self(images), labels)

    def _num_classes(self):
        linears = [layer for layer in self.model.sublayers() if isinstance(layer, paddle.nn.Linear)]
        return linears[-1].weight.shape[1] if linears else None

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self._optimizer.note_task_loss(loss)
        return {"loss": loss, "metrics": {"acc": acc}}

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        return {"loss": loss, "metrics": {"acc": acc}}


def held_out_loss(model: paddle.nn.Layer, dataset, *, batch_size: int = 64):
    """A zero-argument callable for ``DTNH(..., reference="holdout", holdout=...)``:
    the mean cross-entropy of ``model`` on every item of ``dataset`` (items
    ``(image, label)``, as hub.Trainer and paddle.Model take them), read once.

    Args:
        model (paddle.nn.Layer): the target being trained (PaddleHub classifiers'
            ``(logits, feature)`` outputs are understood).
        dataset (paddle.io.Dataset): held-out target images the loop never trains on.
        batch_size (int, optional): items per forward; the loss is their mean
            over the whole set. Default: 64.

    Examples:
        .. code-block:: python

            >>> import numpy as np
            >>> import paddle
            >>> from paddle_dtnh.integrations.hub import held_out_loss
            >>> net = paddle.nn.Linear(4, 3)
            >>> data = paddle.io.TensorDataset([paddle.randn([5, 4]), paddle.to_tensor(np.arange(5) % 3)])
            >>> loss = held_out_loss(net, data)
            >>> list(loss().shape), loss().stop_gradient
            ([], False)
    """
    if len(dataset) == 0:
        raise ValueError("The held-out dataset is empty: give it the target images the loop never trains on.")
    items = [dataset[i] for i in range(len(dataset))]
    images = paddle.stack([paddle.to_tensor(item[0]) for item in items])
    labels = paddle.to_tensor(np.asarray([np.asarray(item[1]).reshape(-1)[0] for item in items], dtype="int64"))

    def loss():
        total = None
        for lo in range(0, images.shape[0], batch_size):
            part = F.cross_entropy(_logits(model(images[lo:lo + batch_size])), labels[lo:lo + batch_size],
                                   reduction="sum")
            total = part if total is None else total + part
        return total / images.shape[0]

    return loss
