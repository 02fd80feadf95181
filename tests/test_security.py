"""Loading a user-given file runs no code: every loader goes through a
restricted unpickler. The payload here is harmless: it would create a marker
file if it ran."""

import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import paddle
import pytest

from paddle_dtnh.io import files
from paddle_dtnh.attention import AttentionWeights
from paddle_dtnh.io.checkpoint import CheckpointError, load_checkpoint
from paddle_dtnh.integrations.hub import MODULE_DIR, WEIGHTS_FILE, load_resnet18_vd_weights, load_source
from paddle_dtnh.integrations.hub.sources import verify_recorded_digest
from paddle_dtnh.regularizers import L2SP, KnowDist, L2SPFisher, load_fisher
from paddle_dtnh.models.resnet_vd import ResNet18VD


class Payload:
    """Unpickling calls os.mkdir(marker): the marker appears if code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def craft(path, marker, blob, forge_digest=True):
    """``blob`` with the payload nested inside, pickled as paddle.save would;
    with ``forge_digest``, followed by a valid digest record (a forger can
    always write one: the digest is for accidents, the unpickler for attacks)."""
    blob = dict(blob)
    blob["evil"] = Payload(str(marker))
    payload = pickle.dumps(blob, protocol=4)
    if forge_digest:
        record = json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "crc32": {}}).encode()
        payload += record + b"\n#paddle_dtnh/digest:%010d\n" % len(record)
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


def net():
    return paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))


def state_of(layer):
    return {k: v.numpy() for k, v in layer.state_dict().items()}


LOADERS = {
    "load_checkpoint": lambda p: load_checkpoint(p, net()),
    "L2SP(model, path)": lambda p: L2SP(net(), p, alpha=1.0, beta=0.0, head=["1"]),
    "KnowDist(model, path)": lambda p: KnowDist(net(), p, layers=["0"], head=["1"]),
    "load_source(path)": lambda p: load_source(p, num_classes=3),
    "load_resnet18_vd_weights": lambda p: load_resnet18_vd_weights(ResNet18VD(num_classes=3), p),
    "AttentionWeights.load": lambda p: AttentionWeights.load(p),
    "load_fisher": lambda p: load_fisher(p),
    "L2SPFisher(fisher=path)": lambda p: L2SPFisher(net(), net(), fisher=p, alpha=1.0, beta=0.0, head=["1"]),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_crafted_file_is_refused_and_runs_nothing(tmp_path, loader):
    marker = tmp_path / "ran"
    path = craft(tmp_path / "crafted.pdparams", marker,
                 {"format": "paddle_dtnh.checkpoint/1", "model": state_of(net())})
    with pytest.raises((files.UnsafeFileError, CheckpointError, ValueError)) as err:
        LOADERS[loader](path)
    assert "mkdir, which a weights or checkpoint file never holds" in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["load_checkpoint", "AttentionWeights.load", "load_fisher"])
def test_the_library_formats_refuse_a_file_without_digest_before_unpickling(tmp_path, loader):
    marker = tmp_path / "ran"
    path = craft(tmp_path / "crafted.pdparams", marker, {"format": "paddle_dtnh.checkpoint/1"}, forge_digest=False)
    with pytest.raises(CheckpointError, match="carries no digest record"):
        LOADERS[loader](path)
    assert not marker.exists()


def test_a_crafted_module_directory_is_refused(tmp_path):
    import paddlehub as hub

    directory = tmp_path / "resnet18_vd_dtnh"
    directory.mkdir()
    shutil.copy(os.path.join(MODULE_DIR, "module.py"), directory)
    marker = tmp_path / "ran"
    craft(directory / WEIGHTS_FILE, marker, state_of(ResNet18VD(num_classes=3)))
    for load in (lambda: load_source(str(directory), num_classes=3),
                 lambda: hub.Module(directory=str(directory), label_list=["a", "b", "c"])):
        with pytest.raises(ValueError, match="refused"):
            load()
    assert not marker.exists()


def test_trusted_opt_out_loads_with_full_pickle(tmp_path):
    marker = tmp_path / "ran"
    path = craft(tmp_path / "mine.pdparams", marker, {"w": np.ones(2, "float32")})
    blob = files.load(path, trusted=True)  # the user vouches for this file
    assert marker.exists() and "w" in blob


def test_a_tampered_cached_download_is_named_and_kept(tmp_path, monkeypatch):
    import paddlehub.env

    home = tmp_path / "home"
    cached = home / "resnet18_vd_imagenet" / WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    paddle.save(ResNet18VD(num_classes=1000).state_dict(), str(cached))
    monkeypatch.setattr(paddlehub.env, "MODULE_HOME", str(home))
    load_source("resnet18_vd_imagenet", num_classes=3)  # first use records the digest
    assert (cached.parent / (WEIGHTS_FILE + ".sha256")).exists()
    load_source("resnet18_vd_imagenet", num_classes=3)  # and later uses check it
    with open(cached, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RuntimeError, match="does not match the SHA-256 recorded.*Nothing was deleted"):
        load_source("resnet18_vd_imagenet", num_classes=3)
    assert cached.exists()
    with pytest.raises(RuntimeError, match="changed since"):
        verify_recorded_digest(str(cached))
