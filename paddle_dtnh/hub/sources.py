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

from ..files import read_state_dict
from ..architectures import ARCHITECTURES, detect_architecture, target_from
from ..resnet_vd import WEIGHTS_FILE, LoadReport, load_resnet18_vd_weights

__all__ = ["PretrainedSource", "load_source", "RESNET18_VD_URL"]

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


def _detect(state: dict, where: str):
    arch = detect_architecture(state)
    if arch is None and "conv1_1_weights" in state:  # PaddleHub's older parameter names
        arch = ARCHITECTURES["resnet18_vd"]
    if arch is None:
        raise ValueError(
            f"{where} holds weights of an unknown architecture (first keys: {sorted(state)[:6]}). "
            f"Expected one of {sorted(ARCHITECTURES)}."
        )
    return arch


def _pretrained(arch, state: dict, num_classes: int) -> PretrainedSource:
    """The source of ``arch`` filled from ``state``, and its target."""
    legacy_head = "fc_0.w_0" if arch.name == "resnet18_vd" and "fc_0.w_0" in state else None
    source_classes = arch.num_classes(state) or (legacy_head and int(state[legacy_head].shape[1])) or num_classes
    source = arch.build(source_classes)
    report = None
    if arch.name == "resnet18_vd":  # two key styles and two layouts: the loader accounts for all
        report = load_resnet18_vd_weights(source, state)
    else:
        missing = [k for k in source.state_dict() if k not in state]
        if missing:
            raise ValueError(f"These {arch.name} weights lack {missing[:10]}; the file is incomplete.")
        source.set_state_dict(state)
    return PretrainedSource(source, target_from(source, num_classes), [arch.head], arch.name, report)


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
        return _pretrained(ARCHITECTURES["resnet18"], read_state_dict(path), num_classes)
    if spec == "resnet18_vd_imagenet":
        return _pretrained(ARCHITECTURES["resnet18_vd"], read_state_dict(_resnet18_vd_weights(module_dir)), num_classes)
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
        state = read_state_dict(spec)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        raise ValueError(f"Cannot read source weights {spec}: {err}") from err
    return _pretrained(_detect(state, spec), state, num_classes)
