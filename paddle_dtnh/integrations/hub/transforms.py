"""The input the ResNet-18-vd module and its ImageNet weights expect."""

from __future__ import annotations

#: ImageNet channel statistics (RGB, on [0, 1] pixels) the pretrained weights were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transform(size: int = 224):
    """A ``paddle.vision`` transform: HWC image -> float32 [3, size, size],
    RGB on [0, 1], normalised with the ImageNet mean and std.

    Examples:
        .. code-block:: python

            >>> import numpy as np
            >>> from paddle_dtnh.integrations.hub import imagenet_transform
            >>> x = imagenet_transform(32)(np.zeros((40, 30, 3), np.uint8))
            >>> list(x.shape), str(x.dtype)
            ([3, 32, 32], 'paddle.float32')
    """
    import paddle.vision.transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])
