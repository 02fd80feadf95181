"""ResNet-18-vd for Paddle 3, loadable from PaddleHub's ``resnet18_vd_imagenet`` weights.

PaddleHub's own module source no longer imports on Paddle 3 (``MaxPool2d``,
``AvgPool2d`` and ``elementwise_add(act=)`` are gone). This network has the
same sublayer structure, so the weights file's structured keys
(``bb_0_0.conv0._conv.weight``) load 1:1; the older parameter-name keys
(``res2a_branch2a_weights``, ``bn2a_branch2a_scale``, ``fc_0.w_0``) are mapped
by :func:`legacy_names`.

"vd" (Bag of Tricks, He et al. 2019): a three-conv 3x3 stem, and in
down-sampling shortcuts a 2x2 average pool before the 1x1 conv.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn

from ..io.files import CheckpointError, read_state_dict


__all__ = ["ResNet18VD", "LoadReport", "legacy_names", "load_resnet18_vd_weights", "WEIGHTS_FILE"]

#: the file name PaddleHub's module keeps its ImageNet weights under
WEIGHTS_FILE = "resnet18_vd_imagenet.pdparams"

_DEPTH = (2, 2, 2, 2)
_IN = (64, 64, 128, 256)
_OUT = (64, 128, 256, 512)


class ConvBN(nn.Layer):
    """Conv (no bias) + BatchNorm, optionally preceded by the vd average pool."""

    def __init__(self, cin, cout, kernel, stride=1, relu=False, avg_pool_first=False):
        super().__init__()
        self.avg_pool_first = avg_pool_first
        self._conv = nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias_attr=False)
        self._batch_norm = nn.BatchNorm2D(cout)
        self.relu = relu

    def forward(self, x):
        if self.avg_pool_first:
            x = nn.functional.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        x = self._batch_norm(self._conv(x))
        return nn.functional.relu(x) if self.relu else x


class BasicBlockVD(nn.Layer):
    def __init__(self, cin, cout, stride, shortcut, first):
        super().__init__()
        self.conv0 = ConvBN(cin, cout, 3, stride=stride, relu=True)
        self.conv1 = ConvBN(cout, cout, 3)
        self.shortcut = shortcut
        if not shortcut:
            # the very first block keeps a plain 1x1 projection (stride 1)
            self.short = ConvBN(cin, cout, 1, avg_pool_first=not first)

    def forward(self, x):
        identity = x if self.shortcut else self.short(x)
        return nn.functional.relu(identity + self.conv1(self.conv0(x)))


class ResNet18VD(nn.Layer):
    """ResNet-18-vd with PaddleHub's sublayer names; ``forward`` returns logits.

    Args:
        num_classes (int, optional): classes of the head ``out``. Default: 1000.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.models.resnet_vd import ResNet18VD
            >>> net = ResNet18VD(num_classes=5)
            >>> list(net(paddle.randn([1, 3, 32, 32])).shape)
            [1, 5]
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1_1 = ConvBN(3, 32, 3, stride=2, relu=True)
        self.conv1_2 = ConvBN(32, 32, 3, relu=True)
        self.conv1_3 = ConvBN(32, 64, 3, relu=True)
        self.blocks = []
        for stage, depth in enumerate(_DEPTH):
            for i in range(depth):
                block = BasicBlockVD(
                    _IN[stage] if i == 0 else _OUT[stage],
                    _OUT[stage],
                    stride=2 if i == 0 and stage != 0 else 1,
                    shortcut=i != 0,
                    first=stage == 0 and i == 0,
                )
                self.blocks.append(self.add_sublayer(f"bb_{stage}_{i}", block))
        self.out = nn.Linear(_OUT[-1], num_classes)

    def stem(self, x):
        x = self.conv1_3(self.conv1_2(self.conv1_1(x)))
        return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    def stage(self, index: int):
        """The blocks of stage ``index`` (0..3) as one callable."""
        blocks = [getattr(self, f"bb_{index}_{i}") for i in range(_DEPTH[index])]

        def run(x):
            for block in blocks:
                x = block(x)
            return x

        return run

    def features(self, x):
        """Pooled features (the head's input), shape [B, 512]."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return paddle.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self.out(self.features(x))


def legacy_names(model: ResNet18VD) -> dict:
    """Structured name -> PaddleHub's parameter name (older weight files)."""
    names = {"out.weight": "fc_0.w_0", "out.bias": "fc_0.b_0"}
    conv_layers = {f"conv1_{i}": f"conv1_{i}" for i in (1, 2, 3)}
    for stage, depth in enumerate(_DEPTH):
        for i in range(depth):
            prefix, base = f"bb_{stage}_{i}", f"res{stage + 2}{chr(97 + i)}"
            conv_layers[f"{prefix}.conv0"] = f"{base}_branch2a"
            conv_layers[f"{prefix}.conv1"] = f"{base}_branch2b"
            if i == 0:
                conv_layers[f"{prefix}.short"] = f"{base}_branch1"
    for layer, legacy in conv_layers.items():
        bn = "bn_" + legacy if legacy.startswith("conv1") else "bn" + legacy[3:]
        names[f"{layer}._conv.weight"] = f"{legacy}_weights"
        for ours, theirs in (("weight", "scale"), ("bias", "offset"), ("_mean", "mean"), ("_variance", "variance")):
            names[f"{layer}._batch_norm.{ours}"] = f"{bn}_{theirs}"
    missing = set(model.state_dict()) - set(names)
    if missing:  # an internal invariant: the map covers the architecture
        raise RuntimeError(f"legacy name map misses {sorted(missing)}")
    return names


@dataclass
class LoadReport:
    """What :func:`load_resnet18_vd_weights` did with every tensor."""

    loaded: list = field(default_factory=list)
    not_loaded: dict = field(default_factory=dict)  # model tensor -> reason
    unused: dict = field(default_factory=dict)  # file entry -> reason
    key_style: str = ""

    def __str__(self):
        lines = [f"loaded {len(self.loaded)} tensors ({self.key_style} keys)"]
        lines += [f"  not loaded {k}: {why}" for k, why in self.not_loaded.items()]
        lines += [f"  unused in file {k}: {why}" for k, why in self.unused.items()]
        return "\n".join(lines)


def _read_state(path_or_state, trusted=False) -> dict:
    try:
        return read_state_dict(path_or_state, what="ResNet-18-vd weights", trusted=trusted)
    except CheckpointError:
        raise  # the library's own error already (an UnsafeFileError is one): keep its type
    except (TypeError, pickle.UnpicklingError) as err:
        raise ValueError(str(err)) from err


def load_resnet18_vd_weights(model: ResNet18VD, weights, *, head: str = "out", trusted: bool = False) -> LoadReport:
    """Fill ``model`` from PaddleHub ``resnet18_vd_imagenet`` weights.

    Every tensor is accounted for: the returned :class:`LoadReport` lists
    what was loaded, what was not (and why) and what in the file was unused.
    Only the head may stay unloaded (a different number of classes); any
    other gap raises ``ValueError`` before the model is changed.

    Args:
        model (ResNet18VD): the network to fill.
        weights (str|dict): a ``.pdparams`` path (dict or ``[state_dict, None]``
            layout, structured or legacy parameter-name keys) or a state dict.
        head (str, optional): prefix of the head's tensors. Default: "out".
        trusted (bool, optional): read the file with full pickle (see
            :func:`paddle_dtnh.io.files.load`). Default: False.

    Returns:
        LoadReport: the account of every tensor.
    """
    state = _read_state(weights, trusted)
    own = model.state_dict()
    legacy = legacy_names(model)
    structured = sum(k in state for k in own)
    old_style = sum(v in state for v in legacy.values())
    style = "structured" if structured >= old_style else "legacy"
    key_of = (lambda k: k) if style == "structured" else legacy.get
    report = LoadReport(key_style=style)
    to_load, problems = {}, []
    for name, tensor in own.items():
        key = key_of(name)
        if key not in state:
            if name.startswith(head + "."):
                report.not_loaded[name] = "absent from the file (new head: kept freshly initialised)"
            else:
                problems.append(f"{name}: absent from the file (as {key!r})")
            continue
        value = state[key]
        shape = list(value.shape) if hasattr(value, "shape") else list(np.shape(value))
        if shape != list(tensor.shape):
            reason = f"shape {shape} in the file, {list(tensor.shape)} in the model"
            if name.startswith(head + "."):
                report.not_loaded[name] = reason + " (new head: kept freshly initialised)"
            else:
                problems.append(f"{name}: {reason}")
            continue
        to_load[name] = value
    if problems:
        raise ValueError(
            "These weights are not ResNet-18-vd weights (or are corrupt):\n  "
            + "\n  ".join(problems[:15])
            + ("\n  ..." if len(problems) > 15 else "")
        )
    used = {key_of(n) for n in to_load} | {key_of(n) for n in report.not_loaded}
    report.unused = {k: "no tensor of this name in ResNet-18-vd" for k in state if k not in used}
    model.set_state_dict(to_load)
    report.loaded = sorted(to_load)
    return report
