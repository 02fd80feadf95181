"""Small pieces the integrations share: a model in eval mode for a while,
the image input spec of an export, and the classifier's loss and accuracy."""

from __future__ import annotations

import contextlib

import paddle
import paddle.nn.functional as F

__all__ = ["evaluating", "IMAGE_SPEC", "loss_and_accuracy"]

#: the input of an exported image classifier: NCHW float32, any batch and size
IMAGE_SPEC = (paddle.static.InputSpec(shape=[None, 3, None, None], dtype="float32", name="image"),)


@contextlib.contextmanager
def evaluating(model: paddle.nn.Layer):
    """``model`` in eval mode inside the block (BatchNorm on its running
    statistics, no dropout), every sublayer back in the mode it had
    afterwards, also when the block raises.

    Each layer's own ``training`` flag is restored, not the model's alone: a
    network in train mode whose BatchNorm layers were put in eval (frozen
    statistics) comes back with them still in eval. Nothing else is touched.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh._layers import evaluating
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.BatchNorm1D(2))
            >>> _ = net.train()
            >>> _ = net[1].eval()  # frozen statistics
            >>> with evaluating(net):
            ...     net.training
            False
            >>> net.training, net[1].training
            (True, False)
    """
    modes = [(layer, layer.training) for layer in model.sublayers(include_self=True)]
    model.eval()
    try:
        yield model
    finally:
        if modes[0][1]:
            model.train()  # Paddle's dygraph train mode back too, as before the block
        for layer, training in modes:
            layer.training = training


def loss_and_accuracy(logits: paddle.Tensor, labels: paddle.Tensor):
    """Mean cross-entropy and top-1 accuracy of ``logits`` for integer
    ``labels`` of any shape ``[N]`` or ``[N, 1]`` (what hub.Trainer and
    paddle.Model hand a training step)."""
    labels = labels.reshape([-1, 1]).astype("int64")
    loss = F.cross_entropy(logits, labels)
    return loss, paddle.metric.accuracy(F.softmax(logits, axis=-1), labels)
