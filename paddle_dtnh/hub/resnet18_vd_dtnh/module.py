"""PaddleHub module ``resnet18_vd_dtnh``: ResNet-18-vd image classification
for Paddle 3, ready for fine-tuning with hub.Trainer (and DTNH).

Load it offline with ``hub.Module(directory=paddle_dtnh.hub.MODULE_DIR,
label_list=[...])``. Pretrained weights are read from
``resnet18_vd_imagenet.pdparams`` in this directory when present (PaddleHub's
ImageNet file, either layout), or from ``weights=<path>``.
"""

import os
import warnings

import paddle
import paddle.nn.functional as F
from paddlehub.module.module import moduleinfo

from paddle_dtnh.files import read_state_dict
from paddle_dtnh.resnet_vd import WEIGHTS_FILE, ResNet18VD, load_resnet18_vd_weights


@moduleinfo(
    name="resnet18_vd_dtnh",
    type="CV/classification",
    author="paddle_dtnh",
    author_email="",
    summary="ResNet-18-vd for Paddle 3, fine-tunable with DTNH (paddle_dtnh).",
    version="1.0.0",
)
class ResNet18VDModule(ResNet18VD):
    """ResNet-18-vd classifier; ``forward`` returns ``(logits, feature)``.

    Args:
        label_list (list, optional): the target's class names; gives the
            number of classes. Default: None.
        num_classes (int, optional): number of classes when no label_list is
            given. Default: 1000 (ImageNet, the pretrained head).
        weights (str, optional): pretrained ``.pdparams`` to start from.
            Default: ``resnet18_vd_imagenet.pdparams`` in the module directory.
        load_checkpoint (str, optional): a fine-tuned ``model.pdparams`` of
            this module to load instead. Default: None.
    """

    def __init__(self, label_list=None, num_classes=None, weights=None, load_checkpoint=None):
        if label_list is not None and num_classes is not None and len(label_list) != num_classes:
            raise ValueError(
                f"label_list has {len(label_list)} names but num_classes={num_classes}; give one of them."
            )
        self.labels = list(label_list) if label_list is not None else None
        classes = len(label_list) if label_list is not None else (num_classes or 1000)
        # @moduleinfo rebuilds the class: name it explicitly in super()
        super(ResNet18VDModule, self).__init__(num_classes=classes)
        self.load_report = None
        if load_checkpoint is not None:
            self.set_state_dict(read_state_dict(load_checkpoint, what="fine-tuned checkpoint"))
            return
        weights = weights or os.path.join(self.directory, WEIGHTS_FILE)
        if os.path.isfile(weights):
            self.load_report = load_resnet18_vd_weights(self, weights)
        else:
            warnings.warn(
                f"No pretrained weights at {weights}: the network starts from random weights. "
                f"Put PaddleHub's {WEIGHTS_FILE} there, or pass weights=<path>.",
                stacklevel=2,
            )

    def forward(self, x):
        feature = self.features(x)
        return self.out(feature), feature

    def _step(self, batch):
        images, labels = batch[0], batch[1]
        logits, _ = self(images)
        labels = labels.reshape([-1, 1]).astype("int64")
        loss = F.cross_entropy(logits, labels)
        acc = paddle.metric.accuracy(F.softmax(logits, axis=-1), labels)
        return {"loss": loss, "metrics": {"acc": acc}}

    def training_step(self, batch, batch_idx):
        return self._step(batch)

    def validation_step(self, batch, batch_idx):
        return self._step(batch)
