"""PaddleHub module ``resnet18_vd_dtnh``: ResNet-18-vd image classification
for Paddle 2.6 and 3, ready for fine-tuning with hub.Trainer (and DTNH).

Load it offline with ``hub.Module(directory=paddle_dtnh.integrations.hub.MODULE_DIR,
label_list=[...])``. Pretrained weights (PaddleHub's ImageNet file, either
layout), in this order: ``weights=<path>``; ``resnet18_vd_imagenet.pdparams``
in this directory; the copy PaddleHub (or ``paddle_dtnh.integrations.hub.load_source``)
downloaded to ``~/.paddlehub/modules/resnet18_vd_imagenet/``, checked against
its recorded digest. So the module and ``load_source("resnet18_vd_imagenet")``
start from the same weights.

Input: float32 images, NCHW, RGB, scaled to [0, 1] and normalised with the
ImageNet mean and std: ``paddle_dtnh.integrations.hub.imagenet_transform(size)`` for a
dataset, :meth:`ResNet18VDModule.preprocess` for HWC uint8 arrays or image
files; the ImageNet weights were trained on 224x224.
"""

import os
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
from paddlehub.module.module import moduleinfo

from paddle_dtnh import _paddle_compat as compat
from paddle_dtnh._layers import IMAGE_SPEC, evaluating
from paddle_dtnh.integrations.task import classification_step
from paddle_dtnh.io.files import read_state_dict
from paddle_dtnh.integrations.hub.transforms import imagenet_transform
from paddle_dtnh.models.resnet_vd import WEIGHTS_FILE, ResNet18VD, load_resnet18_vd_weights


def _downloaded_weights():
    """PaddleHub's downloaded ImageNet file, checked against its recorded digest, or None."""
    from paddlehub.env import MODULE_HOME

    from paddle_dtnh.integrations.hub.sources import verify_recorded_digest

    path = os.path.join(MODULE_HOME, "resnet18_vd_imagenet", WEIGHTS_FILE)
    return verify_recorded_digest(path) if os.path.isfile(path) else None


@moduleinfo(
    name="resnet18_vd_dtnh",
    type="CV/classification",
    author="paddle_dtnh",
    author_email="",
    summary="ResNet-18-vd for Paddle 3, fine-tunable with DTNH (paddle_dtnh).",
    version="1.1.0",
)
class ResNet18VDModule(ResNet18VD):
    """ResNet-18-vd classifier; ``forward`` returns ``(logits, feature)``.

    ``module.save_inference_model(dirname)`` writes a Paddle Inference model
    (``<dirname>/resnet18_vd_dtnh.*``, inputs as :attr:`input_spec`) whose
    outputs are the logits and the feature.

    Args:
        label_list (list, optional): the target's class names; gives the
            number of classes. Default: None.
        num_classes (int, optional): number of classes when no label_list is
            given. Default: 1000 (ImageNet, the pretrained head).
        weights (str, optional): pretrained ``.pdparams`` to start from.
            Default: see the module docstring.
        load_checkpoint (str, optional): a fine-tuned ``model.pdparams`` of
            this module to load instead. Default: None.
    """

    #: what save_inference_model traces: float32 NCHW images, any batch and size
    input_spec = list(IMAGE_SPEC)

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
            state = read_state_dict(load_checkpoint, what="fine-tuned checkpoint")
            # hub.Trainer saves the TransferTask's weights, prefixed "model."
            self.set_state_dict({k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()})
            return
        local = os.path.join(self.directory, WEIGHTS_FILE)
        weights = weights or (local if os.path.isfile(local) else _downloaded_weights())
        if weights is not None:
            self.load_report = load_resnet18_vd_weights(self, weights)
        else:
            warnings.warn(
                f"No pretrained weights found (weights=, {local}, nor PaddleHub's downloaded "
                f"resnet18_vd_imagenet): the network starts from random weights. Run "
                f"paddle_dtnh.integrations.hub.load_source('resnet18_vd_imagenet', ...) once online, or pass weights=<path>.",
                stacklevel=2,
            )

    def forward(self, x):
        feature = self.features(x)
        return self.out(feature), feature

    def save_inference_model(self, dirname, *args, **kwargs):
        """PaddleHub's export, traced in eval mode (BatchNorm uses its running
        statistics, as :meth:`predict` does), whatever mode training left."""
        with evaluating(self):
            if not compat.DEFAULT_TO_STATIC_WORKS:  # PaddleHub's Layer branch reads only dirname and input_spec
                spec = kwargs.get("input_spec") or (args[2] if len(args) > 2 else None) or self.input_spec
                return compat.export_hub_module(self, dirname, spec)
            return super(ResNet18VDModule, self).save_inference_model(dirname, *args, **kwargs)

    @staticmethod
    def preprocess(images, size=224):
        """HWC uint8 RGB arrays or image file paths -> a normalised NCHW float32 batch."""
        from PIL import Image

        transform, batch = imagenet_transform(size), []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as im:
                    image = np.asarray(im.convert("RGB"))
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"Expected an HWC RGB image, got shape {image.shape}.")
            batch.append(transform(image.astype("uint8")))
        return paddle.stack(batch)

    @paddle.no_grad()
    def predict(self, images, top_k=1, size=224):
        """Classify images (HWC uint8 RGB arrays or file paths).

        Returns:
            list[dict]: per image, the ``top_k`` labels (from ``label_list``,
            else class indices) and their probabilities.
        """
        with evaluating(self):
            probs = F.softmax(self(self.preprocess(images, size))[0], axis=-1).numpy()
        names = self.labels or list(range(probs.shape[1]))
        top_k = min(top_k, probs.shape[1])
        return [{names[i]: float(p[i]) for i in np.argsort(-p)[:top_k]} for p in probs]

    def _step(self, batch):
        loss, metrics = classification_step(self(batch[0]), batch[1])  # the same loss as TransferTask's
        return {"loss": loss, "metrics": metrics}

    def training_step(self, batch, batch_idx):
        return self._step(batch)

    def validation_step(self, batch, batch_idx):
        return self._step(batch)
