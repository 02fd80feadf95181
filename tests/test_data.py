import numpy as np
import pytest
from PIL import Image

from paddle_dtnh.data import DATASETS, few_shot_indices, load_dataset, to_tensor_batch


def test_embedded_digits_and_mnist5k():
    digits = load_dataset("digits")
    assert digits.num_classes == 10 and digits.train.images.shape[1:] == (8, 8)
    assert len(digits.train.labels) + len(digits.test.labels) == 1797
    assert digits.train.images.dtype == np.uint8 and digits.train.images.max() == 255
    again = load_dataset("digits")  # the split is deterministic
    np.testing.assert_array_equal(digits.test.labels, again.test.labels)
    mnist = load_dataset("mnist5k")
    assert mnist.train.images.shape == (4000, 28, 28) and mnist.test.images.shape == (1000, 28, 28)


def test_fashion_mnist_from_idx_files_or_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=str(tmp_path))
    # a tiny idx set written here, read through paddle.vision's reader
    import gzip

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 100)):  # paddle reads records in blocks of 100
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, n, 28, 28], ">i4").tobytes() + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, n], ">i4").tobytes() + labels.tobytes())
        if prefix == "train":
            expected = (images, labels)
    data = load_dataset("fashion-mnist", root=str(tmp_path))
    np.testing.assert_array_equal(data.train.images, expected[0])
    np.testing.assert_array_equal(data.train.labels, expected[1])
    assert data.test.images.shape == (100, 28, 28)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    data = DATASETS["folder"].loader(root=str(tmp_path), size=16)
    assert data.classes == ["cat", "dog"]
    assert data.train.images.shape[1:] == (16, 16, 3) and len(data.train.labels) == 8
    (tmp_path / "eel").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) with no images.*\['eel'\]"):
        DATASETS["folder"].loader(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load_dataset("mit67", root=str(tmp_path / "nope"))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_few_shot_is_seeded_balanced_and_checked():
    labels = np.repeat(np.arange(3), 5)
    a = few_shot_indices(labels, 2, seed=1)
    assert np.array_equal(a, few_shot_indices(labels, 2, seed=1))
    assert not np.array_equal(a, few_shot_indices(labels, 2, seed=2))
    assert np.bincount(labels[a]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match=r"Too few examples for 6 per class \(class 0: 5"):
        few_shot_indices(labels, 6, seed=0)


def test_to_tensor_batch_grayscale_and_color():
    gray = np.full((2, 8, 8), 255, np.uint8)
    t = to_tensor_batch(gray, 16)
    assert t.shape == [2, 3, 16, 16]
    np.testing.assert_allclose(t.numpy(), 1.0, atol=1e-6)
    color = np.zeros((1, 5, 5, 3), np.uint8)
    np.testing.assert_allclose(to_tensor_batch(color, 5).numpy(), -1.0)
    with pytest.raises(ValueError, match=r"Expected images \(N, H, W\)"):
        to_tensor_batch(np.zeros((2, 3, 8, 8), np.uint8), 8)
