"""The rule family is open: a conflict rule and a reference written outside
the package, registered, run through both loops against a NumPy oracle.

The rule, ``"cosine_scale"``: per block b (granularity "layer": one tensor),
keep the share of the pull that agrees with the reference,

    gO'_b = max(cos(r_b, gO_b), 0) * gO_b

(so <gO'_b, r_b> >= 0, the family's guarantee). The reference,
``"previous_gj"``: r = gJ of the previous applied step (its state: that gJ,
saved in the checkpoint); the first step, or the first after a skip, falls
back to this batch's gJ. SGD with lr 1 moves the weights by exactly -d.
"""

import copy

import numpy as np
import paddle
import pytest

from paddle_dtnh import DTNH, Rule
from paddle_dtnh.conflict import ConflictRule, KeptPull
from paddle_dtnh.references import REFERENCES, PerParameterReference, register_reference
from paddle_dtnh.regularizers import L2SP
from paddle_dtnh.rules import ON_CONFLICT, register_conflict_rule
from tests.helpers import dtnh_step

LAM, ALPHA = 0.7, 1.0


# -- written outside the package: a module of the user's ------------------------
class CosineScale(ConflictRule):
    granularities = ("global", "layer")  # per coordinate a cosine is a sign: that is "drop"

    def kept_pull(self, inputs):
        ro, rr, oo = (inputs.blocks(t) for t in (inputs.ro, inputs.rr, inputs.oo))
        cos = ro / paddle.sqrt(paddle.clip(rr * oo, min=1e-30))
        return KeptPull(keep=paddle.clip(cos, min=0.0))


class PreviousGradient(PerParameterReference):
    key = "previous_gj"
    label = "previous gJ"

    def get(self, params, task_grads, step):
        # copies: the step writes the direction into task_grads afterwards
        now = [None if g is None else g.detach().clone() for g in task_grads]
        reference = [self._held.get(id(p), g) for p, g in zip(params, now)]
        self._held = {id(p): g for p, g in zip(params, now) if g is not None}
        return reference


if "cosine_scale" not in ON_CONFLICT:
    register_conflict_rule("cosine_scale", CosineScale())
if "previous_gj" not in REFERENCES:
    register_reference("previous_gj", lambda rule, **_: PreviousGradient())

RULE = Rule(granularity="layer", on_conflict="cosine_scale", reference="previous_gj")


# -- the oracle ---------------------------------------------------------------
def task_grad(w, b, x, y):
    """gJ of the mean cross-entropy of logits = x w + b, in float64."""
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dl = (p - np.eye(w.shape[1])[y]) / len(y)
    return [x.T @ dl, dl.sum(0)]


def oracle(params, source, batches):
    """The weights after each step, and each step's keep factors and share removed."""
    params = [p.astype("float64") for p in params]
    previous, trail = None, []
    for x, y in batches:
        gj = task_grad(*params, x.astype("float64"), y)
        go = [ALPHA * (p - s) for p, s in zip(params, source)]
        ref = gj if previous is None else previous
        keep = [max(float(np.sum(r * o)) / np.sqrt(np.sum(r * r) * np.sum(o * o)), 0.0) for r, o in zip(ref, go)]
        params = [p - (j + LAM * k * o) for p, j, k, o in zip(params, gj, keep, go)]
        removed = np.sqrt(sum((1 - k) ** 2 * np.sum(o * o) for k, o in zip(keep, go)) / sum(np.sum(o * o) for o in go))
        trail.append(([p.copy() for p in params], keep, removed))
        previous = gj
    return trail


def setup(**options):
    paddle.seed(0)
    source = paddle.nn.Linear(4, 3)
    model = paddle.nn.Linear(4, 3)
    model.set_state_dict(source.state_dict())
    with paddle.no_grad():  # start away from the source, so the pull is not zero
        for p in model.parameters():
            p.set_value(p + 0.15 * paddle.randn(p.shape))
    reg = L2SP(model, source, alpha=ALPHA, beta=0.0, weights_only=False)
    opt = DTNH(paddle.optimizer.SGD(1.0, parameters=model.parameters()), reg, lam=LAM, preset=RULE, **options)
    start = [p.numpy().copy() for p in model.parameters()]
    return model, reg, opt, start, [p.numpy().copy() for p in source.parameters()]


def batches(n=4):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 4)).astype("float32"), rng.integers(0, 3, 8)) for _ in range(n)]


def one_step(opt, reg, x, y, mode):
    assert opt.regularizer is reg
    return dtnh_step(opt, paddle.to_tensor(x), paddle.to_tensor(y), mode)


@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_a_registered_rule_and_reference_run_both_loops_as_the_oracle_says(mode):
    model, reg, opt, start, source = setup(track_stats=True)
    data = batches()
    trail = oracle(start, source, data)
    keeps = [k for _, step_keeps, _ in trail for k in step_keeps]
    assert min(keeps) == 0.0 and any(0.0 < k < 1.0 for k in keeps)  # both sides of the rule are exercised
    for (x, y), (weights, _, removed) in zip(data, trail):
        stats = one_step(opt, reg, x, y, mode)
        for p, expected in zip(model.parameters(), weights):
            np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5, atol=1e-6)
        # the diagnostics come from the rule's KeptPull, with no code of its own
        np.testing.assert_allclose(float(stats["reg_removed"]), removed, rtol=1e-4)
    assert opt.num_steps == len(data) and opt.rule.on_conflict == "cosine_scale"


def test_the_reference_state_resumes_bit_equal_and_is_checked():
    model_a, reg_a, opt_a, _, _ = setup()
    data = batches()
    for x, y in data[:2]:
        one_step(opt_a, reg_a, x, y, "explicit")
    state = copy.deepcopy(opt_a.state_dict())
    assert set(state["dtnh"]["previous_gj"]) == {"weight", "bias"}
    weights = {k: v.numpy().copy() for k, v in model_a.state_dict().items()}
    for x, y in data[2:]:
        one_step(opt_a, reg_a, x, y, "explicit")

    model_b, reg_b, opt_b, _, _ = setup()
    model_b.set_state_dict(weights)
    opt_b.set_state_dict(state)
    for x, y in data[2:]:
        one_step(opt_b, reg_b, x, y, "explicit")
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    bad = copy.deepcopy(state)
    bad["dtnh"]["previous_gj"]["weight"] = np.zeros([2, 2], "float32")
    with pytest.raises(ValueError, match="previous gJ: weight"):
        opt_b.check_state_dict(bad)


def test_names_are_checked_against_the_registries():
    with pytest.raises(ValueError, match="Invalid on_conflict: 'cosine'; expected one of .*'cosine_scale'"):
        Rule(on_conflict="cosine")
    with pytest.raises(ValueError, match="Invalid reference: 'previous'; expected one of .*'previous_gj'"):
        Rule(reference="previous")
    with pytest.raises(ValueError, match="supports granularity 'global', 'layer', not 'coordinate'"):
        Rule(granularity="coordinate", on_conflict="cosine_scale")
    with pytest.raises(ValueError, match="ema_decay is read by reference='ema' only"):
        RULE.replace(ema_decay=0.5)
    with pytest.raises(ValueError, match="already registered"):
        register_conflict_rule("cosine_scale", CosineScale())
    with pytest.raises(TypeError, match="ConflictRule subclass"):
        register_conflict_rule("a_function", lambda inputs: None)
    with pytest.raises(ValueError, match="no reference option"):
        register_reference("needs_lr", lambda rule, **_: PreviousGradient(), reads=("lr",))


def test_the_docs_example_registers_the_same_rule_and_reference():
    """docs/rules.md's block, run as written (its names suffixed: this module
    registered the originals), steps exactly as this module's classes do."""
    import pathlib
    import re

    import paddle_dtnh.conflict
    import paddle_dtnh.references

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text(encoding="utf-8")
    block = re.search(r"## Writing a rule.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(block.splitlines()) < 30
    for name in ("cosine_scale", "previous_gj"):
        block = block.replace(f'"{name}"', f'"{name}_doc"')
    block = block.replace("lam=1.0", f"lam={LAM}")
    model_a, reg_a, opt_a, _, _ = setup()
    model_b, reg_b, _, _, _ = setup()
    scope = {"inner": paddle.optimizer.SGD(1.0, parameters=model_b.parameters()), "reg": reg_b}
    try:
        exec(compile(block, "docs/rules.md", "exec"), scope)
        opt_b = scope["opt"]
        assert opt_b.rule == RULE.replace(on_conflict="cosine_scale_doc", reference="previous_gj_doc")
        for x, y in batches(3):
            one_step(opt_a, reg_a, x, y, "explicit")
            one_step(opt_b, reg_b, x, y, "explicit")
    finally:  # the registries are module state: leave them as this module found them
        paddle_dtnh.conflict._REGISTERED.pop("cosine_scale_doc", None)
        paddle_dtnh.references._REGISTERED.pop("previous_gj_doc", None)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
