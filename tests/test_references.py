"""The held-out reference: conflicts judged against the gradient of the loss
on data the step does not train on (paddle_dtnh.references)."""

import copy

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH, Rule
from paddle_dtnh.references import HoldoutReference, MovingAverage, frozen_batch_norm, make_reference
from tests.test_contract import build, flat, pair
from tests.helpers import dtnh_step
from tests.test_gpu_readiness import watch


def setup(kind="L2SP", lr=1.0, every=1, on_conflict="drop", granularity="layer", **kw):
    paddle.seed(0)
    source, model = pair()
    reg = build(kind, model, source)
    rng = np.random.default_rng(7)
    x_held = paddle.to_tensor(rng.normal(size=(5, 2, 5, 5)).astype(paddle.get_default_dtype()))
    y_held = paddle.to_tensor(rng.integers(0, 3, size=5))
    calls = []

    def holdout():
        calls.append(1)
        return F.cross_entropy(model(x_held), y_held)

    opt = DTNH(paddle.optimizer.SGD(lr, parameters=model.parameters()), reg, lam=3.0,
               preset=Rule(granularity=granularity, on_conflict=on_conflict, reference="holdout",
                           holdout_every=every), holdout=holdout, **kw)
    return model, reg, opt, holdout, calls


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return (paddle.to_tensor(rng.normal(size=(4, 2, 5, 5)).astype(paddle.get_default_dtype())),
            paddle.to_tensor(rng.integers(0, 3, size=4)))


@pytest.mark.parametrize("kind", ["L2SP", "KnowDist"])
@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_layer_drop_against_the_held_out_gradient_by_hand(kind, mode, float64):
    model, reg, opt, holdout, _ = setup(kind)
    params = list(model.parameters())
    x, y = batch()
    r = paddle.grad(holdout(), params)  # the held-out gradient at the step's weights
    out, omega = reg.run(x)
    gj = paddle.grad(F.cross_entropy(out, y), params, retain_graph=True)
    go = paddle.grad(omega, params, allow_unused=True)
    expected = np.concatenate([
        (j.numpy() + (0.0 if o is None or float(paddle.sum(ri * o)) < 0 else 3.0 * o.numpy())).ravel()
        for j, o, ri in zip(gj, go, r)])
    assert any(o is not None and float(paddle.sum(ri * o)) < 0 for o, ri in zip(go, r))  # a drop happens
    before = flat(params, params)
    dtnh_step(opt, x, y, mode)
    np.testing.assert_allclose(before - flat(params, params), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("granularity", ["global", "layer", "coordinate"])
@pytest.mark.parametrize("on_conflict", ["project", "drop"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_step_lowers_the_held_out_loss_at_least_as_fine_tuning_does(granularity, on_conflict, seed, float64):
    """<d, r> >= <gJ, r> for the held-out gradient r, every rule."""
    model, reg, opt, holdout, _ = setup("KnowDist", granularity=granularity, on_conflict=on_conflict)
    params = list(model.parameters())
    x, y = batch(seed)
    r = flat(paddle.grad(holdout(), params), params)
    out, _ = reg.run(x)
    gj = flat(paddle.grad(F.cross_entropy(out, y), params), params)
    before = flat(params, params)
    out, omega = reg.run(x)
    opt.update(F.cross_entropy(out, y), omega)
    d = before - flat(params, params)
    assert d @ r >= gj @ r - 1e-9 * (1 + abs(gj @ r))


def test_the_held_out_gradient_is_refreshed_every_k_steps_and_kept_between():
    model, reg, opt, _, calls = setup(every=3)
    for step in range(7):
        x, y = batch(step)
        out, omega = reg.run(x)
        opt.update(F.cross_entropy(out, y), omega)
    assert len(calls) == 3  # steps 1, 4, 7
    assert opt.num_steps == 7


def test_the_held_out_forward_leaves_batch_norm_statistics_alone():
    net = paddle.nn.Sequential(paddle.nn.Conv2D(2, 3, 3), paddle.nn.BatchNorm2D(3), paddle.nn.Flatten(),
                               paddle.nn.Linear(27, 3))
    stats = [t.numpy().copy() for n, t in net.state_dict().items() if "_mean" in n or "_variance" in n]
    x = paddle.randn([4, 2, 5, 5]) + 3.0
    reference = HoldoutReference(lambda: F.cross_entropy(net(x), paddle.to_tensor([0, 1, 2, 0])), model=net)
    trainable = [p for p in net.parameters() if not p.stop_gradient]  # the running stats are parameters too
    held = reference.get(trainable, [None] * len(trainable), 1)
    assert all(g is not None for g in held)
    after = [t.numpy() for n, t in net.state_dict().items() if "_mean" in n or "_variance" in n]
    for a, b in zip(stats, after):
        np.testing.assert_array_equal(a, b)
    with frozen_batch_norm(None):  # no model: nothing to protect, nothing fails
        pass


def test_holdout_arguments_are_checked():
    source, model = pair()
    reg = build("L2SP", model, source)
    sgd = lambda: paddle.optimizer.SGD(0.1, parameters=model.parameters())  # noqa: E731
    with pytest.raises(ValueError, match="reference='holdout' needs holdout=fn"):
        DTNH(sgd(), reg, lam=1.0, reference="holdout")
    with pytest.raises(ValueError, match="holdout= was given but the rule's reference is 'batch'"):
        DTNH(sgd(), reg, lam=1.0, holdout=lambda: None)
    with pytest.raises(TypeError, match="zero-argument callable"):
        DTNH(sgd(), reg, lam=1.0, reference="holdout", holdout=3)
    x, y = batch()
    for fn, error, match in [(lambda: paddle.ones([2]), TypeError, "scalar Tensor"),
                             (lambda: paddle.to_tensor(1.0), ValueError, "no gradient path"),
                             (lambda: (paddle.nn.Linear(2, 2).weight ** 2).sum(), ValueError, "none of the")]:
        opt = DTNH(sgd(), reg, lam=1.0, reference="holdout", holdout=fn)
        out, omega = reg.run(x)
        with pytest.raises(error, match=match):
            opt.update(F.cross_entropy(out, y), omega)
    with pytest.raises(ValueError, match="Invalid holdout_every"):
        Rule(reference="holdout", holdout_every=0)


def test_a_holdout_rule_without_holdout_uses_its_fallback_with_a_warning():
    fallback = Rule(granularity="layer", on_conflict="drop", reference="ema", max_reg_ratio=1.0)
    rule = Rule(granularity="layer", on_conflict="drop", reference="holdout", holdout_every=8, fallback=fallback)
    steps = []
    for preset, expect_warning in [(rule, True), (fallback, False)]:
        paddle.seed(0)
        source, model = pair()
        reg = build("L2SP", model, source)
        sgd = paddle.optimizer.SGD(0.5, parameters=model.parameters())
        if expect_warning:
            with pytest.warns(UserWarning, match="no holdout= was given: using its fallback"):
                opt = DTNH(sgd, reg, lam=3.0, preset=preset)
        else:
            opt = DTNH(sgd, reg, lam=3.0, preset=preset)
        assert opt.rule == fallback
        for s in range(3):
            dtnh_step(opt, *batch(s), "explicit")
        steps.append(flat(list(model.parameters()), list(model.parameters())))
    np.testing.assert_array_equal(*steps)  # the fallback is exactly the fallback rule
    source, model = pair()
    reg = build("L2SP", model, source)
    given = DTNH(paddle.optimizer.SGD(0.5, parameters=model.parameters()), reg, lam=3.0, preset=rule,
                 holdout=lambda: F.cross_entropy(model(batch()[0]), batch()[1]))
    assert given.rule == rule  # with a held-out loss the rule is used as it is


def test_a_fallback_is_checked_and_kept_out_of_the_options_without_one():
    with pytest.raises(ValueError, match="only for reference='holdout'"):
        Rule(fallback=Rule())
    with pytest.raises(ValueError, match="whose reference is not 'holdout'"):
        Rule(reference="holdout", fallback=Rule(reference="holdout"))
    assert "fallback" not in Rule().as_dict()  # stored runs and saved states keep their keys
    nested = Rule(reference="holdout", fallback=Rule(reference="ema")).as_dict()
    assert nested["fallback"]["reference"] == "ema"


def test_make_reference_picks_one_object_per_rule():
    assert isinstance(make_reference(Rule(reference="ema", on_conflict="drop")), MovingAverage)
    assert make_reference(Rule()).get([], [], 1) is None


def test_a_resumed_holdout_run_continues_bit_equal():
    model_a, reg_a, opt_a, _, _ = setup(every=3)
    data = [batch(s) for s in range(6)]
    for x, y in data[:2]:
        out, omega = reg_a.run(x)
        opt_a.update(F.cross_entropy(out, y), omega)
    state, weights = copy.deepcopy(opt_a.state_dict()), {k: v.numpy().copy() for k, v in model_a.state_dict().items()}
    assert "holdout" in state["dtnh"] and state["dtnh"]["holdout_refreshed_at"] == 1
    for x, y in data[2:]:
        out, omega = reg_a.run(x)
        opt_a.update(F.cross_entropy(out, y), omega)
    model_b, reg_b, opt_b, _, calls_b = setup(every=3)
    model_b.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    opt_b.set_state_dict(state)
    for x, y in data[2:]:
        out, omega = reg_b.run(x)
        opt_b.update(F.cross_entropy(out, y), omega)
    assert len(calls_b) == 1  # step 3 used the saved gradient, step 4 refreshed
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("mode", ["explicit", "hook"])
@pytest.mark.parametrize("every", [1, 2])
def test_a_holdout_step_makes_one_host_round_trip(mode, every):
    model, reg, opt, _, _ = setup("KnowDist", lr=0.01, every=every)
    for step in range(2):
        x, y = batch(step)
        with watch() as seen:
            dtnh_step(opt, x, y, mode)
        assert seen["round_trips"] == ["__bool__"], seen["round_trips"]
        assert not seen["placeless"] and seen["to_tensor"] == 0
