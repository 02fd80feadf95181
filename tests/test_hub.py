import glob
import os
import shutil

import numpy as np
import paddle
import paddlehub as hub
import pytest
from visualdl import LogReader

from paddle_dtnh import DTNH
from paddle_dtnh.integrations.hapi import DTNHCallback
from paddle_dtnh.integrations.hub import (MODULE_DIR, WEIGHTS_FILE, ResNet18VD, TransferTask, legacy_names,
                                          load_resnet18_vd_weights, load_source)
from paddle_dtnh.regularizers import L2SP, KnowDist
from paddle_dtnh.integrations.visualdl import TAGS, DTNHLogger


@pytest.fixture(scope="module")
def imagenet_like():
    """A ResNet-18-vd 'pretrained' on 1000 classes (random weights, random BN stats)."""
    paddle.seed(1)
    net = ResNet18VD(num_classes=1000)
    for name, t in net.state_dict().items():
        if name.endswith("_variance"):
            t.set_value(paddle.rand(t.shape) + 0.5)
        elif name.endswith("_mean"):
            t.set_value(0.1 * paddle.randn(t.shape))
    return {k: v.numpy() for k, v in net.state_dict().items()}


@pytest.fixture
def module_dir(tmp_path, imagenet_like):
    directory = tmp_path / "resnet18_vd_dtnh"
    directory.mkdir()
    shutil.copy(os.path.join(MODULE_DIR, "module.py"), directory)
    paddle.save([imagenet_like, None], str(directory / WEIGHTS_FILE))  # PaddleHub's list layout
    return str(directory)


@pytest.mark.parametrize("layout", ["dict", "list"])
@pytest.mark.parametrize("keys", ["structured", "legacy"])
def test_loader_fills_every_tensor(tmp_path, imagenet_like, layout, keys):
    model = ResNet18VD(num_classes=1000)
    state = dict(imagenet_like)
    if keys == "legacy":
        names = legacy_names(model)
        state = {names[k]: v for k, v in state.items()}
    path = str(tmp_path / "w.pdparams")
    paddle.save(state if layout == "dict" else [state, None], path)
    report = load_resnet18_vd_weights(model, path)
    assert report.key_style == keys
    assert len(report.loaded) == len(model.state_dict()) == 117
    assert not report.not_loaded and not report.unused
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), imagenet_like[name], err_msg=name)


def test_loader_reports_the_new_head_and_rejects_other_architectures(tmp_path, imagenet_like):
    model = ResNet18VD(num_classes=3)
    report = load_resnet18_vd_weights(model, imagenet_like)
    assert set(report.not_loaded) == {"out.weight", "out.bias"}
    assert "new head" in report.not_loaded["out.weight"]
    assert len(report.loaded) == 115
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    vision = {k: v.numpy() for k, v in paddle.vision.models.resnet18().state_dict().items()}
    with pytest.raises(ValueError, match="not ResNet-18-vd weights"):
        load_resnet18_vd_weights(model, vision)
    bad = dict(imagenet_like)
    bad["bb_0_0.conv0._conv.weight"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"bb_0_0.conv0._conv.weight: shape \[3, 3\]"):
        load_resnet18_vd_weights(model, bad)
    for k, v in model.state_dict().items():  # nothing changed by the failed loads
        np.testing.assert_array_equal(v.numpy(), before[k])
    corrupt = tmp_path / "corrupt.pdparams"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a Paddle file"):
        load_resnet18_vd_weights(model, str(corrupt))


def test_module_loads_offline_with_its_weights(module_dir, imagenet_like):
    module = hub.Module(directory=module_dir, label_list=["cat", "dog", "eel"])
    assert module.labels == ["cat", "dog", "eel"]
    np.testing.assert_array_equal(module.conv1_1._conv.weight.numpy(), imagenet_like["conv1_1._conv.weight"])
    assert set(module.load_report.not_loaded) == {"out.weight", "out.bias"}
    logits, feature = module(paddle.randn([2, 3, 32, 32]))
    assert logits.shape == [2, 3] and feature.shape == [2, 512]
    out = module.training_step((paddle.randn([2, 3, 32, 32]), paddle.to_tensor([0, 2])), 0)
    assert set(out) == {"loss", "metrics"} and "acc" in out["metrics"]
    with pytest.raises(ValueError, match="label_list has 3 names but num_classes=4"):
        hub.Module(directory=module_dir, label_list=["a", "b", "c"], num_classes=4)


def test_load_source_specs(tmp_path, module_dir, monkeypatch):
    vision_path = str(tmp_path / "r18.pdparams")
    paddle.save(paddle.vision.models.resnet18().state_dict(), vision_path)
    src = load_source(vision_path, num_classes=7)
    assert (src.architecture, src.head) == ("resnet18", ["fc"])
    assert src.model.fc.weight.shape == [512, 7] and src.source.fc.weight.shape == [512, 1000]
    np.testing.assert_array_equal(src.model.conv1.weight.numpy(), src.source.conv1.weight.numpy())
    for spec in (module_dir, os.path.join(module_dir, WEIGHTS_FILE)):
        vd = load_source(spec, num_classes=4)
        assert (vd.architecture, vd.head) == ("resnet18_vd", ["out"])
        np.testing.assert_array_equal(vd.model.bb_3_1.conv1._conv.weight.numpy(),
                                      vd.source.bb_3_1.conv1._conv.weight.numpy())
    vd = load_source("resnet18_vd_imagenet", num_classes=4, module_dir=module_dir)
    assert vd.report is not None and len(vd.report.loaded) == 117

    # offline, nothing on disk: a clear error, not a download stack trace
    import paddle.utils.download as download
    import paddlehub.env

    def no_network(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(download, "get_path_from_url", no_network)
    monkeypatch.setattr(download, "get_weights_path_from_url", no_network)
    monkeypatch.setattr(paddlehub.env, "MODULE_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(RuntimeError, match="needs internet access once. Offline: download"):
        load_source("resnet18_vd_imagenet", num_classes=4)
    with pytest.raises(RuntimeError, match="paddle.vision's ResNet-18 ImageNet weights"):
        load_source("resnet18", num_classes=4)
    with pytest.raises(ValueError, match="Unknown source 'resnet50'"):
        load_source("resnet50", num_classes=4)
    other = str(tmp_path / "other.pdparams")
    paddle.save({"encoder.weight": np.zeros((2, 2), "float32")}, other)
    with pytest.raises(ValueError, match="unknown architecture"):
        load_source(other, num_classes=4)


class TinyImages(paddle.io.Dataset):
    def __init__(self, n, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 3, 32, 32)).astype("float32")
        self.y = rng.integers(0, 3, size=n)

    def __getitem__(self, i):
        return self.x[i], np.int64(self.y[i])

    def __len__(self):
        return len(self.x)


def _read(logdir, tag):
    """Every record of ``tag`` across the log files of ``logdir`` (one per run)."""
    records = []
    for path in sorted(glob.glob(os.path.join(logdir, "vdlrecords.*.log"))):
        reader = LogReader(file_path=path)
        if tag in reader.get_tags().get("scalar", []):
            records += [(r.id, r.value) for r in reader.get_data("scalar", tag)]
    return records


def _build(module_dir, checkpoint_dir, kind, unrelated_first=False):
    # every "process" gets a fresh Paddle name scope, as a new process would
    with paddle.utils.unique_name.guard():
        if unrelated_first:  # shifts every generated parameter name
            paddle.nn.Linear(2, 2)
        module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
        source = load_source(module_dir, num_classes=3).source
        if kind == "l2sp":
            reg = L2SP(module, source, alpha=0.1, beta=0.01, head=["out"], strict=False)
        else:
            reg = KnowDist(module, source, head=["out"])
        logger = DTNHLogger(os.path.join(checkpoint_dir, "visualization", "dtnh"), interval=1)
        inner = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=module.parameters())
        opt = DTNH(inner, reg, lam=0.5, lam_decay=0.5, steps_per_epoch=3, logger=logger)
        return module, TransferTask(module, opt), opt, logger


@pytest.mark.parametrize("kind", ["l2sp", "knowdist"])
def test_hub_trainer_with_dtnh_checkpoints_resume_and_visualdl(module_dir, tmp_path, kind):
    ckpt = str(tmp_path / "ckpt")
    module, task, opt, logger = _build(module_dir, ckpt, kind)
    with paddle.utils.unique_name.guard():
        trainer = hub.Trainer(task, opt, checkpoint_dir=ckpt, use_vdl=True)
        trainer.train(TinyImages(12), epochs=2, batch_size=4, eval_dataset=TinyImages(4, seed=1),
                      log_interval=1, save_interval=1)
    logger.close()
    assert opt.num_steps == 6 and opt.lam == pytest.approx(0.5 * 0.5**2)
    saved = paddle.load(os.path.join(ckpt, "epoch_2", "model.pdparams"))
    assert set(saved) == {f"model.{k}" for k in module.state_dict()}  # no source copy inside
    trained = {k: v.numpy().copy() for k, v in module.state_dict().items()}

    # a new "process", which creates an unrelated layer first, resumes from epoch 2
    module2, task2, opt2, logger2 = _build(module_dir, ckpt, kind, unrelated_first=True)
    with paddle.utils.unique_name.guard():
        trainer2 = hub.Trainer(task2, opt2, checkpoint_dir=ckpt, use_vdl=True)
        assert trainer2.current_epoch == 2 and opt2.num_steps == 6
        for k, v in module2.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), trained[k], err_msg=k)
        trainer2.train(TinyImages(12), epochs=1, batch_size=4, log_interval=1, save_interval=1)
    logger2.close()
    assert opt2.num_steps == 9 and os.path.isdir(os.path.join(ckpt, "epoch_3"))

    vdl = os.path.join(ckpt, "visualization")
    ours = _read(os.path.join(vdl, "dtnh"), "loss/empirical")
    theirs = _read(vdl, "TRAIN/loss")
    # the Trainer numbers steps from 1 in every train() call; DTNH's continue
    # from the checkpoint: DTNH step = Trainer step + steps before the resume
    assert [s for s, _ in theirs] == [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert [s for s, _ in ours] == list(range(1, 10))
    np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-5)
    for tag in TAGS:
        assert len(_read(os.path.join(vdl, "dtnh"), tag)) == 9, tag
    angles1 = [v for _, v in _read(os.path.join(vdl, "dtnh"), "angles/angle1_d_gJ")]
    angles3 = [v for _, v in _read(os.path.join(vdl, "dtnh"), "angles/angle3_vanilla_gJ")]
    assert all(a1 <= a3 + 1e-3 for a1, a3 in zip(angles1, angles3))  # DTNH never turns further from gJ
    lams = [v for _, v in _read(os.path.join(vdl, "dtnh"), "dtnh/lam")]
    np.testing.assert_allclose(lams, [0.5] * 3 + [0.25] * 3 + [0.125] * 3, rtol=1e-6)
    assert _read(vdl, "EVAL/acc")  # the Trainer's own evaluation logs


def test_paddle_model_fit_with_dtnh_knowdist(module_dir, tmp_path):
    logdir = str(tmp_path / "vdl")
    with paddle.utils.unique_name.guard():
        module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
        source = load_source(module_dir, num_classes=3).source
        reg = KnowDist(module, source, head=["out"])
        logger = DTNHLogger(logdir, interval=2)
        opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=module.parameters()), reg, lam=0.5,
                   lam_decay=0.5, logger=logger)
        model = paddle.Model(TransferTask(module, opt))
        model.prepare(opt, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
        model.fit(TinyImages(8), TinyImages(4, seed=1), epochs=2, batch_size=4, verbose=0,
                  callbacks=[DTNHCallback()])
    logger.close()
    assert opt.num_steps == 4 and opt.lam == pytest.approx(0.125)
    assert [s for s, _ in _read(logdir, "loss/empirical")] == [2, 4]
    assert [s for s, _ in _read(logdir, "angles/angle2_d_gO")] == [2, 4]
    accuracy = _read(logdir, "accuracy/eval")
    assert len(accuracy) == 2 and all(0.0 <= v <= 1.0 for _, v in accuracy)
    assert _read(logdir, "loss/eval")


def test_transfer_task_checks_its_inputs():
    net = paddle.nn.Linear(4, 3)
    other = paddle.nn.Linear(4, 3)
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=other.parameters()), lam=1.0)
    with pytest.raises(ValueError, match="does not own"):
        TransferTask(net, opt)
    with pytest.raises(TypeError, match="paddle_dtnh.DTNH"):
        TransferTask(net, paddle.optimizer.SGD(0.1, parameters=net.parameters()))


def test_plain_module_under_the_trainer_names_transfer_task(module_dir, tmp_path):
    with paddle.utils.unique_name.guard():
        module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
        source = load_source(module_dir, num_classes=3).source
        knowdist = DTNH(paddle.optimizer.SGD(0.01, parameters=module.parameters()),
                        KnowDist(module, source, head=["out"]), lam=0.1)
        trainer = hub.Trainer(module, knowdist, checkpoint_dir=str(tmp_path / "a"))
        with pytest.raises(RuntimeError, match="do this through paddle_dtnh.integrations.hub.TransferTask"):
            trainer.train(TinyImages(4), epochs=1, batch_size=4, save_interval=1)
        logger = DTNHLogger(str(tmp_path / "vdl"), interval=1)
        l2sp = DTNH(paddle.optimizer.SGD(0.01, parameters=module.parameters()),
                    L2SP(module, source, alpha=0.1, beta=0.01, head=["out"]), lam=0.1, logger=logger)
        trainer = hub.Trainer(module, l2sp, checkpoint_dir=str(tmp_path / "b"))
        with pytest.warns(UserWarning, match="got no empirical loss") as record:
            trainer.train(TinyImages(8), epochs=1, batch_size=4, save_interval=1)
        logger.close()
    assert l2sp.num_steps == 2
    assert sum("got no empirical loss" in str(w.message) for w in record) == 1  # once, not every step
