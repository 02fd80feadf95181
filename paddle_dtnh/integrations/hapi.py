"""``paddle.Model`` (hapi) glue: a callback for DTNH's epochs and eval logs."""

from __future__ import annotations

import paddle

from .. import _paddle_compat as compat
from ..optim import DTNH

__all__ = ["DTNHCallback"]


def _scalar(value):
    """hapi reports losses as one-element lists."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else float(value)


class DTNHCallback(paddle.callbacks.Callback):
    """Ends DTNH's epochs (``lam`` decay) and logs evaluations to its logger.

    Use with ``paddle.Model(TransferTask(model, opt)).prepare(opt, ...)`` and
    ``model.fit(..., callbacks=[DTNHCallback()])``. The per-step
    diagnostics are written by the optimizer's own ``logger``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.integrations.hapi import DTNHCallback
            >>> net = paddle.nn.Linear(4, 3)
            >>> opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, lam_decay=0.5)
            >>> model = paddle.Model(net)
            >>> model.prepare(opt, paddle.nn.CrossEntropyLoss())
            >>> data = paddle.io.TensorDataset([paddle.randn([4, 4]), paddle.randint(0, 3, [4, 1])])
            >>> model.fit(data, epochs=2, batch_size=2, verbose=0, callbacks=[DTNHCallback()])
            >>> opt.lam
            0.25
    """

    def _dtnh(self) -> DTNH:
        opt = compat.hapi_optimizer(self.model)
        if not isinstance(opt, DTNH):
            raise TypeError("DTNHCallback needs a model prepared with a paddle_dtnh.DTNH optimizer.")
        return opt

    def on_epoch_end(self, epoch, logs=None):
        opt = self._dtnh()
        if opt.steps_per_epoch is None:
            opt.next_epoch()

    def on_eval_end(self, logs=None):
        opt = self._dtnh()
        if opt.logger is not None and logs:
            opt.logger.log_eval(opt.num_steps, loss=_scalar(logs.get("loss")), accuracy=_scalar(logs.get("acc")))

    def on_train_end(self, logs=None):
        opt = self._dtnh()
        if opt.logger is not None:
            opt.logger.flush()
