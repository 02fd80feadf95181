"""Crashes, resumes and bad checkpoints."""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

WORKER = pathlib.Path(__file__).with_name("resume_worker.py")


def worker(tmp_path, *args):
    return subprocess.run([sys.executable, str(WORKER), "--ckpt", str(tmp_path / "run.ckpt"), *args],
                          capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_killed_and_resumed_run_is_bit_equal_to_an_uninterrupted_one(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    done = worker(straight, "--steps", "8", "--out", str(tmp_path / "straight.npz"))
    assert done.returncode == 0, done.stderr[-2000:]

    crash = tmp_path / "crash"
    crash.mkdir()
    killed = worker(crash, "--steps", "8", "--out", str(tmp_path / "never.npz"), "--kill-at", "3")
    assert killed.returncode == -signal.SIGKILL
    # resumes at step 3, then dies while saving step 6: step 5's checkpoint must survive
    killed = worker(crash, "--steps", "8", "--out", str(tmp_path / "never.npz"), "--kill-while-saving", "6")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.npz").exists()
    blob = paddle.load(str(crash / "run.ckpt"))
    assert blob["extra"]["step"] == 5 and blob["optimizer"]["dtnh"]["num_steps"] == 5
    resumed = worker(crash, "--steps", "8", "--out", str(tmp_path / "resumed.npz"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert a.files == b.files
    for name in a.files:  # BatchNorm statistics included
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_corrupt_and_mismatched_checkpoints_change_nothing(tmp_path):
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))
    opt = DTNH(paddle.optimizer.Adam(0.01, parameters=net.parameters()), lam=1.0)
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}

    truncated = tmp_path / "truncated.ckpt"
    save_checkpoint(str(truncated), net, opt, step=1)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(truncated), net, opt)

    other = paddle.nn.Sequential(paddle.nn.Linear(3, 5), paddle.nn.Linear(5, 2))
    save_checkpoint(str(tmp_path / "other.ckpt"), other)
    with pytest.raises(CheckpointError, match=r"0.weight: shape \[3, 5\] in the file, \[3, 4\] in the model"):
        load_checkpoint(str(tmp_path / "other.ckpt"), net)
    paddle.save(net.state_dict(), str(tmp_path / "plain.pdparams"))
    with pytest.raises(CheckpointError, match="carries no digest record"):
        load_checkpoint(str(tmp_path / "plain.pdparams"), net)
    with pytest.raises(CheckpointError, match="not a checkpoint written by paddle_dtnh"):
        load_checkpoint(str(tmp_path / "plain.pdparams"), net, verify=False)
    save_checkpoint(str(tmp_path / "no_opt.ckpt"), net)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(str(tmp_path / "no_opt.ckpt"), net, opt)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "absent.ckpt"), net)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # no temporary files left behind


def test_bad_batches_are_named_before_any_update():
    from paddle_dtnh.integrations.hub import TransferTask
    from paddle_dtnh.regularizers import L2

    net = paddle.vision.models.resnet18(num_classes=3)
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), L2(net, alpha=0.1, beta=0.1, head=["fc"]),
               lam=1.0)
    task = TransferTask(net, opt)
    before = net.fc.weight.numpy().copy()
    with pytest.raises(ValueError, match=r"Expected images of shape \[batch, 3, height, width\], got \[2, 1, 16, 16\]"):
        task.training_step((paddle.randn([2, 1, 16, 16]), paddle.to_tensor([0, 1])), 0)
    with pytest.raises(ValueError, match=r"Label 7 is out of range for a 3-class head"):
        task.training_step((paddle.randn([2, 3, 16, 16]), paddle.to_tensor([0, 7])), 0)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        task.training_step((paddle.randn([2, 3, 16, 16]), paddle.to_tensor([0, 1, 2])), 0)
    assert opt.num_steps == 0
    np.testing.assert_array_equal(net.fc.weight.numpy(), before)


def test_dataset_with_labels_out_of_range(tmp_path):
    import gzip

    from paddle_dtnh.data import load_dataset

    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        labels = rng.integers(0, 10, size=100, dtype=np.uint8)
        if prefix == "t10k":
            labels[3] = 12
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, 100, 28, 28], ">i4").tobytes() + bytes(100 * 28 * 28))
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, 100], ">i4").tobytes() + labels.tobytes())
    with pytest.raises(ValueError, match=r"test split.*has label 12, outside \[0, 9\]"):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_long_run_keeps_memory_flat_and_leaves_no_hooks():
    import runpy

    soak = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "memory_soak.py"))["soak"]
    result = soak(steps=300, every=50)
    rss = result["rss_mb"]
    assert result["hooks_left"] == 0
    assert rss[300] - rss[100] < 3.0, rss  # measured +0.2 MB over 500 steps


def test_skipped_steps_are_logged(tmp_path):
    import glob

    import paddle.nn.functional as F
    from visualdl import LogReader

    from paddle_dtnh.integrations.visualdl import DTNHLogger

    net = paddle.nn.Linear(4, 3)
    logger = DTNHLogger(str(tmp_path), interval=1)
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, logger=logger)
    x, y = paddle.randn([4, 4]), paddle.to_tensor([0, 1, 2, 0])
    opt.update(F.cross_entropy(net(x), y))
    opt.update(F.cross_entropy(net(x), y) * float("nan"))
    opt.update(F.cross_entropy(net(x), y))
    logger.close()
    reader = LogReader(file_path=glob.glob(str(tmp_path / "vdlrecords.*.log"))[0])
    skipped = [(r.id, r.value) for r in reader.get_data("scalar", "dtnh/skipped_steps")]
    assert (2, 1.0) in skipped and skipped[-1] == (2, 1.0)
    assert opt.num_steps == 2 and opt.skipped_steps == 1
