"""``_layers.evaluating`` and every caller of it: a network in train mode
whose BatchNorm layers were put in eval (frozen statistics) comes back with
each sublayer in its own mode and its weights and buffers unchanged."""

import os
import warnings

import numpy as np
import paddle
import pytest

from paddle_dtnh import source_fit
from paddle_dtnh._layers import evaluating
from paddle_dtnh.integrations.deploy import save_inference_model
from paddle_dtnh.regularizers import estimate_fisher


def _frozen_bn_net(num_classes=3):
    """Conv + BatchNorm + Dropout + head, in train mode with its BatchNorm in eval."""
    net = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 4, 3, padding=1), paddle.nn.BatchNorm2D(4), paddle.nn.ReLU(), paddle.nn.Dropout(0.5),
        paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(4, num_classes))
    net.train()
    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer.eval()
    return net


def _modes(net):
    return [(name, layer.training) for name, layer in net.named_sublayers(include_self=True)]


def _state(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def _assert_as_before(net, modes, state):
    assert _modes(net) == modes
    after = _state(net)
    assert after.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


def _images(n=12, size=8):
    return paddle.randn([n, 3, size, size]), paddle.to_tensor(np.arange(n) % 3, dtype="int64")


@pytest.mark.parametrize("raises", [False, True])
def test_evaluating_restores_each_sublayers_own_mode(raises):
    net = _frozen_bn_net()
    modes, state = _modes(net), _state(net)
    assert modes[0] == ("", True) and ("1", False) in modes  # the set-up under test
    with pytest.raises(RuntimeError) if raises else warnings.catch_warnings():
        with evaluating(net):
            assert not any(training for _, training in _modes(net))
            net(_images()[0])
            if raises:
                raise RuntimeError("in the block")
    _assert_as_before(net, modes, state)


def test_evaluating_leaves_a_model_in_eval_with_a_train_sublayer_as_it_was():
    net = _frozen_bn_net()
    net.eval()
    net[3].train()
    modes = _modes(net)
    with evaluating(net):
        assert not net[3].training
    assert _modes(net) == modes


def test_source_fit_keeps_the_frozen_batchnorm():
    net = _frozen_bn_net()
    modes, state = _modes(net), _state(net)
    x, y = _images()
    source_fit(net, x, y, head="6")
    _assert_as_before(net, modes, state)


def test_estimate_fisher_keeps_the_frozen_batchnorm():
    net = _frozen_bn_net()
    modes, state = _modes(net), _state(net)
    estimate_fisher(net, [_images(2)], progress=False)
    _assert_as_before(net, modes, state)


def test_deployment_export_keeps_the_frozen_batchnorm(tmp_path):
    net = _frozen_bn_net()
    modes, state = _modes(net), _state(net)
    save_inference_model(net, os.path.join(str(tmp_path), "net"))
    _assert_as_before(net, modes, state)


def test_lab_evaluate_keeps_the_frozen_batchnorm():
    from lab.sources import evaluate

    net = _frozen_bn_net()
    modes, state = _modes(net), _state(net)
    evaluate(net, *_images())
    _assert_as_before(net, modes, state)


def test_hub_module_predict_and_export_keep_the_frozen_batchnorm(tmp_path):
    hub = pytest.importorskip("paddlehub")
    from paddle_dtnh.integrations.hub import MODULE_DIR

    with pytest.warns(UserWarning, match="No pretrained weights"):
        module = hub.Module(directory=MODULE_DIR, num_classes=3)
    module.train()
    for layer in module.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer.eval()
    modes, state = _modes(module), _state(module)
    assert sum(not training for _, training in modes) > 1
    module.predict([np.zeros([16, 16, 3], "uint8")], size=16)
    _assert_as_before(module, modes, state)
    module.save_inference_model(str(tmp_path))
    _assert_as_before(module, modes, state)
