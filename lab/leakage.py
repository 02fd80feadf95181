"""No target image in a source's pretraining set: checked, not assumed.

A source-fit score, or a regularizer's gain, measured on images the source
was pretrained on says nothing about a new target. For a source of given
pretraining settings and a target set, :func:`leakage` compares the
source's pretraining images with every image of the target (training and
test splits) twice: by origin (which image of which shipped file each one
is, kept through subsets, inversions and partitions) and by content (the
pixels, and the pixels inverted, so a shifted copy is caught too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from paddle_dtnh.data import load_dataset

from .sources import pretraining_images

__all__ = ["Leakage", "leakage"]


@dataclass
class Leakage:
    """Target images (train + test) that are, or copy, a pretraining image."""

    source: str
    target: str
    pretraining_images: int
    target_images: int
    same_origin: int
    same_pixels: int

    @property
    def clean(self) -> bool:
        return self.same_origin == 0 and self.same_pixels == 0

    def __str__(self):
        return (f"{self.source} ({self.pretraining_images} pretraining images) -> {self.target} "
                f"({self.target_images} images): {self.same_origin} share an origin, {self.same_pixels} the pixels")


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def leakage(source_dataset: str, target: str, *, max_images: int, seed: int = 0) -> Leakage:
    """Compare a source's pretraining images (``source_dataset``,
    ``max_images``, ``seed``: the settings of :func:`lab.pretrain_source`)
    with every image of ``target``."""
    seen = pretraining_images(source_dataset, max_images=max_images, seed=seed)
    data = load_dataset(target)
    origins = np.concatenate([data.train.origin, data.test.origin])
    pixels = {_digest(im) for im in seen.images} | {_digest(255 - im) for im in seen.images}
    same_pixels = sum(_digest(im) in pixels for split in (data.train, data.test) for im in split.images)
    return Leakage(source_dataset, target, len(seen.labels), len(origins),
                   int(np.isin(origins, seen.origin).sum()), int(same_pixels))
