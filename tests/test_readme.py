"""The README's quickstart runs as written (offline: pretrained weights are
replaced by random ones, the loader by two tiny batches)."""

import pathlib
import re

import paddle

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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
