"""No target image (training or test) is in a source's pretraining set, for
every pair the evidence and the demo use; and the check finds 0.4's leaks."""

import importlib.util
import os

import pytest

from lab.leakage import leakage
from paddle_dtnh.data import FASHION_MNIST_DIR

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evidence = _module("benchmarks/auto_evidence.py", "auto_evidence_for_leakage")
demo = _module("demo/transfer.py", "demo_for_leakage")
fairness = _module("benchmarks/holdout_fairness.py", "holdout_fairness_for_leakage")

_HAS_FASHION = os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


def _pairs():
    """(source dataset, max images, target) of every pair of the 0.5 plans, the
    fairness comparison and the demo's scenarios; pairs on the same images are
    checked once, under all their names."""
    pairs = {}

    def add(key, name):
        pairs[key] = f"{pairs[key]} = {name}" if key in pairs else name

    for plan in ("discovery", "validation"):
        for pair in evidence.PLANS[plan][0]:
            source, target = pair.split(":")
            settings = evidence.SOURCES[source]
            add((settings["dataset"], settings["max_images"], target), f"{plan}: {pair}")
    for pair in fairness.PAIRS:
        source, target = pair.split(":")
        settings = evidence.SOURCES[source]
        add((settings["dataset"], settings["max_images"], target), f"holdout_fairness: {pair}")
    for name, scenario in demo.SCENARIOS.items():
        add((scenario["source"], scenario["source_images"], scenario["target"]), f"demo --scenario {name}")
    return sorted(pairs.items())


@pytest.mark.parametrize("pair, where", _pairs(), ids=[where for _, where in _pairs()])
def test_no_target_image_was_a_pretraining_image(pair, where):
    source, max_images, target = pair
    if "fashion" in source + target and not _HAS_FASHION:
        pytest.skip("Fashion-MNIST is not installed (make install installs it as root)")
    found = leakage(source, target, max_images=max_images)
    assert found.pretraining_images == max_images and found.target_images > 0
    assert found.clean, str(found)


def test_the_check_finds_0_4s_leaks():
    """0.4's mnist5k -> mnist5k and -> mnist5k-inv: every target image was a pretraining image
    (the inverted copies by origin and by their pixels inverted)."""
    for target in ("mnist5k", "mnist5k-inv"):
        found = leakage("mnist5k", target, max_images=4000)
        assert found.same_origin == 4000 and found.same_pixels == 4000, str(found)
