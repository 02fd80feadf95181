"""Every registered architecture is consistent: adding one is one entry plus this test."""

import numpy as np
import paddle
import pytest

from paddle_dtnh.models.architectures import ARCHITECTURES, architecture_of, detect_architecture, target_from
from paddle_dtnh.features import FeatureCapture, default_layers


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_entry_is_consistent(name):
    arch = ARCHITECTURES[name]
    net = arch.build(7)
    net.eval()
    assert architecture_of(net) is arch
    assert detect_architecture(net.state_dict()) is arch
    assert arch.num_classes(net.state_dict()) == 7
    x = paddle.randn([2, 3, 32, 32])
    # the stages compose to the head's input, and the feature layers are stage outputs
    h = x
    outputs = {}
    for stage_name, stage in arch.stages(net):
        h = stage(h)
        outputs[stage_name] = h
    head = getattr(net, arch.head)
    np.testing.assert_allclose(head(h).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert default_layers(net) == list(arch.feature_layers)
    with FeatureCapture(net, arch.feature_layers) as feats:
        net(x)
    for layer in arch.feature_layers:
        np.testing.assert_allclose(feats[layer].numpy(), outputs[layer].numpy(), rtol=1e-5, atol=1e-5)
    # a target keeps the trunk and gets a fresh head
    target = target_from(net, num_classes=3)
    assert arch.num_classes(target.state_dict()) == 3
    for key, value in net.state_dict().items():
        if not key.startswith(arch.head + "."):
            np.testing.assert_array_equal(target.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_unknown_networks_are_named():
    assert architecture_of(paddle.nn.Linear(2, 2)) is None
    assert detect_architecture({"encoder.weight": np.zeros(2)}) is None
    with pytest.raises(ValueError, match="No registered architecture for Linear"):
        target_from(paddle.nn.Linear(2, 2), num_classes=3)


def test_each_entry_loads_its_own_weights_and_reads_their_classes():
    for name, arch in ARCHITECTURES.items():
        source = arch.build(7)
        state = source.state_dict()
        assert arch.num_classes(state) == 7
        copy = arch.build(7)
        arch.load_weights(copy, state)
        for key, value in copy.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), state[key].numpy(), err_msg=f"{name}: {key}")
        incomplete = {k: v for k, v in state.items() if not k.startswith(arch.feature_layers[0])}
        with pytest.raises(ValueError):
            arch.load_weights(arch.build(7), incomplete)
    # PaddleHub's legacy head name counts for ResNet-18-vd
    assert ARCHITECTURES["resnet18_vd"].num_classes({"fc_0.w_0": paddle.zeros([512, 1000])}) == 1000
