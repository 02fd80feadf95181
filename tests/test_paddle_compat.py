"""One seam to Paddle: no module but paddle_dtnh/_paddle_compat.py touches a
private Paddle attribute (by attribute access or by name in getattr/setattr)."""

import ast
import pathlib

import paddle

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "paddle_dtnh"
SEAM = PACKAGE / "_paddle_compat.py"


def _own_private_names() -> set:
    """Private names the package defines itself (its functions, classes,
    attributes and module globals): reading those is not reading Paddle's."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if path == SEAM:
            continue
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


def test_only_the_compat_module_touches_private_paddle_names():
    own, paddles = _own_private_names(), _paddle_private_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == SEAM:
            continue
        for line, name in _private_uses(path):
            # a Paddle private name, or a private name the package never defines (so someone else's)
            if name in paddles or name not in own:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert not found, "private Paddle names outside paddle_dtnh/_paddle_compat.py:\n" + "\n".join(found)


def test_the_check_would_see_a_private_access():
    sample = PACKAGE.parent / "tests" / "_private_access_sample.py"
    sample.write_text("def f(opt, p):\n    return opt._accumulators, getattr(p, '_grad_ivar')\n")
    try:
        assert [name for _, name in _private_uses(sample)] == ["_accumulators", "_grad_ivar"]
        assert {"_accumulators", "_grad_ivar"} <= _paddle_private_names()
    finally:
        sample.unlink()
