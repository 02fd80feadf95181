"""The README's quickstart runs as written (offline: pretrained weights are
replaced by random ones, the loader by two tiny batches)."""

import pathlib
import re

import paddle

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PADDLEHUB_DOC = ROOT / "docs" / "paddlehub.md"


def quickstart_code():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    return code


def test_quickstart_runs(monkeypatch):
    real = paddle.vision.models.resnet18

    def offline_resnet18(pretrained=False, **kwargs):
        return real(pretrained=False, **kwargs)

    monkeypatch.setattr(paddle.vision.models, "resnet18", offline_resnet18)
    loader = [(paddle.randn([2, 3, 32, 32]), paddle.to_tensor([1, 7])) for _ in range(2)]
    scope = {"train_loader": loader}

    exec(compile(quickstart_code(), str(README), "exec"), scope)
    opt = scope["opt"]
    assert opt.num_steps == 2 and opt.skipped_steps == 0
    assert scope["reg"].regularized_names()[-1] == "fc.weight"
    assert float(scope["reg"]()) > 0  # the weights moved away from the source


def readme_block(heading_text, document=PADDLEHUB_DOC):
    """The first python block after ``heading_text`` in ``document``."""
    section = document.read_text(encoding="utf-8").split(heading_text, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_hub_trainer_recipe_runs_as_written(tmp_path, monkeypatch):
    """Offline: PaddleHub's ImageNet file is one the test writes into a
    PaddleHub home, and the image folders are tiny."""
    import numpy as np
    import paddlehub.env
    from PIL import Image

    from paddle_dtnh.models.resnet_vd import WEIGHTS_FILE, ResNet18VD

    home = tmp_path / "hub_home"
    (home / "resnet18_vd_imagenet").mkdir(parents=True)
    paddle.seed(3)
    imagenet = ResNet18VD(num_classes=1000).state_dict()
    paddle.save(imagenet, str(home / "resnet18_vd_imagenet" / WEIGHTS_FILE))
    monkeypatch.setattr(paddlehub.env, "MODULE_HOME", str(home))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)

    scope = {}
    exec(compile(readme_block("**A hub.Trainer recipe**"), str(README), "exec"), scope)
    scope["logger"].close()
    module, opt = scope["module"], scope["opt"]
    assert opt.num_steps == 10  # one batch per epoch, ten epochs
    # the module started from PaddleHub's downloaded file, like the source did
    assert len(module.load_report.loaded) == 115 and set(module.load_report.not_loaded) == {"out.weight", "out.bias"}
    np.testing.assert_array_equal(scope["source"].conv1_1._conv.weight.numpy(),
                                  imagenet["conv1_1._conv.weight"].numpy())
    assert (tmp_path / "ckpt" / "epoch_10" / "model.pdparams").exists()
    assert list((tmp_path / "ckpt" / "visualization" / "dtnh").glob("vdlrecords.*"))
    assert module.predict([np.zeros((20, 20, 3), np.uint8)], top_k=2)[0].keys() == {"cat", "dog"}
    assert list((tmp_path / "infer").glob("resnet18_vd_dtnh.pdiparams"))  # the recipe's last step


def test_the_readme_is_a_product_page_of_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, len(lines)
    for doc in ("rules.md", "evidence.md", "performance.md", "reliability.md", "paddlehub.md", "api.md"):
        assert f"docs/{doc}" in README.read_text(encoding="utf-8"), doc
        assert (ROOT / "docs" / doc).is_file()
