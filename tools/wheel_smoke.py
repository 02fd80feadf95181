"""Run from an empty directory with a paddle_dtnh installed from its wheel:
the README quickstart as written (offline: random weights instead of the
ImageNet download, two tiny batches as the loader) and the shipped PaddleHub
module loaded from site-packages. Nothing here may come from the source tree.

    python tools/wheel_smoke.py README.md    # what `make wheel-check` runs
"""

import os
import re
import shutil
import sys
import tempfile


def main(readme: str) -> None:
    import paddle

    import paddle_dtnh

    here = os.path.dirname(os.path.abspath(paddle_dtnh.__file__))
    if "site-packages" not in here:
        sys.exit(f"paddle_dtnh was imported from {here}, not from an installed wheel.")
    print(f"paddle_dtnh {paddle_dtnh.__version__} from {here}")

    code = re.search(r"```python\n(.*?)```", open(readme, encoding="utf-8").read().split("## Quickstart", 1)[1],
                     re.S).group(1)
    real = paddle.vision.models.resnet18
    paddle.vision.models.resnet18 = lambda pretrained=False, **kw: real(pretrained=False, **kw)
    scope = {"train_loader": [(paddle.randn([2, 3, 32, 32]), paddle.to_tensor([1, 7])) for _ in range(2)]}
    exec(compile(code, readme, "exec"), scope)
    assert scope["opt"].num_steps == 2, scope["opt"].num_steps
    print("README quickstart: 2 steps, preset", scope["opt"].preset, "->", scope["opt"].rule)

    import paddlehub as hub

    from paddle_dtnh.integrations.hub import MODULE_DIR
    from paddle_dtnh.models.resnet_vd import WEIGHTS_FILE, ResNet18VD

    module_dir = os.path.join(tempfile.mkdtemp(), "resnet18_vd_dtnh")
    shutil.copytree(MODULE_DIR, module_dir)  # the shipped module, with an ImageNet-like file beside it
    paddle.save(ResNet18VD(num_classes=1000).state_dict(), os.path.join(module_dir, WEIGHTS_FILE))
    module = hub.Module(directory=module_dir, label_list=["a", "b", "c"])
    logits, _ = module(paddle.randn([2, 3, 32, 32]))
    assert logits.shape == [2, 3]
    print("PaddleHub module resnet18_vd_dtnh: loaded from", MODULE_DIR)

    import subprocess

    command = os.path.join(os.path.dirname(sys.executable), "paddle-dtnh")
    shown = subprocess.run([command, "fit", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--weights" in shown, shown
    print("console script paddle-dtnh:", command)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
