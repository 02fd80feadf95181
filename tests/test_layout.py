"""The library apart from the lab: what ``import paddle_dtnh`` loads; the 0.1
module paths are gone in 0.4."""

import importlib
import subprocess
import sys

import pytest



def test_importing_the_library_loads_no_harness_and_no_optional_package():
    probe = (
        "import sys, paddle\n"
        "before = set(sys.modules)\n"
        "import paddle_dtnh, paddle_dtnh.regularizers, paddle_dtnh.integrations\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out.strip().splitlines()[-1]))
    assert not loaded & {"lab", "tqdm", "matplotlib", "sklearn", "mlxtend", "paddlehub", "visualdl"}, loaded
    assert loaded <= {"paddle_dtnh"}, loaded  # nothing beyond what paddle itself imports


def test_the_regularizers_import_no_model_zoo():
    probe = ("import sys, paddle_dtnh.regularizers\n"
             "print('paddle_dtnh.models.architectures' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("old", ["paddle_dtnh.architectures", "paddle_dtnh.files", "paddle_dtnh.hub",
                                 "paddle_dtnh.hapi", "paddle_dtnh.visualdl", "paddle_dtnh.stats",
                                 "paddle_dtnh.presets", "paddle_dtnh.checkpoint", "paddle_dtnh.resnet_vd"])
def test_the_0_1_module_paths_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_the_0_1_names_are_gone():
    import paddle_dtnh
    import paddle_dtnh.projection
    import paddle_dtnh.rules

    assert not hasattr(paddle_dtnh, "RULES") and not hasattr(paddle_dtnh.projection, "RULES")
    assert not hasattr(paddle_dtnh.rules, "resolve_preset")
