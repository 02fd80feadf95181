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
    statistics, no dropout), back in the mode it had afterwards, also when
    the block raises.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh._layers import evaluating
            >>> net = paddle.nn.BatchNorm1D(2)
            >>> with evaluating(net):
            ...     net.training
            False
            >>> net.training
            True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def loss_and_accuracy(logits: paddle.Tensor, labels: paddle.Tensor):
    """Mean cross-entropy and top-1 accuracy of ``logits`` for integer
    ``labels`` of any shape ``[N]`` or ``[N, 1]`` (what hub.Trainer and
    paddle.Model hand a training step)."""
    labels = labels.reshape([-1, 1]).astype("int64")
    loss = F.cross_entropy(logits, labels)
    return loss, paddle.metric.accuracy(F.softmax(logits, axis=-1), labels)
