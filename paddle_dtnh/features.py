"""Feature maps of named sublayers, and the frozen source network.

Which layers are hooked by default is the architecture's business
(:mod:`paddle_dtnh.models.architectures`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import paddle

__all__ = ["FeatureCapture", "default_layers", "frozen_copy"]


def default_layers(model: paddle.nn.Layer) -> list:
    """The default hooked layers for ``model``'s architecture.

    Raises:
        ValueError: the architecture has no default; the message lists the
            model's sublayer names to choose ``layers=`` from.
    """
    from .models.architectures import architecture_of

    arch = architecture_of(model)
    if arch is not None:
        return list(arch.feature_layers)
    names = [n for n, _ in model.named_sublayers()]
    raise ValueError(
        f"No default feature layers for {type(model).__name__}; pass layers=[...] "
        f"from its sublayers: {names[:40]}{' ...' if len(names) > 40 else ''}"
    )


def _resolve(model: paddle.nn.Layer, names: Sequence[str]) -> dict:
    available = dict(model.named_sublayers())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"Unknown layer name(s) {unknown} for {type(model).__name__}. "
            f"Available: {list(available)[:60]}{' ...' if len(available) > 60 else ''}"
        )
    if not names:
        raise ValueError("layers is empty: name at least one sublayer to capture.")
    return {n: available[n] for n in names}


class FeatureCapture:
    """Capture the outputs of named sublayers during forward passes.

    A context manager: hooks are registered on entry and always removed on
    exit, also when the forward pass raises.

    Args:
        model (paddle.nn.Layer): the network to observe.
        layers (Sequence[str]): names from ``model.named_sublayers()``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.features import FeatureCapture
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.ReLU())
            >>> with FeatureCapture(net, ["0"]) as features:
            ...     out = net(paddle.ones([2, 3]))
            >>> list(features["0"].shape)
            [2, 4]
    """

    def __init__(self, model: paddle.nn.Layer, layers: Sequence[str]):
        self.layers = list(layers)
        self._modules = _resolve(model, self.layers)
        self._handles: list = []
        self.features: dict = {}

    def _hook(self, name):
        def store(layer, inputs, output):
            self.features[name] = output

        return store

    def __enter__(self) -> dict:
        self.features = {}
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_post_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self.features

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self._remove()

    def missing(self) -> list:
        """Layers that produced no output in the captured passes."""
        return [n for n in self.layers if n not in self.features]


def frozen_copy(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """A copy of ``model`` for use as the fixed source network: eval mode
    (BatchNorm uses and keeps its running statistics) and every parameter
    with ``stop_gradient=True``. The original is not touched."""
    source = copy.deepcopy(model)
    source.eval()
    for p in source.parameters():
        p.stop_gradient = True
    return source
