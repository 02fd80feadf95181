"""A fine-tuned model deploys: Paddle Inference predicts what the dygraph
network does, for the PaddleHub module and for a paddle.vision target."""

import os

import numpy as np
import paddle
import paddle.nn.functional as F
import paddlehub as hub

from paddle_dtnh import DTNH
from paddle_dtnh.integrations.deploy import load_predictor, predict, save_inference_model
from paddle_dtnh.integrations.hub import TransferTask, load_source
from paddle_dtnh.models.architectures import target_from
from paddle_dtnh.regularizers import L2SP, KnowDist
from tests.test_hub import TinyImages, imagenet_like, module_dir  # noqa: F401 (fixtures)


def test_the_hub_module_exports_after_dtnh_fine_tuning(module_dir, tmp_path):  # noqa: F811
    with paddle.utils.unique_name.guard():
        module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
        source = load_source(module_dir, num_classes=3).source
    opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=module.parameters()),
               KnowDist(module, source, head=["out"]), lam=0.1)
    trainer = hub.Trainer(TransferTask(module, opt), opt, checkpoint_dir=str(tmp_path / "ckpt"))
    trainer.train(TinyImages(4), epochs=1, batch_size=2, save_interval=1)
    assert opt.num_steps == 2
    module.train()  # as training may leave it: the export traces eval mode anyway
    module.save_inference_model(str(tmp_path / "infer"))
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype("float32")
    logits, feature = predict(load_predictor(str(tmp_path / "infer" / "resnet18_vd_dtnh")), x)
    module.eval()
    with paddle.no_grad():
        expected = module(paddle.to_tensor(x))
    np.testing.assert_allclose(logits, expected[0].numpy(), rtol=1e-3, atol=1e-4)
    # the random "ImageNet" statistics make features ~1e18: Paddle Inference's fused kernels round differently
    np.testing.assert_allclose(feature, expected[1].numpy(), rtol=1e-3, atol=1e-4)


def test_a_paddle_vision_target_exports_with_an_input_spec(tmp_path):
    paddle.seed(0)
    source = paddle.vision.models.resnet18(num_classes=5)
    model = target_from(source, num_classes=3)
    reg = L2SP(model, source, alpha=0.1, beta=0.01, head=["fc"])
    images, labels = paddle.randn([4, 3, 32, 32]), paddle.to_tensor([0, 1, 2, 0])
    held_x, held_y = paddle.randn([3, 3, 32, 32]), paddle.to_tensor([2, 1, 0])
    opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()), reg, lam=1.0, preset="never_hurt_holdout",
               holdout=lambda: F.cross_entropy(model(held_x), held_y))
    for _ in range(2):
        logits, omega = reg.run(images)
        opt.update(F.cross_entropy(logits, labels), omega)
    written = save_inference_model(model, str(tmp_path / "target"))
    assert all(os.path.isfile(p) for p in written.values()) and model.training  # mode restored
    x = np.random.default_rng(1).normal(size=(3, 3, 48, 48)).astype("float32")  # another batch and size
    (out,) = predict(load_predictor(str(tmp_path / "target")), x)
    model.eval()
    with paddle.no_grad():
        np.testing.assert_allclose(out, model(paddle.to_tensor(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_hub_trainer_with_a_held_out_reference(module_dir, tmp_path):  # noqa: F811
    from paddle_dtnh.integrations.hub import held_out_loss

    with paddle.utils.unique_name.guard():
        module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
        source = load_source(module_dir, num_classes=3).source
    calls = []
    loss = held_out_loss(module, TinyImages(3, seed=9))
    opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=module.parameters()),
               KnowDist(module, source, head=["out"]), lam=0.1, preset="paper", granularity="layer",
               on_conflict="drop", reference="holdout", holdout=lambda: calls.append(1) or loss(), holdout_every=2)
    hub.Trainer(TransferTask(module, opt), opt, checkpoint_dir=str(tmp_path / "c")).train(
        TinyImages(8), epochs=1, batch_size=2, save_interval=1)
    assert opt.num_steps == 4 and len(calls) == 2  # refreshed at steps 1 and 3
