"""One loop for every regularizer: `out, omega = reg.run(x)`, then
`opt.update(loss, omega)` or, in hook mode, `opt.regularize(omega);
loss.backward(); opt.step()`. Whatever the regularizer, the step is the DTNH
formula computed in NumPy from autograd gradients."""

import copy

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.regularizers import DELTA, L1SP, L2SP, GroupLassoSP, KnowDist, L2SPFisher
from tests.helpers import dtnh_step


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.block1 = paddle.nn.Sequential(paddle.nn.Conv2D(2, 3, 3, padding=1), paddle.nn.ReLU())
        self.block2 = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, stride=2, padding=1), paddle.nn.Tanh())
        self.fc = paddle.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(paddle.mean(self.block2(self.block1(x)), axis=[2, 3]))


def build(kind, model, source):
    kw = dict(alpha=0.5, beta=0.1, head=["fc"])
    fisher = {n: paddle.rand(p.shape) + 0.5 for n, p in source.named_parameters()}
    return {
        "L2SP": lambda: L2SP(model, source, **kw),
        "L1SP": lambda: L1SP(model, source, **kw),
        "GroupLassoSP": lambda: GroupLassoSP(model, source, **kw),
        "L2SPFisher": lambda: L2SPFisher(model, source, fisher=fisher, **kw),
        "KnowDist": lambda: KnowDist(model, source, layers=["block1", "block2"], head=["fc"]),
        "DELTA": lambda: DELTA(model, source, layers=["block1", "block2"], **kw),
    }[kind]()


KINDS = ["L2SP", "L1SP", "GroupLassoSP", "L2SPFisher", "KnowDist", "DELTA"]


def pair():
    source = Net()
    model = copy.deepcopy(source)
    for p in model.parameters():
        p.set_value(p + 0.3 * paddle.randn(p.shape))
    return source, model


def flat(tensors, params):
    return np.concatenate([np.zeros(p.shape, "float64").ravel() if t is None else t.numpy().astype("float64").ravel()
                           for t, p in zip(tensors, params)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_one_loop_for_every_regularizer_gives_the_dtnh_step(kind, mode, float64):
    source, model = pair()
    reg = build(kind, model, source)
    lam, lr = 2.0, 0.1
    opt = DTNH(paddle.optimizer.SGD(lr, parameters=model.parameters()), reg, lam=lam)
    params = list(model.parameters())
    x, y = paddle.randn([6, 2, 5, 5]), paddle.to_tensor([0, 1, 2, 0, 1, 2])

    out, omega = reg.run(x)  # the reference: both gradients by autograd
    gj = flat(paddle.grad(F.cross_entropy(out, y), params, retain_graph=True), params)
    go = flat(paddle.grad(omega, params, allow_unused=True), params)
    d = gj + lam * (go - min(gj @ go, 0.0) / (gj @ gj) * gj)

    before = flat(params, params)
    dtnh_step(opt, x, y, mode)  # the user's loop, the same for every regularizer
    np.testing.assert_allclose((before - flat(params, params)) / lr, d, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["L2SP", "KnowDist"])
@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_never_hurt_with_a_cap_gives_its_step(kind, mode, float64):
    """First step of preset="never_hurt" (the average starts at gJ) with
    max_reg_ratio: per tensor, gO dropped where <gJ_l, gO_l> < 0, then the
    kept pull scaled to at most ratio * ||gJ||."""
    source, model = pair()
    reg = build(kind, model, source)
    lam, lr, ratio = 5.0, 0.1, 0.2
    opt = DTNH(paddle.optimizer.SGD(lr, parameters=model.parameters()), reg, lam=lam,
               preset="never_hurt", max_reg_ratio=ratio)
    params = list(model.parameters())
    x, y = paddle.randn([6, 2, 5, 5]), paddle.to_tensor([0, 1, 2, 0, 1, 2])

    out, omega = reg.run(x)
    gjs = paddle.grad(F.cross_entropy(out, y), params, retain_graph=True)
    gos = paddle.grad(omega, params, allow_unused=True)
    kept = [None if o is None or float(paddle.sum(j * o)) < 0 else o for j, o in zip(gjs, gos)]
    gj, pull = flat(gjs, params), lam * flat(kept, params)
    assert np.linalg.norm(pull) > ratio * np.linalg.norm(gj)  # the cap acts on these numbers
    d = gj + pull * ratio * np.linalg.norm(gj) / np.linalg.norm(pull)

    before = flat(params, params)
    dtnh_step(opt, x, y, mode)
    np.testing.assert_allclose((before - flat(params, params)) / lr, d, rtol=1e-7, atol=1e-9)
