"""``paddle-dtnh fit``: the source-fit test of image-folder targets from the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_dtnh import cli


def _folder(root, classes=2, per_class=6, size=12, seed=0):
    """root/<class>/<i>.png: class c is bright in its own quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            image[(c % 2) * 6:(c % 2) * 6 + 6, (c // 2) * 6:(c // 2) * 6 + 6] = 250
            Image.fromarray(image).save(os.path.join(root, f"class{c}", f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    paddle.seed(0)
    path = tmp_path_factory.mktemp("w") / "r18.pdparams"
    paddle.save(paddle.vision.models.resnet18(num_classes=3).state_dict(), str(path))
    paddle.seed(1)
    other = tmp_path_factory.mktemp("w") / "r18b.pdparams"
    paddle.save(paddle.vision.models.resnet18(num_classes=3).state_dict(), str(other))
    return str(path), str(other)


def test_fit_prints_the_scores_the_se_the_outcome_and_the_preset(tmp_path, weights, capsys):
    data = _folder(tmp_path / "data")
    assert cli.main(["fit", "--data", data, "--weights", weights[0], "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "12 images, 2 classes" in out and "advantage" in out and "(SE)" in out
    assert "-> preset=" in out or "turns the pull off" in out


def test_fit_json_ranks_several_sources_best_first(tmp_path, weights, capsys):
    data = _folder(tmp_path / "data")
    assert cli.main(["fit", "--data", data, "--weights", weights[0], "--weights", weights[1], "--head", "fc",
                     "--image-size", "16", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["source"] for e in entries] and len(entries) == 2
    assert entries[0]["advantage"] >= entries[1]["advantage"]
    for e in entries:
        assert set(e) >= {"advantage", "advantage_se", "logme_advantage", "preset", "outcome", "stages"}
        assert e["preset"] in ("paper", "never_hurt", "off") and e["advantage_se"] >= 0
        assert set(e["stages"]) == {"layer1", "layer2", "layer3", "layer4"}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "paddle_dtnh.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("case", ["one class", "no images", "unreadable", "missing", "wrong arch"])
def test_bad_folders_are_one_clear_line_and_exit_2(tmp_path, weights, case):
    data = tmp_path / "data"
    args = []
    if case == "one class":
        _folder(data, classes=1)
        expected = "at least 2"
    elif case == "no images":
        _folder(data)
        os.makedirs(data / "empty")
        expected = "with no images"
    elif case == "unreadable":
        _folder(data)
        (data / "class0" / "broken.png").write_bytes(b"not a png")
        expected = "cannot read image 'broken.png'"
    elif case == "missing":
        expected = "not found"
    else:
        _folder(data)
        args = ["--arch", "resnet18_vd"]
        expected = "not --arch resnet18_vd"
    result = _run("fit", "--data", str(data), "--weights", weights[0], "--image-size", "16", *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("paddle-dtnh fit: error:")
