"""One Layer that lets PaddleHub's Trainer and ``paddle.Model`` train with DTNH."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from ..task import ClassificationTask, logits_of

__all__ = ["TransferTask", "held_out_loss"]


class TransferTask(ClassificationTask):
    """Wrap a classifier so the loops that call ``loss.backward();
    optimizer.step()`` themselves train it with DTNH and any regularizer:
    :class:`paddle_dtnh.integrations.task.ClassificationTask` under the name
    PaddleHub users know.

    In training mode, ``forward`` runs ``regularizer.run`` (the target, and
    for a feature-map regularizer the frozen source, once each) and hands
    the regularizer's value to ``optimizer.regularize`` before the loop's
    ``backward()``, whatever the regularizer. Only ``model`` is a sublayer:
    checkpoints hold the target's weights, never the source's.

    * hub.Trainer: ``hub.Trainer(task, optimizer, ...)``; ``training_step``
      and ``validation_step`` return ``{'loss', 'metrics': {'acc'}}``.
    * paddle.Model: ``paddle.Model(task).prepare(optimizer, CrossEntropyLoss())``.

    Args: ``model``, the target classifier, and ``optimizer``, its DTNH, as
    :class:`~paddle_dtnh.integrations.task.RegularizedTask` takes them.

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
            part = F.cross_entropy(logits_of(model(images[lo:lo + batch_size])), labels[lo:lo + batch_size],
                                   reduction="sum")
            total = part if total is None else total + part
        return total / images.shape[0]

    return loss
