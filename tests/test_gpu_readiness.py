"""The GPU promise, tested where it can be on a CPU-only machine: one DTNH
step makes exactly one host round trip (the finiteness check), creates no
tensor on Paddle's default place instead of the parameters', and calls no
``paddle.to_tensor`` (which keeps a Python object alive per call: a slow leak).

Only round trips the package makes count, directly or through a Paddle
function it calls: the user's own loss (in the loop or as a holdout
callable) is not DTNH's to keep free of them (Paddle 2.6's
``F.cross_entropy`` reads ``count_nonzero(ignored) > 0`` on the host, 3.x
does not)."""

import contextlib
import pathlib
import sys

import paddle
import pytest

import paddle_dtnh
from paddle_dtnh import DTNH
from paddle_dtnh.diagnostics import StepLogger
from tests.helpers import dtnh_step
from tests.test_contract import KINDS, build, pair

ROUND_TRIPS = ("numpy", "item", "tolist", "__bool__", "__float__", "__int__", "__index__")
CREATORS = ("zeros", "ones", "full", "eye", "arange", "empty")
PACKAGE = str(pathlib.Path(paddle_dtnh.__file__).resolve().parent)
PADDLE = str(pathlib.Path(paddle.__file__).resolve().parent)


def from_the_package() -> bool:
    """Whether the read was asked for by paddle_dtnh: the innermost caller
    outside Paddle's own sources is in the package (not a test, not a loss
    function the user handed in)."""
    frame = sys._getframe(2)  # the caller of the patched method
    while frame is not None and frame.f_code.co_filename.startswith(PADDLE):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(PACKAGE)


@contextlib.contextmanager
def watch():
    """Count outermost host reads of tensors, and creations without a place."""
    seen = {"round_trips": [], "placeless": [], "to_tensor": 0}
    depth = [0]
    originals = {name: getattr(paddle.Tensor, name) for name in ROUND_TRIPS}
    creators = {name: getattr(paddle, name) for name in CREATORS}
    to_tensor = paddle.to_tensor

    def reader(name, original):
        def read(self, *args, **kwargs):
            if depth[0] == 0 and from_the_package():
                seen["round_trips"].append(name)
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return read

    def creator(name, original):
        def create(*args, **kwargs):
            if "device" not in kwargs and "place" not in kwargs:
                seen["placeless"].append(f"paddle.{name}")
            return original(*args, **kwargs)
        return create

    def placed_to_tensor(data, *args, **kwargs):
        seen["to_tensor"] += 1
        if "place" not in kwargs and not isinstance(data, paddle.Tensor):
            seen["placeless"].append("paddle.to_tensor without place=")
        return to_tensor(data, *args, **kwargs)

    for name, original in originals.items():
        setattr(paddle.Tensor, name, reader(name, original))
    for name, original in creators.items():
        setattr(paddle, name, creator(name, original))
    paddle.to_tensor = placed_to_tensor
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(paddle.Tensor, name, original)
        for name, original in creators.items():
            setattr(paddle, name, original)
        paddle.to_tensor = to_tensor


class EveryOther(StepLogger):
    """Asks for diagnostics on even steps only: step 1 is a non-logging step."""

    def wants_stats(self, step):
        return step % 2 == 0


OPTIONS = [dict(preset="paper"), dict(granularity="layer"), dict(preset="never_hurt"),
           dict(granularity="coordinate", reference="ema"), dict(preset="paper", max_reg_ratio=1.0),
           dict(preset="vanilla")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["explicit", "hook"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("logger", [None, EveryOther()], ids=["no-logger", "non-logging-step"])
def test_one_step_makes_one_host_round_trip(kind, mode, options, logger):
    source, model = pair()
    reg = build(kind, model, source)
    opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()), reg, lam=1.0,
               logger=logger, **options)
    x, y = paddle.randn([4, 2, 5, 5]), paddle.to_tensor([0, 1, 2, 0])
    with watch() as seen:
        dtnh_step(opt, x, y, mode)
    assert seen["round_trips"] == ["__bool__"], seen["round_trips"]
    assert not seen["placeless"], seen["placeless"]
    assert seen["to_tensor"] == 0
    assert opt.num_steps == 1


def test_round_trips_outside_the_package_do_not_count_but_inside_do():
    x = paddle.ones([2])
    with watch() as seen:
        bool(x.sum() > 0)  # the test's own read
        paddle_dtnh.optim.amp.all_finite([x]).numpy()  # called here: still the test's read
    assert seen["round_trips"] == []
    with watch() as seen:
        _read_inside_the_package(x)
    assert seen["round_trips"] == ["__bool__"], seen["round_trips"]


def _read_inside_the_package(x):
    """A host read made from a function compiled as if it lived in the package."""
    code = compile("def read(x):\n    return bool(x.sum() > 0)\n", f"{PACKAGE}/_planted.py", "exec")
    namespace = {}
    exec(code, namespace)
    return namespace["read"](x)
