import copy

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.features import FeatureCapture, default_layers, frozen_copy
from paddle_dtnh.regularizers import DELTA, KnowDist, SourceMismatchError
from tests.helpers import dtnh_step


class TinyConvNet(paddle.nn.Layer):
    def __init__(self, classes=3):
        super().__init__()
        self.block1 = paddle.nn.Sequential(paddle.nn.Conv2D(2, 3, 3, padding=1), paddle.nn.BatchNorm2D(3), paddle.nn.ReLU())
        self.block2 = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, stride=2, padding=1), paddle.nn.Tanh())
        self.fc = paddle.nn.Linear(4, classes)

    def forward(self, x):
        x = self.block2(self.block1(x))
        return self.fc(paddle.mean(x, axis=[2, 3]))


LAYERS = ["block1", "block2"]


def pair():
    source = TinyConvNet()
    target = copy.deepcopy(source)
    for p in target.parameters():
        if not p.stop_gradient:
            p.set_value(p + 0.2 * paddle.randn(p.shape, dtype=p.dtype))
    return source, target


def np_distance(t, s, weights=None):
    """Reference: mean over batch of sum_c w_c ||dF_c||^2 / (H W)."""
    d = ((t - s) ** 2).reshape(t.shape[0], t.shape[1], -1).mean(axis=2)
    if weights is not None:
        d = d * weights
    return d.sum(axis=1).mean()


def test_knowdist_and_delta_match_numpy_on_fixed_maps(float64):
    source, target = pair()
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.normal(size=(5, 2, 6, 6)))
    with FeatureCapture(target, LAYERS) as tf:
        target(x)
    source.eval()  # the regularizer's frozen copy runs in eval mode too
    with FeatureCapture(source, LAYERS) as sf, paddle.no_grad():
        source(x)
    t = {k: v.numpy() for k, v in tf.items()}
    s = {k: v.numpy() for k, v in sf.items()}
    expected = sum(np_distance(t[k], s[k]) for k in LAYERS)
    kd = KnowDist(target, source, layers=LAYERS)
    np.testing.assert_allclose(float(kd(x, tf)), expected, rtol=1e-10)

    att = {"block1": np.array([0.5, 0.3, 0.2]), "block2": np.array([0.1, 0.2, 0.3, 0.4])}
    delta = DELTA(target, source, layers=LAYERS, alpha=0.7, beta=0.3, head=["fc"], attention=att)
    head = 0.3 / 2 * (np.sum(target.fc.weight.numpy() ** 2) + np.sum(target.fc.bias.numpy() ** 2))
    feat = sum(np_distance(t[k], s[k], att[k] * len(att[k])) for k in LAYERS)
    np.testing.assert_allclose(float(delta(x, tf)), 0.7 * feat + head, rtol=1e-10)

    uniform = DELTA(target, source, layers=LAYERS, alpha=0.7, beta=0.0, head=["fc"])
    np.testing.assert_allclose(float(uniform(x, tf)), 0.7 * expected, rtol=1e-10)


def test_normalised_against_batch_and_map_size(float64):
    """Repeating the batch or upsampling inputs leaves Omega unchanged."""
    source, target = pair()
    reg = KnowDist(target, source, layers=["block2"])
    target.eval()
    x = paddle.randn([3, 2, 4, 4])
    _, a = reg.run(x)
    _, b = reg.run(paddle.concat([x, x, x]))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-10)


def test_gradient_matches_finite_differences(float64):
    source, target = pair()
    target.eval()  # BN in eval: a deterministic function of the weights
    reg = DELTA(target, source, layers=LAYERS, alpha=0.5, beta=0.2, head=["fc"],
                attention={"block1": [0.2, 0.3, 0.5], "block2": [0.25] * 4})
    x = paddle.randn([4, 2, 5, 5])
    params = reg.regularized_parameters()
    grads = paddle.grad(reg.run(x)[1], params, allow_unused=True)
    h = 1e-6
    for p, g in zip(params, grads):
        flat = p.numpy().ravel().copy()
        fd = np.empty_like(flat)
        for i in range(flat.size):
            vals = []
            for sign in (1, -1):
                bumped = flat.copy()
                bumped[i] += sign * h
                p.set_value(bumped.reshape(p.shape))
                vals.append(float(reg.run(x)[1]))
            fd[i] = (vals[0] - vals[1]) / (2 * h)
        p.set_value(flat.reshape(p.shape))
        g = np.zeros_like(flat) if g is None else g.numpy().ravel()
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8, err_msg=p.name)


class Boom(Exception):
    pass


def test_hooks_removed_after_an_exception():
    net = TinyConvNet()
    with pytest.raises(Boom):
        with FeatureCapture(net, LAYERS):
            raise Boom()
    assert all(not layer._forward_post_hooks for _, layer in net.named_sublayers())

    def explode(layer, inputs, output):
        raise Boom()

    handle = net.block2.register_forward_post_hook(explode)
    reg = KnowDist(net, TinyConvNet(), layers=LAYERS)
    with pytest.raises(Boom):
        reg.run(paddle.randn([1, 2, 4, 4]))
    handle.remove()
    assert all(not layer._forward_post_hooks for _, layer in net.named_sublayers())
    assert all(not layer._forward_post_hooks for _, layer in reg.source.named_sublayers())


def test_unknown_layer_lists_available_names():
    with pytest.raises(ValueError, match=r"Unknown layer name\(s\) \['layer9'\].*block1"):
        KnowDist(TinyConvNet(), TinyConvNet(), layers=["layer9"])
    with pytest.raises(ValueError, match="No default feature layers for TinyConvNet"):
        KnowDist(TinyConvNet(), TinyConvNet())
    assert default_layers(paddle.vision.models.resnet18()) == ["layer1", "layer2", "layer3", "layer4"]


def test_bad_attention_is_rejected():
    source, target = pair()
    with pytest.raises(ValueError, match=r"attention has no weights for layer\(s\) \['block2'\]"):
        DELTA(target, source, layers=LAYERS, alpha=1.0, beta=0.0, attention={"block1": [1 / 3] * 3})
    with pytest.raises(ValueError, match="summing to 1"):
        DELTA(target, source, layers=LAYERS, alpha=1.0, beta=0.0,
              attention={"block1": [1.0] * 3, "block2": [0.25] * 4})
    with pytest.raises(ValueError, match="'block1' has 3 output channels: the attention was computed for another"):
        DELTA(target, source, layers=LAYERS, alpha=1.0, beta=0.0,
              attention={"block1": [0.5, 0.5], "block2": [0.25] * 4})


def test_source_is_frozen_and_not_saved():
    source, target = pair()
    reg = DELTA(target, source, layers=LAYERS, alpha=1.0, beta=0.1, head=["fc"])
    assert list(reg.parameters()) == [] and dict(reg.state_dict()) == {}
    assert all(p.stop_gradient for p in reg.source.parameters())
    assert not reg.source.training
    frozen_params = {id(p) for p in reg.source.parameters()}
    assert not frozen_params & {id(p) for p in target.parameters()}


@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_dtnh_delta_lowers_the_empirical_loss_and_keeps_the_source(mode):
    source, target = pair()
    source_before = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    reg = DELTA(target, source, layers=LAYERS, alpha=0.1, beta=0.01, head=["fc"])
    frozen_before = {k: v.numpy().copy() for k, v in reg.source.state_dict().items()}
    opt = DTNH(paddle.optimizer.Momentum(0.05, parameters=target.parameters()), reg, lam=1.0)
    x, y = paddle.randn([8, 2, 6, 6]), paddle.to_tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def empirical():
        target.eval()
        with paddle.no_grad():
            value = float(F.cross_entropy(target(x), y))
        target.train()
        return value

    start = empirical()
    for _ in range(8):
        dtnh_step(opt, x, y, mode)
    assert empirical() < start
    for k, v in reg.source.state_dict().items():  # BN running stats included
        np.testing.assert_array_equal(v.numpy(), frozen_before[k], err_msg=k)
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), source_before[k], err_msg=k)


def test_source_as_weights_of_the_target_architecture(tmp_path):
    source, target = pair()
    path = str(tmp_path / "source.pdparams")
    paddle.save(source.state_dict(), path)
    a = KnowDist(target, source, layers=LAYERS)
    b = KnowDist(target, path, layers=LAYERS)
    x = paddle.randn([2, 2, 4, 4])
    target.eval()
    np.testing.assert_allclose(float(a.run(x)[1]), float(b.run(x)[1]), rtol=1e-6)
    with pytest.raises(SourceMismatchError, match=r"missing in the source \(9\): block1.0.weight"):
        KnowDist(target, {"fc.weight": np.zeros((4, 3))}, layers=LAYERS)


def test_frozen_copy_leaves_the_original_alone():
    net = TinyConvNet()
    net.train()
    frozen = frozen_copy(net)
    assert net.training and not frozen.training
    assert not any(p.stop_gradient for p in net.fc.parameters())


@pytest.mark.parametrize("given", [2, 4])
def test_delta_checks_attention_against_the_layers_channels_at_construction(given):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 3, 3, padding=1), paddle.nn.ReLU(),
                                 paddle.nn.Sequential(paddle.nn.Conv2D(3, 3, 3), paddle.nn.BatchNorm2D(3),
                                                      paddle.nn.ReLU()),
                                 paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(3, 2))
    attention = {"0": np.full(3, 1 / 3), "2": np.full(given, 1 / given)}
    with pytest.raises(ValueError, match=f"attention\\['2'\\] has {given} weights but layer '2' has 3 output "
                                         "channels"):
        DELTA(model, copy.deepcopy(model), layers=["0", "2"], alpha=1.0, beta=0.0, head=["5"], attention=attention)
    attention["2"] = np.full(3, 1 / 3)  # the right count builds
    DELTA(model, copy.deepcopy(model), layers=["0", "2"], alpha=1.0, beta=0.0, head=["5"], attention=attention)
