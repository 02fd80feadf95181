"""PaddleHub integration: ResNet-18 sources, a Paddle-3 ResNet-18-vd module,
and the Layer that lets hub.Trainer and paddle.Model train with DTNH."""

import os

from ...models.resnet_vd import WEIGHTS_FILE, LoadReport, ResNet18VD, legacy_names, load_resnet18_vd_weights
from .sources import PretrainedSource, load_source
from .task import TransferTask, held_out_loss
from .transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform

#: directory of the shipped PaddleHub module ``resnet18_vd_dtnh``, for
#: ``hub.Module(directory=MODULE_DIR, label_list=[...])``
MODULE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet18_vd_dtnh")

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_transform",
    "MODULE_DIR",
    "WEIGHTS_FILE",
    "LoadReport",
    "PretrainedSource",
    "ResNet18VD",
    "TransferTask",
    "held_out_loss",
    "legacy_names",
    "load_resnet18_vd_weights",
    "load_source",
]
