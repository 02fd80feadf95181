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

import hashlib
import os
from dataclasses import dataclass

import paddle

from ...io.files import read_state_dict
from ..._checks import check_positive_int
from ...models.architectures import ARCHITECTURES, detect_architecture, target_from
from ...models.resnet_vd import WEIGHTS_FILE, LoadReport

__all__ = ["PretrainedSource", "load_source", "verify_recorded_digest", "RESNET18_VD_URL"]

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
    source = arch.build(arch.num_classes(state) or num_classes)
    report = arch.load_weights(source, state)
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


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_recorded_digest(path: str) -> str:
    """Check ``path`` against the SHA-256 recorded beside it (``<path>.sha256``);
    record it if there is none yet (trust on first use: neither PaddleHub nor
    PaddleClas publishes a digest of this file). Returns ``path``.

    Raises:
        RuntimeError: the file changed since its digest was recorded. Nothing
            is deleted; the message says what to do.
    """
    record = path + ".sha256"
    digest = _sha256(path)
    if not os.path.isfile(record):
        with open(record, "w") as f:
            f.write(f"{digest}  {os.path.basename(path)}\n")
        return path
    with open(record) as f:
        expected = f.read().split()[0] if os.path.getsize(record) else ""
    if digest != expected:
        raise RuntimeError(
            f"{path} does not match the SHA-256 recorded when it was first used ({record}): the "
            f"file changed since (now {digest[:16]}..., recorded {expected[:16]}...). Nothing was "
            f"deleted. If you replaced it on purpose, delete {record}; otherwise delete {path} "
            "to download it again."
        )
    return path


def _resnet18_vd_weights(module_dir: str | None) -> str:
    """The ImageNet file: from ``module_dir`` (the user's), else PaddleHub's
    module home, downloading it there once; the downloaded copy is checked
    against its recorded digest on every use."""
    if module_dir and os.path.isfile(os.path.join(module_dir, WEIGHTS_FILE)):
        return os.path.join(module_dir, WEIGHTS_FILE)
    home = os.path.join(_module_home(), "resnet18_vd_imagenet")
    cached = os.path.join(home, WEIGHTS_FILE)
    if not os.path.isfile(cached):
        where = os.path.join(module_dir, WEIGHTS_FILE) if module_dir else cached
        cached = _download(
            RESNET18_VD_URL, home, "PaddleHub resnet18_vd_imagenet weights",
            f"download {RESNET18_VD_URL} on a connected machine and pass its path as the "
            f"source, or put it at {where}.",
        )
    return verify_recorded_digest(cached)


def _module_home() -> str:
    from paddlehub.env import MODULE_HOME

    return MODULE_HOME


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
            >>> from paddle_dtnh.integrations.hub import load_source
            >>> paddle.save(paddle.vision.models.resnet18().state_dict(), "/tmp/r18.pdparams")
            >>> src = load_source("/tmp/r18.pdparams", num_classes=10)
            >>> src.architecture, src.head
            ('resnet18', ['fc'])
    """
    check_positive_int("num_classes", num_classes)
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
