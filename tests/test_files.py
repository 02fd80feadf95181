"""Files you can trust (paddle_dtnh.io): a digest that refuses corruption,
only the library's error types, no allocation the file does not back."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.io import files
from paddle_dtnh.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from paddle_dtnh.io.files import UnsafeFileError


def small_run(tmp_path):
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        net = paddle.nn.Linear(3, 2)
    opt = DTNH(paddle.optimizer.Momentum(0.1, parameters=net.parameters()), lam=0.0, model=net)
    (net(paddle.ones([2, 3])) ** 2).mean().backward()
    opt.step()
    path = str(tmp_path / "small.ckpt")
    save_checkpoint(path, net, opt, step=1)
    return net, opt, path


def fresh_net():
    paddle.seed(5)
    with paddle.utils.unique_name.guard():
        return paddle.nn.Linear(3, 2)


def test_every_single_byte_flip_is_refused_or_harmless(tmp_path):
    net, _, path = small_run(tmp_path)
    saved = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    data = open(path, "rb").read()
    flipped = str(tmp_path / "flipped.ckpt")
    refused = identical = 0
    for i in range(len(data)):
        with open(flipped, "wb") as f:
            f.write(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        target = fresh_net()
        before = {k: v.numpy().copy() for k, v in target.state_dict().items()}
        try:
            load_checkpoint(flipped, target)
        except CheckpointError:
            refused += 1
            for k, v in target.state_dict().items():  # nothing written first
                np.testing.assert_array_equal(v.numpy(), before[k])
            continue
        for k, v in target.state_dict().items():  # loaded: then exactly what was saved
            np.testing.assert_array_equal(v.numpy(), saved[k], err_msg=f"flip at byte {i} changed {k}")
        identical += 1
    assert refused > 0.9 * len(data)  # the rest load exactly what was saved (checked above)


def test_a_corrupt_tensor_is_named(tmp_path):
    paddle.seed(0)
    net = paddle.nn.Linear(30, 20)
    path = str(tmp_path / "w.ckpt")
    save_checkpoint(path, net)
    data = bytearray(open(path, "rb").read())
    raw = net.weight.numpy().tobytes()
    at = bytes(data).index(raw[:64]) + 100  # inside weight's bytes
    data[at] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"does not match its recorded SHA-256.*tensor model/weight"):
        load_checkpoint(path, paddle.nn.Linear(30, 20))


def test_a_missing_digest_is_refused_unless_not_verified(tmp_path):
    net = paddle.nn.Linear(3, 2)
    path = str(tmp_path / "old.ckpt")
    paddle.save({"format": "paddle_dtnh.checkpoint/1", "model": net.state_dict(), "extra": {"step": 4}}, path)
    with pytest.raises(CheckpointError, match="no digest record"):
        load_checkpoint(path, paddle.nn.Linear(3, 2))
    assert load_checkpoint(path, paddle.nn.Linear(3, 2), verify=False) == {"step": 4}
    # a foreign weights file (no digest) still loads where no format is required
    assert set(files.read_state_dict(path)) == {"format", "model", "extra"}


def test_nonfinite_weights_are_refused_by_name(tmp_path):
    net = paddle.nn.Linear(3, 2)
    net.bias.set_value(paddle.to_tensor([float("nan"), 1.0]))
    path = str(tmp_path / "nan.ckpt")
    save_checkpoint(path, net)
    target = paddle.nn.Linear(3, 2)
    before = target.weight.numpy().copy()
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or Inf\) in bias"):
        load_checkpoint(path, target)
    np.testing.assert_array_equal(target.weight.numpy(), before)
    load_checkpoint(path, target, allow_nonfinite=True)
    assert np.isnan(target.bias.numpy()[0])


def _write(path, payload: bytes):
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


class _Reduce:
    """Pickles as a call of ``fn(*args)`` with a BUILD ``state``."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _array_claiming(shape, data=b""):
    from numpy.core.multiarray import _reconstruct

    return pickle.dumps({"w": _Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                                      (1, shape, np.dtype("float32"), False, data))}, protocol=4)


@pytest.mark.parametrize("payload, match", [
    (b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.", "corrupt or not a Paddle file"),  # FRAME too long
    (b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".", "more than 64 levels deep"),  # 5000-deep list
    (pickle.dumps(eval("[" * 200 + "]" * 200), protocol=4), "more than 64 levels deep"),
    (_array_claiming((2, 3), b"\x00" * 8), r"shape \[2, 3\] \(float32\) needs 24 bytes, the file holds 8"),
    (b"", "corrupt or not a Paddle file"),
])
def test_malformed_files_raise_the_library_errors(tmp_path, payload, match):
    path = _write(tmp_path / "bad.pdparams", payload)
    with pytest.raises(CheckpointError, match=match) as info:
        files.load(path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, paddle.nn.Linear(3, 2), verify=False)


def test_an_object_array_is_unsafe(tmp_path):
    path = _write(tmp_path / "obj.pdparams", pickle.dumps({"w": np.array([object()], dtype=object)}, protocol=4))
    with pytest.raises(UnsafeFileError):
        files.load(path)


def test_a_tiny_file_cannot_make_the_loader_allocate(tmp_path):
    path = _write(tmp_path / "huge.pdparams", _array_claiming((75_000_000,)))  # 300 MB asked, 0 held
    assert os.path.getsize(path) < 300
    probe = textwrap.dedent(f"""
        import resource, sys
        import paddle_dtnh
        from paddle_dtnh.io import files
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            files.load({path!r})
        except files.CheckpointError as err:
            print("refused:", err)
        print("peak growth kB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "needs 300000000 bytes, the file holds 0" in out
    assert int(out.rsplit("peak growth kB", 1)[1]) < 50_000, out


def test_an_update_with_everything_frozen_is_named():
    net = paddle.nn.Linear(3, 2)
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0)
    for p in net.parameters():
        p.stop_gradient = True
    with pytest.raises(ValueError, match="Every parameter of the optimizer is frozen"):
        opt.update((net(paddle.ones([1, 3])) ** 2).sum())
    with pytest.raises(ValueError, match="Every parameter of the optimizer is frozen"):
        opt.step()


def test_a_weights_file_that_is_no_state_dict_is_a_checkpoint_error(tmp_path):
    path = str(tmp_path / "list.pdparams")
    files.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        files.read_state_dict(path)
