import numpy as np
import paddle
import pytest

from paddle_dtnh.attention import AttentionWeights, compute_attention, network_stages
from paddle_dtnh.regularizers import DELTA


class StagedNet(paddle.nn.Layer):
    """A tiny conv net with a stage split like ResNet's."""

    def __init__(self):
        super().__init__()
        self.stem = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding=1), paddle.nn.ReLU())
        self.layer1 = paddle.nn.Sequential(paddle.nn.Conv2D(4, 6, 3, padding=1), paddle.nn.BatchNorm2D(6), paddle.nn.ReLU())
        self.layer2 = paddle.nn.Sequential(paddle.nn.Conv2D(6, 8, 3, stride=2, padding=1), paddle.nn.ReLU())
        self.fc = paddle.nn.Linear(8, 5)

    def stages(self):
        """The split compute_attention applies to its frozen copy."""
        return [("stem", self.stem), ("layer1", self.layer1), ("layer2", self.layer2),
                ("pool", lambda x: paddle.mean(x, axis=[2, 3]))]

    def forward(self, x):
        for _, stage in self.stages():
            x = stage(x)
        return self.fc(x)


def data(batches=3, b=6):
    rng = np.random.default_rng(0)
    return [(paddle.to_tensor(rng.normal(size=(b, 3, 6, 6)).astype("float32")),
             paddle.to_tensor(rng.integers(0, 3, size=b))) for _ in range(batches)]


def test_batched_equals_brute_force_on_a_tiny_net(float64):
    net = StagedNet()
    d = [(x.astype("float64"), y) for x, y in data()]
    common = dict(num_classes=3, stages=StagedNet.stages, fe_epochs=3, progress=False, max_batches=2)
    batched = compute_attention(net, d, max_ablation_batch=10, **common)
    brute = compute_attention(net, d, method="brute_force", head=batched.meta["head"], **common)
    assert batched.layers == ["layer1", "layer2"]
    assert net.training  # the caller's network is not touched
    for name in batched.layers:
        assert np.abs(batched.gaps[name]).max() > 0
        np.testing.assert_allclose(batched.gaps[name], brute.gaps[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batched.weights[name], brute.weights[name], rtol=1e-9)
        assert batched.weights[name].sum() == pytest.approx(1.0)
        assert (batched.weights[name] > 0).all()


def test_resnet18_attention_batched_equals_brute_force_on_layer4():
    net = paddle.vision.models.resnet18(num_classes=5)
    d = [(paddle.randn([2, 3, 32, 32]), paddle.to_tensor([0, 1]))]
    a = compute_attention(net, d, num_classes=2, layers=["layer4"], fe_epochs=1, progress=False)
    b = compute_attention(net, d, num_classes=2, layers=["layer4"], method="brute_force",
                          head=a.meta["head"], progress=False)
    np.testing.assert_allclose(a.gaps["layer4"], b.gaps["layer4"], atol=1e-5)
    assert [n for n, _ in network_stages(net)] == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]


def test_normalizations():
    net = StagedNet()
    z = compute_attention(net, data(), num_classes=3, stages=StagedNet.stages, fe_epochs=2, progress=False)
    s = compute_attention(net, data(), num_classes=3, stages=StagedNet.stages, normalization="softmax",
                          head=z.meta["head"], progress=False)
    gaps = z.gaps["layer2"]
    np.testing.assert_allclose(s.weights["layer2"], np.exp(gaps) / np.exp(gaps).sum(), rtol=1e-6)
    zs = (gaps - gaps.mean()) / gaps.std() / 5.0
    np.testing.assert_allclose(z.weights["layer2"], np.exp(zs) / np.exp(zs).sum(), rtol=1e-5)
    # the largest loss increase gets the largest weight
    assert np.argmax(z.weights["layer2"]) == np.argmax(gaps)


def test_save_load_and_stale_files(tmp_path):
    net = StagedNet()
    att = compute_attention(net, data(), num_classes=3, stages=StagedNet.stages, fe_epochs=1, progress=False)
    path = str(tmp_path / "att.pdparams")
    att.save(path)
    loaded = AttentionWeights.load(path, source=net, layers=["layer1", "layer2"])
    for n in att.layers:
        np.testing.assert_array_equal(loaded.weights[n], att.weights[n])
    reg = DELTA(net, net, layers=["layer1", "layer2"], alpha=1.0, beta=0.0, attention=loaded)
    assert float(reg.run(data()[0][0])[1]) >= 0
    with pytest.raises(ValueError, match="computed for layers"):
        AttentionWeights.load(path, layers=["layer2"])
    other = StagedNet()
    with pytest.raises(ValueError, match="another source network"):
        AttentionWeights.load(path, source=other)


def test_bad_input():
    net = StagedNet()
    with pytest.raises(ValueError, match="Labels must be in"):
        compute_attention(net, [(paddle.randn([2, 3, 6, 6]), paddle.to_tensor([0, 7]))],
                          num_classes=3, stages=StagedNet.stages, progress=False)
    with pytest.raises(ValueError, match="empty"):
        compute_attention(net, [], num_classes=3, stages=StagedNet.stages, progress=False)
    with pytest.raises(ValueError, match=r"Unknown layer\(s\) \['layer9'\]"):
        compute_attention(net, data(), num_classes=3, stages=StagedNet.stages, layers=["layer9"], progress=False)
    with pytest.raises(ValueError, match="No stage split registered for StagedNet"):
        compute_attention(net, data(), num_classes=3, progress=False)
    with pytest.raises(ValueError, match="Invalid normalization"):
        compute_attention(net, data(), num_classes=3, stages=StagedNet.stages, normalization="l1")
