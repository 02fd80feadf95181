"""The library apart from the lab: what ``import paddle_dtnh`` loads, and the
0.1 module paths kept for one release."""

import importlib
import subprocess
import sys
import warnings

import pytest

from paddle_dtnh._moved import MOVED


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


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_module_still_imports_with_a_warning(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)
