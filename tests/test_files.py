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


# -- allocation the file does not pay for, through every loader --------------------------------------
_PROBE = textwrap.dedent("""
    import json, resource, sys, warnings
    import numpy as np
    import paddle
    from paddle_dtnh.attention import AttentionWeights
    from paddle_dtnh.io import files
    from paddle_dtnh.io.checkpoint import load_checkpoint
    from paddle_dtnh.models.resnet_vd import ResNet18VD, load_resnet18_vd_weights
    from paddle_dtnh.regularizers import L2SP, load_fisher

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))
    resnet = ResNet18VD(num_classes=3)
    loaders = {
        "files.load": lambda p: files.load(p),
        "read_state_dict": lambda p: files.read_state_dict(p),
        "L2SP(model, path)": lambda p: L2SP(net, p, alpha=1.0, beta=0.0, head=["1"]),
        "load_checkpoint": lambda p: load_checkpoint(p, net),
        "load_fisher": lambda p: load_fisher(p),
        "AttentionWeights.load": lambda p: AttentionWeights.load(p),
        "load_resnet18_vd_weights": lambda p: load_resnet18_vd_weights(resnet, p),
    }
    before = {k: v.numpy().copy() for k, v in list(net.state_dict().items()) + list(resnet.state_dict().items())}
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for case, path, names in json.loads(sys.argv[1]):
        for name in names:
            try:
                loaders[name](path)
                outcome = "loaded"
            except Exception as err:  # the assertions below name the type expected
                outcome = type(err).__name__ + ": " + str(err).replace("\\n", " ")
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
            print(json.dumps([case, name, outcome, grown]))
    after = {k: v.numpy() for k, v in list(net.state_dict().items()) + list(resnet.state_dict().items())}
    print(json.dumps(["unchanged", all(np.array_equal(before[k], after[k]) for k in before)]))
""")
_STATE_LOADERS = ["files.load", "read_state_dict", "L2SP(model, path)", "load_resnet18_vd_weights"]
_FORMAT_LOADERS = {"paddle_dtnh.checkpoint/1": "load_checkpoint", "paddle_dtnh.fisher/1": "load_fisher",
                   "paddle_dtnh.attention/1": "AttentionWeights.load"}


def _with_digest(payload: bytes, valid_sha: bool) -> bytes:
    """A digest record as files.save writes it; a forger's (matching SHA-256) or a wrong one."""
    import hashlib
    import json

    sha = hashlib.sha256(payload if valid_sha else b"other").hexdigest()
    record = json.dumps({"sha256": sha, "crc32": {"model/0.weight": 0}}).encode()
    return payload + record + b"\n#paddle_dtnh/digest:%010d\n" % len(record)


def _planted(megabytes):
    """numpy.ndarray((n,), "float32"): an allocation of ``megabytes`` the file names but does not hold."""
    return _Reduce(np.ndarray, ((megabytes * 2**20 // 4,), "float32"))


def _run_probe(cases):
    import json

    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert rows[-1] == ["unchanged", True], rows
    return rows[:-1]


@pytest.mark.parametrize("megabytes", [300, 2048])
def test_a_planted_allocation_is_refused_by_every_loader(tmp_path, megabytes):
    from paddle_dtnh.attention import _FORMAT as attention_format
    from paddle_dtnh.regularizers.fisher import _FORMAT as fisher_format

    assert {attention_format, fisher_format} <= set(_FORMAT_LOADERS)
    state = {"0.weight": _planted(megabytes), "0.bias": np.zeros(4, "float32"),
             "1.weight": np.zeros((4, 2), "float32"), "1.bias": np.zeros(2, "float32")}
    source = _write(tmp_path / "source.pdparams", pickle.dumps(state, protocol=4))
    assert os.path.getsize(source) < 1000
    cases = [["source .pdparams", source, _STATE_LOADERS]]
    for fmt, loader in _FORMAT_LOADERS.items():
        blob = pickle.dumps({"format": fmt, "model": state, "fisher": state, "weights": state}, protocol=4)
        for valid_sha in (True, False):
            path = _write(tmp_path / f"{loader}-{valid_sha}.pdparams", _with_digest(blob, valid_sha))
            cases.append([f"{fmt} digest {'forged' if valid_sha else 'wrong'}", path, [loader, "files.load"]])
    rows = _run_probe(cases)
    assert len(rows) == len(_STATE_LOADERS) + 2 * 2 * len(_FORMAT_LOADERS)
    for case, loader, outcome, grown_kb in rows:
        if "digest wrong" in case:
            assert "does not match its recorded SHA-256" in outcome, (case, loader, outcome)
        else:
            assert "it calls numpy.ndarray(shape, dtype)" in outcome, (case, loader, outcome)
            assert outcome.startswith("CheckpointError" if loader == "load_checkpoint" else "UnsafeFileError")
        assert grown_kb < 50_000, (case, loader, grown_kb)


def _arrays_sharing(raw, count):
    """``count`` arrays whose data is the one bytes object ``raw``, memoized once in the pickle."""
    from numpy.core.multiarray import _reconstruct

    shape = (len(raw) // 4,)
    return pickle.dumps({f"w{i}": _Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                                          (1, shape, np.dtype("float32"), False, raw)) for i in range(count)},
                        protocol=4)


def test_data_reused_through_the_memo_is_paid_for_once(tmp_path):
    raw = b"\x00" * 2**20
    path = _write(tmp_path / "reused.pdparams", _arrays_sharing(raw, 400))  # 400 MB asked, 1 MB held
    assert os.path.getsize(path) < 2**20 + 20_000
    text = "x" * 2**20
    encode = __import__("_codecs").encode
    encoded = _write(tmp_path / "encoded.pdparams",  # 400 bytes objects of 1 MB from one string
                     pickle.dumps([_Reduce(encode, (text, "latin1")) for _ in range(400)], protocol=4))
    assert os.path.getsize(encoded) < 2**20 + 20_000
    assert files.load(_write(tmp_path / "once.pdparams", pickle.dumps([_Reduce(encode, (text, "latin1"))])))[0] \
        == text.encode("latin1")
    rows = _run_probe([["arrays", path, ["files.load", "read_state_dict"]], ["bytes", encoded, ["files.load"]]])
    for _, loader, outcome, grown_kb in rows:
        assert "reuses its data through the pickle memo" in outcome, outcome
        assert grown_kb < 50_000, (loader, grown_kb)


def test_a_container_reached_many_times_is_walked_once(tmp_path):
    nested = [np.ones(2, "float32")]
    for _ in range(20):  # a million leaves as a tree (deeper takes hours), 200 bytes as a pickle
        nested = [nested, nested]
    path = _write(tmp_path / "shared.pdparams", pickle.dumps({"w": nested}, protocol=4))
    assert os.path.getsize(path) < 2000
    loaded = files.load(path)["w"]
    assert loaded[0] is loaded[1] and loaded[0][0] is loaded[0][1]  # shared as saved, not copied
    leaf = loaded
    while isinstance(leaf, list) and len(leaf) == 2:
        leaf = leaf[0]
    np.testing.assert_array_equal(leaf[0].numpy(), [1, 1])


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_saved_files_still_load(tmp_path, protocol):
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    opt = paddle.optimizer.Adam(parameters=net.parameters())
    (net(paddle.ones([2, 3])) ** 2).mean().backward()
    opt.step()
    state = {**net.state_dict(), "empty": paddle.zeros([0]), "empty2": paddle.zeros([0, 3]),
             "one": paddle.to_tensor([1], dtype="int8"), "one_again": paddle.to_tensor([1], dtype="int8"),
             "nested": {"t": paddle.ones([2])}}
    for name, obj in (("net.pdparams", state), ("net.pdopt", opt.state_dict())):
        path = str(tmp_path / name)
        paddle.save(obj, path, protocol=protocol)
        expected = paddle.load(path)
        loaded = files.load(path)
        assert set(loaded) == set(expected)
        for k, v in expected.items():
            if isinstance(v, paddle.Tensor):
                np.testing.assert_array_equal(loaded[k].numpy(), v.numpy(), err_msg=k)
