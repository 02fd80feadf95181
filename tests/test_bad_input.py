"""Bad numbers, bad files and bad inputs: named errors, nothing half-written."""

import os
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image

from paddle_dtnh import DTNH
from paddle_dtnh.io import files
from paddle_dtnh.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from paddle_dtnh.data import DATASETS
from paddle_dtnh.regularizers import L2SP, KnowDist, SourceMismatchError, save_fisher


def net():
    return paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))


def snapshot(layer):
    return {k: v.numpy().copy() for k, v in layer.state_dict().items()}


def assert_unchanged(layer, before):
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


# -- checkpoints: all or nothing ------------------------------------------------------

def test_a_late_bad_key_changes_nothing(tmp_path):
    model = net()
    path = str(tmp_path / "run.ckpt")
    save_checkpoint(path, net())
    blob = files.load(path)
    blob["model"]["1.bias"] = paddle.zeros([2], dtype="float64")  # the last key, wrong dtype
    files.save(blob, path)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"1.bias: dtype paddle.float64 in the file, paddle.float32"):
        load_checkpoint(path, model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("blob, match", [
    ({"format": "paddle_dtnh.checkpoint/1", "model": [1, 2]}, "not a state dict"),
    ({"format": "paddle_dtnh.checkpoint/1"}, "not a state dict"),
    ({"format": "paddle_dtnh.checkpoint/1", "model": "x", "optimizer": 3}, "not a state dict"),
    (["not", "a", "dict"], "not a checkpoint written by paddle_dtnh"),
])
def test_malformed_checkpoints_raise_checkpoint_errors(tmp_path, blob, match):
    model = net()
    path = str(tmp_path / "bad.ckpt")
    files.save(blob, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path, model)


def test_a_garbage_optimizer_part_is_named_before_the_model_is_written(tmp_path):
    model = net()
    opt = DTNH(paddle.optimizer.Adam(0.01, parameters=model.parameters()), lam=0.0)
    path = str(tmp_path / "run.ckpt")
    save_checkpoint(path, net(), opt)
    blob = files.load(path)
    blob["optimizer"] = {"dtnh": {"num_steps": 1}, "optimizer": "garbage"}
    files.save(blob, path)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="optimizer part: Corrupt DTNH state_dict"):
        load_checkpoint(path, model, opt)
    assert_unchanged(model, before)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory, not a file"):
        load_checkpoint(str(tmp_path), net())


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    path = tmp_path / "run.ckpt"
    dead = tmp_path / ".run.ckpt.tmp-999999999-deadbeef"  # no such process
    dead.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.ckpt.tmp-999999999-deadbeef"  # another file's: left alone
    other.write_bytes(b"x")
    save_checkpoint(str(path), net())
    assert not dead.exists() and other.exists()
    dead.write_bytes(b"x")
    load_checkpoint(str(path), net())
    assert not dead.exists()


def test_a_failed_save_leaves_no_temporary(tmp_path):
    with pytest.raises(Exception):
        save_fisher({"w": lambda: 0}, str(tmp_path / "fisher.pdparams"))  # not picklable
    assert os.listdir(tmp_path) == []


# -- bad numbers -------------------------------------------------------------------

def batch():
    return paddle.randn([6, 3]), paddle.to_tensor([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("eps", [0.0, -1e-3])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="Invalid eps"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net().parameters()), lam=1.0, eps=eps)


def test_a_huge_lam_is_skipped_not_written_into_the_weights():
    source, model = net(), net()
    reg = L2SP(model, source, alpha=1.0, beta=1.0, head=["1"])
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1e39)  # lam * gO overflows float32
    before = snapshot(model)
    x, y = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, omega = reg.run(x)
        opt.update(F.cross_entropy(out, y), omega)
    assert opt.skipped_steps == 1 and opt.num_steps == 0
    assert_unchanged(model, before)


def test_a_huge_but_finite_gradient_is_not_mistaken_for_nan():
    model = net()
    opt = DTNH(paddle.optimizer.SGD(1e-30, parameters=model.parameters()), lam=0.0)
    x, y = batch()
    opt.update(F.cross_entropy(model(x), y) * 1e25)  # squares would overflow float32
    assert opt.skipped_steps == 0 and opt.num_steps == 1


def test_opposite_infinities_in_one_tensor_are_caught():
    from paddle_dtnh.optim.amp import all_finite as _all_finite

    assert bool(_all_finite([paddle.to_tensor([1e30, -1e30]), None]))
    assert not bool(_all_finite([paddle.to_tensor([1.0]), paddle.to_tensor([float("inf"), float("-inf")])]))
    assert not bool(_all_finite([paddle.to_tensor([float("nan"), 0.0])]))


@pytest.mark.parametrize("kind", ["L2SP", "KnowDist"])
def test_nonfinite_source_weights_are_rejected_by_name(kind):
    source, model = net(), net()
    source[0].weight.set_value(paddle.full([3, 4], float("nan")))
    with pytest.raises(SourceMismatchError, match=r"NaN or Inf in the source \(1\): 0.weight"):
        if kind == "L2SP":
            L2SP(model, source, alpha=1.0, beta=0.0, head=["1"])
        else:
            KnowDist(model, source, layers=["0"], head=["1"])


def test_per_group_weight_decay_warns():
    model = net()
    groups = [{"params": model[0].parameters(), "weight_decay": 0.01}, {"params": model[1].parameters()}]
    with pytest.warns(UserWarning, match="never projected"):
        DTNH(paddle.optimizer.Momentum(0.1, parameters=groups), lam=1.0)


def test_feature_map_and_weight_regularizers_match_sources_alike():
    source, model = net(), net()
    state = {k: v.numpy().astype("float64") for k, v in source.state_dict().items()}
    L2SP(model, state, alpha=1.0, beta=0.0, head=["1"])  # float64 source values are cast
    KnowDist(model, state, layers=["0"], head=["1"])
    state["extra.weight"] = np.zeros(2)
    for build in (lambda: L2SP(model, state, alpha=1.0, beta=0.0, head=["1"]),
                  lambda: KnowDist(model, state, layers=["0"], head=["1"])):
        with pytest.raises(SourceMismatchError, match=r"extra in the source \(1\): extra.weight"):
            build()


# -- datasets ------------------------------------------------------------------------

def image_folder(root, counts):
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_two_images_per_class_split_one_and_one(tmp_path):
    image_folder(tmp_path, {"a": 2, "b": 2})
    data = DATASETS["folder"].loader(root=str(tmp_path), size=8)
    assert len(data.train.labels) == 2 and len(data.test.labels) == 2


def test_a_class_with_one_image_is_named(tmp_path):
    image_folder(tmp_path, {"a": 3, "b": 1})
    with pytest.raises(ValueError, match=r"at least 2 images .* too few in: b \(1\)"):
        DATASETS["folder"].loader(root=str(tmp_path), size=8)


def test_a_corrupt_image_names_its_class_and_file(tmp_path):
    image_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image 'broken.png' of class 'b'"):
        DATASETS["folder"].loader(root=str(tmp_path), size=8)
