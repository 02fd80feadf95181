"""Resuming never mis-assigns optimizer state: it is keyed by the model's
structured parameter names, not by Paddle's creation-order names."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.regularizers import L2SP


class ThreeConvs(paddle.nn.Layer):
    """Three same-shape convs; ``order`` is the order they are *created* in
    (Paddle's generated names follow it), registration order is fixed."""

    def __init__(self, order=(0, 1, 2)):
        super().__init__()
        convs = {}
        for i in order:
            convs[i] = paddle.nn.Conv2D(4, 4, 3, padding=1)
        self.a, self.b, self.c = convs[0], convs[1], convs[2]
        self.fc = paddle.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(paddle.mean(self.c(F.relu(self.b(F.relu(self.a(x))))), axis=[2, 3]))


def data(step):
    rng = np.random.default_rng(step)
    return (paddle.to_tensor(rng.normal(size=(4, 4, 5, 5)).astype("float32")),
            paddle.to_tensor(rng.integers(0, 3, size=4)))


OPTIMIZERS = {
    "Momentum": lambda params: paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=params),
    "Adam": lambda params: paddle.optimizer.Adam(0.01, parameters=params),
}


def build(order, optimizer, source_state, unrelated_first=False):
    """A fresh "process": its own name scope, maybe an unrelated layer first."""
    with paddle.utils.unique_name.guard():
        if unrelated_first:
            paddle.nn.Linear(2, 2)
        net = ThreeConvs(order)
        reg = L2SP(net, source_state, alpha=0.5, beta=0.1, head=["fc"])
        opt = DTNH(OPTIMIZERS[optimizer](net.parameters()), reg, lam=1.0, reference="ema")
    return net, opt


def train(net, opt, steps):
    for step in steps:
        x, y = data(step)
        out, omega = opt.regularizer.run(x)
        opt.update(F.cross_entropy(out, y), omega)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("order, unrelated", [((2, 1, 0), False), ((0, 1, 2), True), ((1, 2, 0), True)],
                         ids=["permuted", "unrelated-layer-first", "both"])
def test_resume_is_bit_equal_whatever_the_creation_order(tmp_path, optimizer, order, unrelated):
    paddle.seed(0)
    source = ThreeConvs()
    source_state = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    net, opt = build((0, 1, 2), optimizer, source_state)
    net.set_state_dict({k: v + 0.1 for k, v in source_state.items()})
    train(net, opt, range(3))
    paddle.save(net.state_dict(), str(tmp_path / "net.pdparams"))
    paddle.save(opt.state_dict(), str(tmp_path / "opt.pdopt"))
    train(net, opt, range(3, 6))

    resumed, opt2 = build(order, optimizer, source_state, unrelated_first=unrelated)
    assert [p.name for p in resumed.parameters()] != [p.name for p in net.parameters()] or unrelated
    resumed.set_state_dict(paddle.load(str(tmp_path / "net.pdparams")))
    opt2.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
    assert opt2.num_steps == 3
    train(resumed, opt2, range(3, 6))
    for (name, a), b in zip(net.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_a_bare_inner_checkpoint_loads_where_names_match_and_is_refused_where_not():
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        net = ThreeConvs()
        bare = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=net.parameters())
    x, y = data(0)
    F.cross_entropy(net(x), y).backward()
    bare.step()
    state = bare.state_dict()
    with paddle.utils.unique_name.guard():  # the same names: accepted
        same = ThreeConvs()
        DTNH(paddle.optimizer.Momentum(0.05, parameters=same.parameters()), lam=0.0).set_state_dict(state)
    with paddle.utils.unique_name.guard():
        paddle.nn.Linear(2, 2)  # shifts every generated name
        other = ThreeConvs()
        opt = DTNH(paddle.optimizer.Momentum(0.05, parameters=other.parameters()), lam=0.0)
    with pytest.raises(ValueError, match=r"bare Momentum names parameters this process does not have"):
        opt.set_state_dict(state)


def test_mismatched_state_is_refused_before_anything_changes():
    paddle.seed(0)
    net, opt = build((0, 1, 2), "Adam", {k: v.numpy() for k, v in ThreeConvs().state_dict().items()})
    train(net, opt, range(2))
    state = opt.state_dict()
    state["optimizer"]["accumulators"]["a.weight"]["moment1"] = paddle.zeros([4, 4, 3, 2])
    state["optimizer"]["accumulators"]["zz.weight"] = {}
    del state["optimizer"]["accumulators"]["fc.bias"]["moment2"]
    before = {k: v.numpy().copy() for k, v in opt.state_dict()["optimizer"]["accumulators"]["fc.weight"].items()}
    with pytest.raises(ValueError) as err:
        opt.set_state_dict(state)
    message = str(err.value)
    assert "a.weight (moment1): shape [4, 4, 3, 2] saved, [4, 4, 3, 3] expected" in message
    assert "zz.weight is not a parameter" in message and "moment2 of fc.bias is missing" in message
    assert opt.num_steps == 2
    for k, v in opt.state_dict()["optimizer"]["accumulators"]["fc.weight"].items():
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_paddle_model_save_load_fit_evaluate_with_dtnh(tmp_path):
    paddle.seed(0)
    x = paddle.randn([8, 4, 5, 5])
    y = paddle.randint(0, 3, [8, 1])
    data_set = paddle.io.TensorDataset([x, y])

    def model_of(order, unrelated=False):
        net, opt = build(order, "Adam", {k: v.numpy() for k, v in ThreeConvs().state_dict().items()},
                         unrelated_first=unrelated)
        model = paddle.Model(net)
        model.prepare(opt, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
        return model, net, opt

    paddle.seed(1)
    model, net, opt = model_of((0, 1, 2))
    model.fit(data_set, epochs=1, batch_size=4, verbose=0)
    model.save(str(tmp_path / "ckpt"))
    model.fit(data_set, epochs=1, batch_size=4, verbose=0, shuffle=False)

    paddle.seed(1)
    model2, net2, opt2 = model_of((2, 0, 1), unrelated=True)
    model2.load(str(tmp_path / "ckpt"))
    assert opt2.num_steps == 2
    model2.fit(data_set, epochs=1, batch_size=4, verbose=0, shuffle=False)
    for (name, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    assert "acc" in model2.evaluate(data_set, batch_size=4, verbose=0)


def test_a_resume_from_tensors_prints_no_copy_construct_warning():
    import warnings

    paddle.seed(0)
    net = paddle.nn.Linear(3, 2)
    opt = DTNH(paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=net.parameters()), lam=0.0, model=net)
    (net(paddle.ones([2, 3])) ** 2).mean().backward()
    opt.step()
    saved = opt.state_dict()  # tensors, as paddle.load and the library's loaders give them
    other = DTNH(paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=net.parameters()), lam=0.0, model=net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other.set_state_dict(saved)
    assert not [w for w in caught if "copy construct" in str(w.message)], [str(w.message) for w in caught]
    for (k, a), b in zip(flat_tensors(saved), [v for _, v in flat_tensors(other.state_dict())]):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def flat_tensors(state, prefix=""):
    for k, v in state.items():
        if isinstance(v, dict):
            yield from flat_tensors(v, f"{prefix}{k}/")
        elif isinstance(v, paddle.Tensor):
            yield f"{prefix}{k}", v
