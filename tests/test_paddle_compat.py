"""One seam to Paddle: no module but paddle_dtnh/_paddle_compat.py touches a
private Paddle name: by attribute access, by name in getattr/setattr, by
``from paddle... import _private`` (or a private module on the way), or as
an inherited private attribute read through ``self`` in a subclass of a
Paddle class (``self._sub_layers`` in a ``paddle.nn.Layer``)."""

import ast
import pathlib

import paddle
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "paddle_dtnh"
SEAM = PACKAGE / "_paddle_compat.py"


def _package_files() -> list:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path != SEAM]


def _own_private_names(paths=None) -> set:
    """Private names the package defines itself (its functions, classes,
    attributes and module globals): reading those is not reading Paddle's."""
    names = set()
    for path in paths if paths is not None else _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "__setattr__" and node.args[1:]:
                if isinstance(node.args[1], ast.Constant):
                    names.add(node.args[1].value)
    return {n for n in names if isinstance(n, str) and n.startswith("_")}


def _paddle_private_names() -> set:
    """Private names that Paddle's optimizer, Tensor, GradScaler, Layer and Model classes carry."""
    objects = [paddle.optimizer.Optimizer, paddle.optimizer.Momentum, paddle.optimizer.Adam, paddle.Tensor,
               paddle.amp.GradScaler, paddle.nn.Layer, paddle.nn.BatchNorm2D, paddle.Model, paddle.CPUPlace]
    names = {n for obj in objects for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
    # instance attributes, set in __init__
    net = paddle.nn.BatchNorm2D(2)
    opt = paddle.optimizer.Momentum(0.1, parameters=net.parameters(), weight_decay=0.1)
    for obj in (net, opt, paddle.amp.GradScaler(enable=False), paddle.Model(net)):
        names |= {n for n in vars(obj) if n.startswith("_") and not n.startswith("__")}
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(path):
    """``from paddle... import _x`` and ``import paddle._x`` (a private module on the way counts)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "paddle":
            for part in node.module.split("."):
                if _private(part):
                    yield node.lineno, part
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "paddle":
                    for part in alias.name.split("."):
                        if _private(part):
                            yield node.lineno, part


def _names_from_paddle(tree) -> set:
    """Local names bound to Paddle: ``import paddle``, ``import paddle.nn as nn``, ``from paddle import nn``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "paddle"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "paddle":
            names |= {a.asname or a.name for a in node.names}
    return names


def _defined_in_class(cls) -> set:
    """Names a class body defines: methods, ``self.x = ...``, ``object.__setattr__(self, "x", ...)``."""
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            names.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "__setattr__", "setattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            names.add(node.args[1].value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node in cls.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _self_reads_in_paddle_subclasses(paths, paddles: set) -> list:
    """``self._x`` in a class deriving (here or through the package's own
    classes) from a Paddle class, where ``_x`` is a Paddle private name that
    neither the class nor its package ancestors define."""
    classes = {}  # name -> (ClassDef, path, bases named from Paddle?)
    for path in paths:
        tree = ast.parse(path.read_text())
        from_paddle = _names_from_paddle(tree)
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            roots = {ast.unparse(b).split(".")[0] for b in cls.bases}
            classes[cls.name] = (cls, path, bool(roots & from_paddle), [ast.unparse(b).split(".")[-1] for b in cls.bases])

    def lineage(name, seen=()):
        """(derives from Paddle?, names defined along the package's own ancestry)."""
        cls, _, paddle_base, bases = classes[name]
        defined, derived = _defined_in_class(cls), paddle_base
        for base in bases:
            if base in classes and base not in seen and base != name:
                base_derived, base_defined = lineage(base, seen + (name,))
                derived, defined = derived or base_derived, defined | base_defined
        return derived, defined

    found = []
    for name, (cls, path, _, _) in classes.items():
        derived, defined = lineage(name)
        if not derived:
            continue
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                    and _private(node.attr) and node.attr in paddles and node.attr not in defined):
                found.append((path, node.lineno, node.attr))
    return found


def _private_uses(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            yield node.lineno, node.attr
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                and node.args[1].value.startswith("_") and not node.args[1].value.startswith("__")):
            if not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls")):
                yield node.lineno, node.args[1].value


def _violations(paths, own: set, paddles: set) -> list:
    """Every private Paddle name the files at ``paths`` touch, as ``path:line: name``."""
    found = []
    for path in paths:
        for line, name in _private_uses(path):
            # a Paddle private name, or a private name the package never defines (so someone else's)
            if name in paddles or name not in own:
                found.append((path, line, name))
        found += [(path, line, name) for line, name in _private_imports(path)]
    found += _self_reads_in_paddle_subclasses(paths, paddles)
    return sorted(f"{path.name}:{line}: {name}" for path, line, name in found)


def test_only_the_compat_module_touches_private_paddle_names():
    paths = _package_files()
    found = _violations(paths, _own_private_names(paths), _paddle_private_names())
    assert not found, "private Paddle names outside paddle_dtnh/_paddle_compat.py:\n" + "\n".join(found)


PLANTED = """\
import paddle
from paddle import nn
from paddle.nn.layer.norm import _BatchNormBase, BatchNorm2D
from paddle.base import core as _core_alias_is_fine_the_module_is_public
import paddle.nn.functional as F


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self._mine = 1

    def forward(self, x):
        return len(self._sub_layers) + self._mine


class Deeper(Net):
    def count(self):
        return len(self._parameters) + self._mine


class Plain:
    def __init__(self):
        self._helper = None

    def count(self):
        return self._sub_layers, self._helper
"""


def test_the_check_flags_a_planted_private_import_and_self_reads(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    found = _violations([planted], _own_private_names([planted]), _paddle_private_names())
    assert set(found) == {"planted.py:3: _BatchNormBase", "planted.py:14: _sub_layers", "planted.py:19: _parameters"}


def test_the_check_flags_a_private_paddle_module(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import paddle._C_ops\nfrom paddle._C_ops import full\nfrom paddle.base import core\n")
    assert [name for _, name in _private_imports(planted)] == ["_C_ops", "_C_ops"]


def test_the_check_would_see_a_private_access():
    sample = PACKAGE.parent / "tests" / "_private_access_sample.py"
    sample.write_text("def f(opt, p):\n    return opt._accumulators, getattr(p, '_grad_ivar')\n")
    try:
        assert [name for _, name in _private_uses(sample)] == ["_accumulators", "_grad_ivar"]
        assert {"_accumulators", "_grad_ivar"} <= _paddle_private_names()
    finally:
        sample.unlink()


# -- the version seam ------------------------------------------------------------------
def test_release_reads_major_and_minor_and_a_develop_build_is_newest():
    from paddle_dtnh._paddle_compat import release

    assert release("2.6.2") == (2, 6) and release("3.3.1") == (3, 3) and release("3.0.0b2") == (3, 0)
    assert release("0.0.0") > release("3.3.1")


def test_an_older_paddle_is_refused_at_import_with_the_fix():
    from paddle_dtnh._paddle_compat import check_paddle_version

    check_paddle_version("2.6.0")
    check_paddle_version("3.3.1")
    with pytest.raises(ImportError, match=r"needs PaddlePaddle >= 2\.6, but Paddle 2\.5\.2 .*pip install"):
        check_paddle_version("2.5.2")


def test_a_feature_for_a_newer_paddle_raises_the_named_error():
    from paddle_dtnh import PaddleVersionError
    from paddle_dtnh._paddle_compat import PADDLE_VERSION, require_paddle

    require_paddle((2, 6), "anything")
    with pytest.raises(PaddleVersionError, match=r"Frobnication needs PaddlePaddle >= 99\.1; .*pip install"):
        require_paddle((99, 1), "Frobnication")
    assert PADDLE_VERSION >= (2, 6)


def test_full_on_creates_on_the_place_with_the_dtype():
    from paddle_dtnh._paddle_compat import full_on

    like = paddle.ones([3], dtype="float64")
    for place in (like.place, None):
        t = full_on(place, 2.5, "float64")
        assert t.shape == [] and t.dtype == paddle.float64 and float(t) == 2.5 and t.stop_gradient
    flag = full_on(like.place, True, "bool")
    assert flag.dtype == paddle.bool and bool(flag)
    assert full_on(like.place, 1.0, like.dtype, shape=[2]).shape == [2]


def test_layer_to_arguments_passes_only_what_was_given_in_this_paddles_terms():
    from paddle_dtnh._paddle_compat import PADDLE_3, layer_to_arguments

    assert layer_to_arguments() == {}
    assert layer_to_arguments(dtype="float64") == {"dtype": "float64"}
    expected = {"non_blocking": True} if PADDLE_3 else {"blocking": False}
    assert layer_to_arguments(non_blocking=True) == expected
    paddle.nn.Linear(2, 2).to(**layer_to_arguments(device="cpu", non_blocking=True))


def test_a_freed_graph_is_recognised_by_paddles_words():
    from paddle_dtnh._paddle_compat import is_freed_graph_error

    x = paddle.ones([2])
    x.stop_gradient = False
    y = (x * x).sum()
    y.backward()
    try:
        y.backward()
    except (RuntimeError, SystemError) as err:
        assert is_freed_graph_error(err)
    else:
        raise AssertionError("a second backward() through a freed graph did not raise")
    assert not is_freed_graph_error(RuntimeError("something else"))


@pytest.mark.paddle3(reason="proves the marker: on Paddle 2.6 this test fails unless it is skipped")
def test_the_paddle3_marker_skips_on_paddle_2_6():
    from paddle_dtnh._paddle_compat import PADDLE_3

    assert PADDLE_3
