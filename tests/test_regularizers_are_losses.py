"""The regularizers are plain losses: forward returns Omega, ``.to()`` moves
their constants, ``state_dict()`` holds nothing, and the gradient taking
(closed form or paddle.grad, data-parallel averaging) is the optimizer's."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.regularizers import DELTA, L2SP, KnowDist, L2SPFisher, TransferRegularizer


class Net(paddle.nn.Layer):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = paddle.nn.Conv2D(2, 4, 3, padding=1)
        self.fc = paddle.nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def _pair():
    paddle.seed(0)
    source, target = Net(), Net()
    target.set_state_dict(source.state_dict())
    with paddle.no_grad():
        for p in target.parameters():
            p.set_value(p + 0.05 * paddle.randn(p.shape))
    return source, target


BUILDERS = {
    "L2SP": lambda m, s: L2SP(m, s, alpha=0.1, beta=0.01, head=["fc"]),
    "L2SPFisher": lambda m, s: L2SPFisher(m, s, alpha=0.1, beta=0.01, head=["fc"],
                                         fisher={"conv.weight": paddle.full([4, 2, 3, 3], 2.0)}),
    "KnowDist": lambda m, s: KnowDist(m, s, layers=["conv"], head=["fc"]),
    "DELTA": lambda m, s: DELTA(m, s, alpha=0.1, beta=0.01, layers=["conv"], head=["fc"],
                                attention={"conv": np.array([0.1, 0.2, 0.3, 0.4])}),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_to_casts_the_constants_with_the_loss(kind):
    source, model = _pair()
    reg = BUILDERS[kind](model, source)
    x = paddle.randn([2, 2, 4, 4])
    omega32 = float(reg.run(x)[1])
    model.to(dtype="float64")
    assert reg.to(dtype="float64") is reg
    _, omega = reg.run(x.astype("float64"))  # a float32 constant here would fail to combine
    assert omega.dtype == paddle.float64
    np.testing.assert_allclose(float(omega), omega32, rtol=1e-5)
    if reg.has_closed_form:
        assert {g.dtype for g in reg.closed_form_grads()} == {paddle.float64}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_loss_saves_nothing_and_owns_no_parameter(kind):
    source, model = _pair()
    reg = BUILDERS[kind](model, source)
    assert reg.state_dict() == {}  # the source is an input, given again when the loss is built
    assert reg.parameters() == []  # the model's parameters stay the user's
    assert isinstance(reg, TransferRegularizer) and reg.model is model


def _finite_difference(omega_of, param, h=1e-6) -> np.ndarray:
    """d Omega / d param by central differences (float64), entry by entry."""
    base = param.numpy().copy()
    grad = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        values = []
        for sign in (1.0, -1.0):
            moved = base.copy()
            moved[i] += sign * h
            param.set_value(moved)
            values.append(float(omega_of()))
        grad[i] = (values[0] - values[1]) / (2 * h)
    param.set_value(base)
    return grad


# which of conv.weight, conv.bias, fc.weight, fc.bias Omega does not depend on
# (DELTA's beta pulls the head toward 0; KnowDist never sees it)
@pytest.mark.parametrize("kind, unused", [("KnowDist", [False, False, True, True]),
                                          ("DELTA", [False, False, False, False])])
def test_the_optimizer_takes_the_gradient_not_the_loss(kind, unused):
    """gO as DTNH takes it (paddle.grad of omega, no method of the loss's)
    against central differences of Omega in float64; None where Omega does
    not depend on a parameter (the head under a feature-map loss)."""
    source, model = _pair()
    reg = BUILDERS[kind](model, source)
    assert not hasattr(reg, "grads") and not hasattr(reg, "take_graph_anchors")
    model.to(dtype="float64")
    reg.to(dtype="float64")
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0)
    x = paddle.randn([2, 2, 4, 4]).astype("float64")
    _, omega = reg.run(x)
    params = [p for p in model.parameters() if not p.stop_gradient]
    got = opt._explicit.gradient(params, omega)
    with paddle.no_grad():
        expected = [_finite_difference(lambda: reg.run(x)[1], p) for p in params]
    assert [g is None for g in got] == [not e.any() for e in expected] == unused
    for g, e in zip(got, expected):
        if g is not None:
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-6, atol=1e-9)


def test_a_custom_loss_without_a_model_still_pairs_by_counting():
    """A subclass that never set a model: hook mode cannot anchor its
    forwards, and still pairs regularize() with backward() by counting."""

    class OutputPull(TransferRegularizer):
        def __init__(self, params):
            super().__init__()
            self._params = params

        def regularized_parameters(self):
            return self._params

        def forward(self, logits):
            return (logits ** 2).mean()

    _, model = _pair()
    reg = OutputPull([p for p in model.parameters() if not p.stop_gradient])
    assert reg.model is None
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0)
    x, y = paddle.randn([2, 2, 4, 4]), paddle.to_tensor([0, 1])
    logits = model(x)
    opt.regularize(reg(logits))
    with pytest.raises(RuntimeError, match="regularize\\(\\) ran 2 time\\(s\\) but loss.backward\\(\\) 1"):
        opt.regularize(reg(model(x)))
        F.cross_entropy(logits, y).backward()
        opt.step()
