r"""Feature-map transfer regularizers: KnowDist and DELTA.

Both compare the target network's feature maps with those of a frozen copy
of the source network on the same batch. Normalisation (so ``lam`` does not
depend on batch size or feature-map size): each channel's squared distance
is divided by its map's :math:`H \times W`, and the sum over channels and
layers is averaged over the batch. Their gradient comes from ``paddle.grad``
(no closed form): ``output, omega = reg.run(x)``, then ``opt.update(loss,
omega)`` or, in hook mode, ``opt.regularize(omega)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import paddle

from .. import _paddle_compat as compat
from ..features import FeatureCapture, default_layers, frozen_copy
from .._checks import as_array, check_nonnegative, check_not_empty_batch
from ..io.files import read_state_dict
from .base import (SourceMismatchError, TransferRegularizer, check_source, match_source, warn_if_far_from_source,
                   weight_digests)

__all__ = ["FeatureMapRegularizer", "KnowDist", "DELTA"]


def _output_channels(layer):
    """The channels of ``layer``'s output where its parameters tell them: the
    layer's last parameterised sublayer is a Conv2D or a BatchNorm (as in
    ResNet blocks and stages); else None, and ``run()`` checks the shape."""
    if layer is None:
        return None
    leaves = [sub for sub in [layer] + layer.sublayers() if sub.parameters(include_sublayers=False)]
    last = leaves[-1] if leaves else None
    if isinstance(last, paddle.nn.Conv2D) and last.weight is not None:
        return last.weight.shape[0]
    if isinstance(last, (paddle.nn.BatchNorm2D, paddle.nn.BatchNorm, paddle.nn.SyncBatchNorm)) \
            and last.weight is not None:
        return last.weight.shape[0]
    return None


def _source_network(model: paddle.nn.Layer, source, head, strict) -> paddle.nn.Layer:
    """A frozen source network: a copy of ``source`` if it is a Layer, else a
    copy of ``model``'s architecture loaded with the given weights (checked
    like every regularizer's source, :func:`check_source`; the head keeps the
    target's values, which no hooked feature layer reads)."""
    if isinstance(source, paddle.nn.Layer):
        from ..models.architectures import architecture_mismatch  # the model zoo only when needed

        other = architecture_mismatch(model, source)
        if other:
            raise SourceMismatchError(other)
        network = frozen_copy(source)
        state = network.state_dict()
        check_source(network, state, strict=False, whole_network=True)  # NaN/Inf only
        return network
    state = read_state_dict(source)
    check_source(model, state, head=head, strict=strict, whole_network=True)
    network = frozen_copy(model)
    own = network.state_dict()
    network.set_state_dict({k: paddle.to_tensor(as_array(state[k]), dtype=t.dtype) for k, t in own.items()
                            if k in state and tuple(np.shape(state[k])) == tuple(t.shape)})
    return network


def _channel_distances(target: paddle.Tensor, source: paddle.Tensor, name: str) -> paddle.Tensor:
    """Per sample and channel: ||F_c(w,x) - F_c(w_s,x)||^2 / (H*W), shape [B, C]."""
    if target.shape != source.shape:
        raise ValueError(
            f"Feature map {name!r} has shape {target.shape} in the target and "
            f"{source.shape} in the source; hook layers with the same output shape."
        )
    if target.ndim not in (2, 4):
        raise ValueError(
            f"Feature map {name!r} must be [B, C, H, W] or [B, C], got shape {target.shape}."
        )
    diff = target - source
    if diff.ndim == 2:
        return diff * diff
    return paddle.mean(diff * diff, axis=[2, 3])


class FeatureMapRegularizer(TransferRegularizer):
    """Shared machinery: the frozen source, the hooks and the distances.

    Args:
        model (paddle.nn.Layer): the target network.
        source (Layer|dict|str): the source network, or its weights for
            ``model``'s own architecture. A frozen copy is kept (eval mode,
            no gradient); it is not a sublayer, so it is neither trained nor
            saved with the model or with this regularizer.
        layers (Sequence[str], optional): sublayers whose outputs are
            compared. Default: the architecture's default (see
            :func:`paddle_dtnh.features.default_layers`).
        head (Sequence[str], optional): name prefixes of the new parameters.
            Default: ().
        strict (bool, optional): with a state dict as ``source``, reject entries
            that match no target tensor (as the weight regularizers do). Default: True.
    """

    def __init__(self, model, source, *, layers: Sequence[str] | None = None, head=(), strict: bool = True):
        super().__init__()
        self.layers = list(layers) if layers is not None else default_layers(model)
        FeatureCapture(model, self.layers)  # validates the names now
        match = match_source(model, None, head=head)
        # plain attributes, not sublayers: see the class docstring
        self._set_model(model)
        object.__setattr__(self, "_source", _source_network(model, source, head, strict))
        FeatureCapture(self._source, self.layers)
        frozen = dict(self._source.named_parameters())
        warn_if_far_from_source([(p, frozen[n]) for n, p, _ in match.shared
                                 if n in frozen and frozen[n].shape == p.shape])
        self._trainable = [p for _, p, _ in match.shared] + [p for _, p in match.new]
        self._head = [p for _, p in match.new]
        self._head_names = [n for n, _ in match.new]

    @property
    def source(self) -> paddle.nn.Layer:
        """The frozen source network."""
        return self._source

    def to(self, device=None, dtype=None, blocking=None, non_blocking=None):
        """Cast and move this loss's constants and its frozen source network
        (not a sublayer, so Paddle's ``Layer.to`` would skip it); the target
        model is the user's to move. Returns self."""
        given = compat.layer_to_arguments(device, dtype, blocking, non_blocking)
        super().to(**given)
        self._source.to(**given)
        return self

    def regularized_parameters(self) -> list:
        return list(self._trainable)

    def source_digests(self) -> dict:
        head = sorted({n.split(".")[0] for n in self._head_names})
        return weight_digests(self._source.named_parameters(), head)

    def capture(self) -> FeatureCapture:
        """A :class:`FeatureCapture` on the target for this regularizer's layers."""
        return FeatureCapture(self._model, self.layers)

    @paddle.no_grad()
    def source_features(self, x: paddle.Tensor) -> dict:
        """The source network's feature maps on ``x`` (no graph kept)."""
        self._source.eval()
        with FeatureCapture(self._source, self.layers) as features:
            self._source(x)
        return {k: v.detach() for k, v in features.items()}

    def run(self, x: paddle.Tensor):
        """Forward the target and the source once each on ``x``.

        Returns:
            tuple: ``(output, reg_loss)``: the target's output (logits) and
            :math:`\\Omega` on this batch, sharing one graph.

        Raises:
            ValueError: ``x`` holds no images (read from its shape: no device sync).
        """
        check_not_empty_batch(x, f"{type(self).__name__}.run(x)")
        with self.capture() as features:
            output = self._model(x)
        return output, self(x, features)

    def _channel_weights(self, name: str, channels: int):
        """Weight of each channel's distance in layer ``name`` (None: all 1)."""
        return None

    def _head_penalty(self):
        return None

    def _feature_scale(self) -> float:
        return 1.0

    def forward(self, x: paddle.Tensor, target_features: Mapping) -> paddle.Tensor:
        missing = [n for n in self.layers if n not in target_features]
        if missing:
            raise ValueError(
                f"target_features lacks {missing}: run the target's forward pass inside "
                "`with reg.capture() as features:`, or use reg.run(x)."
            )
        source = self.source_features(x)
        total = None
        for name in self.layers:
            per_channel = _channel_distances(target_features[name], source[name], name)
            weights = self._channel_weights(name, per_channel.shape[1])
            if weights is not None:
                per_channel = per_channel * weights
            term = paddle.mean(paddle.sum(per_channel, axis=1))
            total = term if total is None else total + term
        total = self._feature_scale() * total
        head = self._head_penalty()
        return total if head is None else total + head


class KnowDist(FeatureMapRegularizer):
    r"""Feature-map distillation from the source (DTNH paper, Eq. 3; Yim et
    al., CVPR 2017).

    .. math::

        \Omega(w) = \frac{1}{n}\sum_{i=1}^{n}\sum_{l}\sum_{c}
            \frac{\lVert F_{l,c}(w, x_i) - F_{l,c}(w_s, x_i)\rVert^2}{H_l W_l}

    over the channels :math:`c` of each hooked layer :math:`l`.
    See :class:`FeatureMapRegularizer` for the arguments.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import KnowDist
            >>> net = paddle.vision.models.resnet18(num_classes=4)
            >>> reg = KnowDist(net, paddle.vision.models.resnet18(num_classes=4))
            >>> logits, omega = reg.run(paddle.randn([2, 3, 32, 32]))
            >>> list(logits.shape), list(omega.shape)
            ([2, 4], [])
    """


class DELTA(FeatureMapRegularizer):
    r"""DELTA: attention-weighted feature-map distance plus a penalty on the
    new head (Li et al., ICLR 2019, https://arxiv.org/abs/1901.09229, Eqs. 4-6).

    .. math::

        \Omega(w) = \alpha\,\frac{1}{n}\sum_{i=1}^{n}\sum_{l}\sum_{c}
            C_l\,W_{l,c}\,\frac{\lVert F_{l,c}(w, x_i) - F_{l,c}(w_s, x_i)\rVert^2}{H_l W_l}
            + \frac{\beta}{2}\lVert w_N\rVert^2

    :math:`W_{l,\cdot}` sums to 1 over the :math:`C_l` channels of layer
    :math:`l`; the factor :math:`C_l` (as in the PyTorch reference) makes
    uniform weights equal 1, so DELTA without attention is exactly
    ``alpha * KnowDist + beta/2 ||w_N||^2``.

    Args:
        alpha (float): weight of the feature-map term (reference: 0.01).
        beta (float): weight of the head penalty (reference: 0.01).
        attention (dict|AttentionWeights, optional): per layer, the channel
            weights (summing to 1), from
            :func:`paddle_dtnh.attention.compute_attention`. ``None`` gives
            "DELTA without attention" (uniform weights). Default: None.
        **kwargs: see :class:`FeatureMapRegularizer`.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import DELTA
            >>> net = paddle.vision.models.resnet18(num_classes=4)
            >>> reg = DELTA(net, paddle.vision.models.resnet18(num_classes=4),
            ...             alpha=0.01, beta=0.01, head=["fc"])
            >>> logits, omega = reg.run(paddle.randn([2, 3, 32, 32]))
            >>> float(omega) > 0
            True
    """

    def __init__(self, model, source, *, alpha: float, beta: float, attention=None, **kwargs):
        super().__init__(model, source, **kwargs)
        self.alpha = check_nonnegative("alpha", alpha)
        self.beta = check_nonnegative("beta", beta)
        self._weights = {}
        if attention is not None:
            weights = getattr(attention, "weights", attention)
            missing = [n for n in self.layers if n not in weights]
            if missing:
                raise ValueError(
                    f"attention has no weights for layer(s) {missing}; it covers "
                    f"{sorted(weights)}. Compute it for layers={self.layers}."
                )
            param = self._trainable[0] if self._trainable else None
            sublayers = dict(self._model.named_sublayers())
            for name in self.layers:
                w = as_array(weights[name])
                if w.ndim != 1 or not np.isclose(w.sum(), 1.0, atol=1e-3) or (w < 0).any():
                    raise ValueError(
                        f"attention[{name!r}] must be 1-D non-negative weights summing to "
                        f"1, got shape {w.shape} and sum {float(w.sum()):.4g}."
                    )
                channels = _output_channels(sublayers.get(name))
                if channels is not None and w.shape[0] != channels:
                    raise ValueError(
                        f"attention[{name!r}] has {w.shape[0]} weights but layer {name!r} has {channels} "
                        "output channels: the attention was computed for another network. Recompute it "
                        "with paddle_dtnh.attention.compute_attention for this model and layers.")
                kw = {} if param is None else {"dtype": param.dtype, "place": param.place}
                self._weights[name] = paddle.to_tensor(w * w.shape[0], **kw)
            self._register_constants("attention", [self._weights[name] for name in self.layers])

    def _channel_weights(self, name, channels):
        weights = self._weights.get(name)
        if weights is not None and weights.shape[0] != channels:
            raise ValueError(
                f"attention[{name!r}] has {weights.shape[0]} weights but the layer has "
                f"{channels} channels: the attention was computed for another network."
            )
        return weights

    def _feature_scale(self):
        return self.alpha

    def _head_penalty(self):
        if not self._head or self.beta == 0:
            return None
        return 0.5 * self.beta * paddle.add_n([paddle.sum(p * p) for p in self._head])
