"""Module paths that moved in 0.2, kept importable for one release.

``import paddle_dtnh.files`` (and every other old path below) still works and
gives the very module at its new home, with a ``DeprecationWarning`` naming
it; 0.4 drops the old paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module path -> new module path (a moved package covers its submodules)
MOVED = {
    "paddle_dtnh.architectures": "paddle_dtnh.models.architectures",
    "paddle_dtnh.resnet_vd": "paddle_dtnh.models.resnet_vd",
    "paddle_dtnh.files": "paddle_dtnh.io.files",
    "paddle_dtnh.checkpoint": "paddle_dtnh.io.checkpoint",
    "paddle_dtnh.hub": "paddle_dtnh.integrations.hub",
    "paddle_dtnh.hapi": "paddle_dtnh.integrations.hapi",
    "paddle_dtnh.visualdl": "paddle_dtnh.integrations.visualdl",
    "paddle_dtnh.stats": "paddle_dtnh.diagnostics",
    "paddle_dtnh.presets": "paddle_dtnh.rules",
}


def new_home(fullname: str) -> str | None:
    """Where the module ``fullname`` lives now (None: it did not move)."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.new}; the old path goes in paddle_dtnh 0.4.",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass  # the module at its new home is already executed


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_home(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
