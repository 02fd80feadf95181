"""What the library knows about each supported network, in one place.

An :class:`Architecture` names the feature layers the feature-map
regularizers hook, the stage split DELTA's attention ablates, the new head's
prefix, how to build the network, and how to recognise its weights. Every
other module asks :func:`architecture_of` (a network) or
:func:`detect_architecture` (a state dict). Adding a network is one
:func:`register` call.

Hooked feature layers: the output of each stage's last residual block, after
the residual add and ReLU: the tensor the next stage (and the classifier)
consumes, so the regularizer and the attention speak about the same tensor.
(The PyTorch DELTA reference hooks the last conv of each stage before BN
and the add instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import paddle

from .resnet_vd import ResNet18VD, load_resnet18_vd_weights

__all__ = ["Architecture", "ARCHITECTURES", "register", "architecture_of", "detect_architecture", "target_from",
           "head_of", "architecture_mismatch"]


@dataclass(frozen=True)
class Architecture:
    """One supported network.

    Attributes:
        name (str): the registry key (``--arch`` on the command line).
        description (str): how error messages name it.
        layer_class (type): the ``paddle.nn.Layer`` class of its networks.
        build (callable): ``num_classes -> network`` with random weights.
        head (str): name prefix of the classifier (the new head of a target).
        feature_layers (tuple): sublayers hooked by KnowDist and DELTA.
        stages (callable): ``network -> [(name, callable), ...]`` composing
            image batch -> pooled features (DELTA's attention ablates them).
        marker_keys (tuple): state-dict keys that identify its weights.
        head_weight_keys (tuple): where a weights file may keep the head's
            ``[features, classes]`` weight (default: ``<head>.weight``).
        stage_parameters (tuple): for each of ``feature_layers``, the
            top-level name prefixes of the parameters that compute it and
            not the one before (the stem goes with the first stage): what a
            per-stage pull (``preset="auto_stages"``) turns on or off.
        loader (callable, optional): ``(network, state dict) -> report``,
            for files whose keys or layouts need translating; default: every
            tensor by its structured name, all required.
    """

    name: str
    description: str
    layer_class: type
    build: Callable
    head: str
    feature_layers: tuple
    stages: Callable
    marker_keys: tuple
    head_weight_keys: tuple = ()
    loader: Callable | None = None
    stage_parameters: tuple = ()

    def stage_of(self, name: str) -> str | None:
        """The feature layer (stage) whose pull covers parameter ``name``
        (None: the head, or a name of no stage)."""
        top = name.split(".")[0]
        for layer, prefixes in zip(self.feature_layers, self.stage_parameters):
            if top in prefixes:
                return layer
        return None

    def num_classes(self, state: Mapping) -> int | None:
        """Classes of the head stored in ``state`` (None if absent)."""
        for key in self.head_weight_keys or (f"{self.head}.weight",):
            if key in state:
                return int(state[key].shape[1])
        return None

    def load_weights(self, model: paddle.nn.Layer, state: Mapping):
        """Fill ``model`` from ``state``; returns the loader's report (None
        for the default loader). ValueError if a tensor is missing."""
        if self.loader is not None:
            return self.loader(model, state)
        missing = [k for k in model.state_dict() if k not in state]
        if missing:
            raise ValueError(f"These {self.name} weights lack {missing[:10]}; the file is incomplete.")
        model.set_state_dict(state)
        return None


def _resnet_stages(model):
    def stem(x):
        return model.maxpool(model.relu(model.bn1(model.conv1(x))))

    def pool(x):
        return paddle.flatten(model.avgpool(x), 1)

    stages = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    return [("stem", stem)] + stages + [("pool", pool)]


def _resnet_vd_stages(model):
    def pool(x):
        return paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(x, 1), 1)

    return [("stem", model.stem)] + [(f"bb_{i}_1", model.stage(i)) for i in range(4)] + [("pool", pool)]


#: every supported network, by name
ARCHITECTURES: dict = {}


def register(architecture: Architecture) -> None:
    """Add a network to :data:`ARCHITECTURES` (its name must be new)."""
    if architecture.name in ARCHITECTURES:
        raise ValueError(f"Architecture {architecture.name!r} is already registered.")
    ARCHITECTURES[architecture.name] = architecture


register(Architecture(
    name="resnet18", description="paddle.vision ResNet-18", layer_class=paddle.vision.models.ResNet,
    build=lambda num_classes: paddle.vision.models.resnet18(num_classes=num_classes),
    head="fc", feature_layers=("layer1", "layer2", "layer3", "layer4"), stages=_resnet_stages,
    marker_keys=("conv1.weight", "layer1.0.conv1.weight"),
    stage_parameters=(("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",)),
))
register(Architecture(
    name="resnet18_vd", description="ResNet-18-vd (PaddleHub)", layer_class=ResNet18VD,
    build=lambda num_classes: ResNet18VD(num_classes=num_classes),
    head="out", feature_layers=tuple(f"bb_{i}_1" for i in range(4)), stages=_resnet_vd_stages,
    marker_keys=("conv1_1._conv.weight",),
    # PaddleHub's file: structured or legacy ("fc_0.w_0") names, two layouts
    head_weight_keys=("out.weight", "fc_0.w_0"), loader=load_resnet18_vd_weights,
    stage_parameters=(("conv1_1", "conv1_2", "conv1_3", "bb_0_0", "bb_0_1"), ("bb_1_0", "bb_1_1"),
                      ("bb_2_0", "bb_2_1"), ("bb_3_0", "bb_3_1")),
))


def architecture_of(model: paddle.nn.Layer) -> Architecture | None:
    """The registered architecture of ``model`` (by class), or None.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.models.architectures import architecture_of
            >>> architecture_of(paddle.vision.models.resnet18()).head
            'fc'
    """
    for cls in type(model).__mro__:
        for arch in ARCHITECTURES.values():
            if arch.layer_class is cls:
                return arch
    return None


def detect_architecture(state: Mapping) -> Architecture | None:
    """The registered architecture whose weights ``state`` holds, or None."""
    for arch in ARCHITECTURES.values():
        if all(k in state for k in arch.marker_keys):
            return arch
    return None


def target_from(source: paddle.nn.Layer, num_classes: int) -> paddle.nn.Layer:
    """A network of ``source``'s architecture with every weight of ``source``
    but the head, and a fresh head of ``num_classes``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.models.architectures import target_from
            >>> model = target_from(paddle.vision.models.resnet18(), num_classes=5)
            >>> list(model.fc.weight.shape)
            [512, 5]
    """
    arch = architecture_of(source)
    if arch is None:
        raise ValueError(
            f"No registered architecture for {type(source).__name__}; known: {sorted(ARCHITECTURES)}. "
            "Register it with paddle_dtnh.models.architectures.register()."
        )
    model = arch.build(num_classes)
    prefix = arch.head + "."
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(prefix)}
    # the fresh head keeps its own values; listing them spares Paddle's "Skip loading" warnings
    state.update({k: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    model.set_state_dict(state)
    return model


def head_of(model: paddle.nn.Layer) -> str:
    """The classifier's name prefix: the architecture's, else the last Linear's."""
    arch = architecture_of(model)
    if arch is not None:
        return arch.head
    linears = [name for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)]
    return linears[-1] if linears else "fc"


def architecture_mismatch(model: paddle.nn.Layer, source) -> str | None:
    """A sentence naming both architectures when ``source`` (a network or a
    state dict) is recognisably of another registered architecture than
    ``model``; None otherwise."""
    target = architecture_of(model)
    if isinstance(source, paddle.nn.Layer):
        found = architecture_of(source)
    else:
        found = detect_architecture(source) if isinstance(source, Mapping) else None
    if target is None or found is None or target is found:
        return None
    return (f"The source looks like {found.description} ({found.name}), the target like "
            f"{target.description} ({target.name}): use a source of the target's architecture "
            f"(paddle_dtnh.integrations.hub.load_source builds both from one weights file).")
