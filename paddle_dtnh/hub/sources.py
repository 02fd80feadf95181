"""Resolve a source specification to pretrained ResNet-18 networks.

A specification is one of:

* ``"resnet18"``: paddle.vision's ResNet-18 with its ImageNet weights
  (downloaded by Paddle on first use, then cached);
* ``"resnet18_vd_imagenet"``: PaddleHub's ResNet-18-vd ImageNet weights,
  read from a module directory (``module_dir=``), from PaddleHub's module
  home (``~/.paddlehub/modules/resnet18_vd_imagenet``), or downloaded there;
* a path to a ``.pdparams`` file of either architecture (detected from its
  keys), or a module directory holding ``resnet18_vd_imagenet.pdparams``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import paddle

from ..regularizers.base import load_state_dict
from .resnet_vd import WEIGHTS_FILE, LoadReport, ResNet18VD, load_resnet18_vd_weights

__all__ = ["PretrainedSource", "load_source", "resnet18_target", "RESNET18_VD_URL"]

RESNET18_VD_URL = "https://paddlehub.bj.bcebos.com/dygraph/image_classification/resnet18_vd_imagenet.pdparams"


@dataclass
class PretrainedSource:
    """A pretrained source and the target network built from it.

    Attributes:
        source (paddle.nn.Layer): the source network with its own head (for a
            frozen copy, a Fisher estimate, DELTA's attention).
        model (paddle.nn.Layer): the target network: the source's trunk and a
            fresh head for the target's classes.
        head (list[str]): name prefix of the new head (``["fc"]`` or ``["out"]``).
        architecture (str): ``"resnet18"`` or ``"resnet18_vd"``.
        report (LoadReport|None): how the weights were loaded (ResNet-18-vd).
    """

    source: paddle.nn.Layer
    model: paddle.nn.Layer
    head: list
    architecture: str
    report: LoadReport | None = None


def _detect_architecture(state: dict, where: str) -> str:
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet18"
    if "conv1_1._conv.weight" in state or "conv1_1_weights" in state:
        return "resnet18_vd"
    raise ValueError(
        f"{where} holds weights of an unknown architecture (first keys: {sorted(state)[:6]}). "
        "Expected paddle.vision's resnet18 or PaddleHub's resnet18_vd_imagenet."
    )


def resnet18_target(source, num_classes: int) -> paddle.nn.Layer:
    """A paddle.vision ResNet-18 with every weight of ``source`` (a network
    or its state dict) but the head ``fc``, and a fresh head of ``num_classes``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.hub.sources import resnet18_target
            >>> model = resnet18_target(paddle.vision.models.resnet18(), num_classes=5)
            >>> list(model.fc.weight.shape)
            [512, 5]
    """
    state = source.state_dict() if isinstance(source, paddle.nn.Layer) else source
    model = paddle.vision.models.resnet18(num_classes=num_classes)
    model.set_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    return model


def _vision_resnet18(state: dict | None, num_classes: int) -> PretrainedSource:
    source_classes = state["fc.weight"].shape[1] if state and "fc.weight" in state else 1000
    source = paddle.vision.models.resnet18(num_classes=source_classes)
    if state is not None:
        missing = [k for k in source.state_dict() if k not in state]
        if missing:
            raise ValueError(f"These resnet18 weights lack {missing[:10]}; the file is incomplete.")
        source.set_state_dict(state)
    return PretrainedSource(source, resnet18_target(source, num_classes), ["fc"], "resnet18")


def _vd(state: dict, num_classes: int) -> PretrainedSource:
    structured = "out.weight" in state
    head_key = "out.weight" if structured else "fc_0.w_0"
    source_classes = state[head_key].shape[1] if head_key in state else num_classes
    source = ResNet18VD(num_classes=source_classes)
    report = load_resnet18_vd_weights(source, state)
    model = ResNet18VD(num_classes=num_classes)
    model.set_state_dict({k: v for k, v in source.state_dict().items() if not k.startswith("out.")})
    return PretrainedSource(source, model, ["out"], "resnet18_vd", report)


def _download(url: str, directory: str, what: str, how: str) -> str:
    from paddle.utils.download import get_path_from_url

    try:
        return get_path_from_url(url, directory)
    except Exception as err:  # offline: requests/urllib raise many types
        raise RuntimeError(
            f"Could not download the {what} ({type(err).__name__}: {err}). "
            f"This needs internet access once. Offline: {how}"
        ) from err


def _resnet18_vd_weights(module_dir: str | None) -> str:
    candidates = []
    if module_dir:
        candidates.append(os.path.join(module_dir, WEIGHTS_FILE))
    from paddlehub.env import MODULE_HOME

    home = os.path.join(MODULE_HOME, "resnet18_vd_imagenet")
    candidates.append(os.path.join(home, WEIGHTS_FILE))
    for path in candidates:
        if os.path.isfile(path):
            return path
    return _download(
        RESNET18_VD_URL, home, "PaddleHub resnet18_vd_imagenet weights",
        f"download {RESNET18_VD_URL} on a connected machine and pass its path as the "
        f"source, or put it at {candidates[0]}.",
    )


def load_source(spec: str, num_classes: int, *, module_dir: str | None = None) -> PretrainedSource:
    """Resolve ``spec`` to a pretrained source and a target with a fresh head.

    Args:
        spec (str): ``"resnet18"``, ``"resnet18_vd_imagenet"``, a ``.pdparams``
            path, or a module directory (see the module docstring).
        num_classes (int): classes of the target's new head.
        module_dir (str, optional): where to look first for PaddleHub's
            ``resnet18_vd_imagenet.pdparams``. Default: None.

    Returns:
        PretrainedSource: the source, the target and the head's name.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.hub import load_source
            >>> paddle.save(paddle.vision.models.resnet18().state_dict(), "/tmp/r18.pdparams")
            >>> src = load_source("/tmp/r18.pdparams", num_classes=10)
            >>> src.architecture, src.head
            ('resnet18', ['fc'])
    """
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"Invalid num_classes: {num_classes!r}; expected a positive int.")
    if spec == "resnet18":
        from paddle.vision.models.resnet import model_urls

        url, md5 = model_urls["resnet18"]
        from paddle.utils.download import get_weights_path_from_url

        try:
            path = get_weights_path_from_url(url, md5)
        except Exception as err:  # offline: requests/urllib raise many types
            raise RuntimeError(
                f"Could not download paddle.vision's ResNet-18 ImageNet weights ({type(err).__name__}: "
                f"{err}). This needs internet access once. Offline: download {url} on a connected "
                "machine and pass its path as the source."
            ) from err
        return _vision_resnet18(load_state_dict(path), num_classes)
    if spec == "resnet18_vd_imagenet":
        return _vd(load_state_dict(_resnet18_vd_weights(module_dir)), num_classes)
    if os.path.isdir(spec):
        path = os.path.join(spec, WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Module directory {spec} has no {WEIGHTS_FILE}.")
        spec = path
    if not os.path.exists(spec):
        raise ValueError(
            f"Unknown source {spec!r}: not 'resnet18', 'resnet18_vd_imagenet', nor an existing "
            ".pdparams file or module directory."
        )
    try:
        state = load_state_dict(spec)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        raise ValueError(f"Cannot read source weights {spec}: {err}") from err
    architecture = _detect_architecture(state, spec)
    if architecture == "resnet18":
        return _vision_resnet18(state, num_classes)
    return _vd(state, num_classes)
