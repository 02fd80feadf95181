import copy
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH, PRESETS, Rule, resolve_rule
from paddle_dtnh.regularizers import L2, L2SP, TransferRegularizer

OPTIMIZERS = {
    "SGD": lambda params: paddle.optimizer.SGD(0.1, parameters=params),
    "Momentum": lambda params: paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=params),
    "Adam": lambda params: paddle.optimizer.Adam(0.01, parameters=params),
    "AdamW": lambda params: paddle.optimizer.AdamW(0.01, parameters=params, weight_decay=0.01),
}


def make_net(seed=0):
    """Paddle keys optimizer state by generated parameter names; a fresh
    name scope gives every net the names a fresh process would."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        return paddle.nn.Sequential(
            paddle.nn.Linear(6, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 8), paddle.nn.ReLU(),
            paddle.nn.Linear(8, 3),
        )


def batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (paddle.to_tensor(rng.normal(size=(5, 6)).astype("float32")),
         paddle.to_tensor(rng.integers(0, 3, size=5)))
        for _ in range(n)
    ]


def perturbed_pair():
    """A source and a target that starts from it, moved so Omega is non-zero."""
    source, target = make_net(0), make_net(0)
    rng = np.random.default_rng(42)
    for p in target.parameters():
        p.set_value(p.numpy() + rng.normal(scale=0.05, size=p.shape).astype("float32"))
    return source, target


def weights(net):
    return [p.numpy().copy() for p in net.parameters()]


def assert_same(a, b, **kw):
    for x, y in zip(weights(a), weights(b)):
        np.testing.assert_allclose(x, y, **kw)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_lam_zero_matches_bare_optimizer_step_for_step(name, mode):
    source, net_a = perturbed_pair()
    net_b = copy.deepcopy(net_a)
    bare = OPTIMIZERS[name](net_a.parameters())
    reg = L2SP(net_b, source, alpha=0.5, beta=0.5, head=["4"])
    dtnh = DTNH(OPTIMIZERS[name](net_b.parameters()), reg, lam=0.0)
    for x, y in batches(4):
        F.cross_entropy(net_a(x), y).backward()
        bare.step()
        bare.clear_grad()
        loss = F.cross_entropy(net_b(x), y)
        if mode == "explicit":
            dtnh.update(loss)
        else:
            loss.backward()
            dtnh.step()
            dtnh.clear_grad()
        assert_same(net_a, net_b, rtol=0, atol=0)


class OutputDistill(TransferRegularizer):
    """A regularizer without closed form: squared distance of the logits."""

    def __init__(self, model):
        super().__init__()
        self._params = [p for p in model.parameters() if not p.stop_gradient]

    def regularized_parameters(self):
        return self._params

    def forward(self, logits, source_logits):
        return paddle.mean(paddle.sum((logits - source_logits) ** 2, axis=1))


@pytest.mark.parametrize("granularity", ["global", "layer"])
def test_explicit_and_hook_modes_give_the_same_update(granularity):
    source, net_a = perturbed_pair()
    for p in source.parameters():
        p.set_value(p + 0.3)
    net_b = copy.deepcopy(net_a)
    reg_a = L2SP(net_a, source, alpha=1.0, beta=0.1, head=["4"])
    reg_b = L2SP(net_b, source, alpha=1.0, beta=0.1, head=["4"])
    opt_a = DTNH(paddle.optimizer.Momentum(0.1, parameters=net_a.parameters()), reg_a, lam=2.0,
                 granularity=granularity)
    opt_b = DTNH(paddle.optimizer.Momentum(0.1, parameters=net_b.parameters()), reg_b, lam=2.0,
                 granularity=granularity)
    for x, y in batches(3):
        opt_a.update(F.cross_entropy(net_a(x), y))
        F.cross_entropy(net_b(x), y).backward()
        opt_b.step()
        opt_b.clear_grad()
        assert_same(net_a, net_b, rtol=1e-6, atol=1e-7)


def test_autograd_regularizer_in_both_modes():
    source, net_a = perturbed_pair()
    for p in source.parameters():
        p.set_value(p - 0.2)
    net_b = copy.deepcopy(net_a)
    opt_a = DTNH(paddle.optimizer.SGD(0.1, parameters=net_a.parameters()), OutputDistill(net_a), lam=1.0)
    reg_b = OutputDistill(net_b)
    opt_b = DTNH(paddle.optimizer.SGD(0.1, parameters=net_b.parameters()), reg_b, lam=1.0)
    for x, y in batches(3):
        with paddle.no_grad():
            src = source(x)
        logits = net_a(x)
        opt_a.update(F.cross_entropy(logits, y), opt_a.regularizer(logits, src))
        logits = net_b(x)
        opt_b.regularize(reg_b(logits, src))
        F.cross_entropy(logits, y).backward()
        opt_b.step()
        opt_b.clear_grad()
        assert_same(net_a, net_b, rtol=1e-6, atol=1e-7)


def test_sgd_update_is_the_dtnh_formula():
    """One SGD step moves the weights by -lr * d, with d computed in numpy."""
    source, net = perturbed_pair()
    x, y = batches(1)[0]
    params = list(net.parameters())
    # a source uphill of the data: L2-SP then pulls against the data's gradient
    for s, g in zip(source.parameters(), paddle.grad(F.cross_entropy(net(x), y), params)):
        s.set_value(s + 5.0 * g + 0.05 * paddle.randn(s.shape))
    reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
    lam, lr = 3.0, 0.1
    opt = DTNH(paddle.optimizer.SGD(lr, parameters=net.parameters()), reg, lam=lam, track_stats=True)
    gj = np.concatenate([g.numpy().ravel() for g in paddle.grad(F.cross_entropy(net(x), y), params)])
    by_id = {id(p): g.numpy() for p, g in zip(reg.regularized_parameters(), reg.closed_form_grads())}
    go = np.concatenate([by_id.get(id(p), np.zeros(p.shape, "float32")).ravel() for p in params])
    assert gj @ go < 0, "the test needs a conflicting pair"
    d = gj + lam * (go - (gj @ go) / (gj @ gj) * gj)
    before = np.concatenate([w.ravel() for w in weights(net)])
    stats = opt.update(F.cross_entropy(net(x), y))
    after = np.concatenate([w.ravel() for w in weights(net)])
    np.testing.assert_allclose((before - after) / lr, d, rtol=1e-4, atol=1e-6)
    assert float(stats["conflict"]) == 1.0
    assert d @ gj >= gj @ gj * (1 - 1e-6)
    assert all(p.grad is None for p in params)  # explicit mode leaves no stale grads


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_continues_in_lockstep(name, tmp_path):
    source, net_a = perturbed_pair()
    data = batches(6)

    def build(net):
        sched = paddle.optimizer.lr.StepDecay(0.05, step_size=2, gamma=0.5)
        inner = OPTIMIZERS[name](net.parameters())
        inner._learning_rate = sched
        reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
        return DTNH(inner, reg, lam=0.5, lam_decay=0.8, steps_per_epoch=2), sched

    def train(net, opt, sched, chunk):
        for x, y in chunk:
            opt.update(F.cross_entropy(net(x), y))
            sched.step()

    # Paddle names optimizer accumulators from a process-wide counter: each
    # "process" below gets the fresh name scope a new process would have
    with paddle.utils.unique_name.guard():
        opt_a, sched_a = build(net_a)
        train(net_a, opt_a, sched_a, data[:3])
    paddle.save(opt_a.state_dict(), str(tmp_path / "opt.pdopt"))
    paddle.save(net_a.state_dict(), str(tmp_path / "net.pdparams"))

    net_b = make_net(seed=42)  # different init, restored from the files
    net_b.set_state_dict(paddle.load(str(tmp_path / "net.pdparams")))
    with paddle.utils.unique_name.guard():
        opt_b, sched_b = build(net_b)
        opt_b.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
        assert opt_b.num_steps == 3 and opt_b.lam == pytest.approx(0.5 * 0.8)
        assert opt_b.get_lr() == pytest.approx(opt_a.get_lr())
        train(net_b, opt_b, sched_b, data[3:4])
    train(net_a, opt_a, sched_a, data[3:4])
    assert_same(net_a, net_b, rtol=0, atol=0)
    for batch in data[4:]:
        train(net_a, opt_a, sched_a, [batch])
        train(net_b, opt_b, sched_b, [batch])
        assert_same(net_a, net_b, rtol=0, atol=0)


def test_loads_a_checkpoint_of_the_bare_inner_optimizer():
    net_a, net_b = make_net(0), make_net(1)
    data = batches(5)

    def bare_step(x, y):
        F.cross_entropy(net_a(x), y).backward()
        bare.step()
        bare.clear_grad()

    with paddle.utils.unique_name.guard():  # see the round-trip test
        bare = paddle.optimizer.Adam(0.01, parameters=net_a.parameters())
        for x, y in data[:2]:
            bare_step(x, y)
    net_b.set_state_dict(net_a.state_dict())
    with paddle.utils.unique_name.guard():
        dtnh = DTNH(paddle.optimizer.Adam(0.01, parameters=net_b.parameters()), lam=0.0)
        dtnh.set_state_dict(bare.state_dict())
        dtnh.update(F.cross_entropy(net_b(data[2][0]), data[2][1]))
    bare_step(*data[2])
    assert_same(net_a, net_b, rtol=0, atol=0)
    for x, y in data[3:]:
        F.cross_entropy(net_a(x), y).backward()
        bare.step()
        bare.clear_grad()
        dtnh.update(F.cross_entropy(net_b(x), y))
        assert_same(net_a, net_b, rtol=0, atol=0)


def test_lam_decay_per_epoch():
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=2.0, lam_decay=0.5)
    assert opt.lam == 2.0
    opt.next_epoch()
    opt.next_epoch()
    assert opt.lam == 0.5
    counted = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=2.0, lam_decay=0.5,
                   steps_per_epoch=2)
    for x, y in batches(5):
        counted.update(F.cross_entropy(net(x), y))
    assert counted.epoch == 2 and counted.lam == 0.5
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        counted.next_epoch()


# -- non-finite gradients ----------------------------------------------------------

def adam_state(opt):
    return {k: v.numpy().copy() for k, v in opt.inner.state_dict().items()
            if isinstance(v, paddle.Tensor)}


@pytest.mark.parametrize("mode", ["explicit", "hook"])
def test_nonfinite_step_is_skipped_and_leaves_everything_unchanged(mode):
    source, net = perturbed_pair()
    reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
    opt = DTNH(paddle.optimizer.Adam(0.01, parameters=net.parameters()), reg, lam=1.0)
    (x, y), (x2, y2) = batches(2)
    opt.update(F.cross_entropy(net(x), y))
    before_w, before_s = weights(net), adam_state(opt)
    bad = F.cross_entropy(net(x2), y2) * float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "explicit":
            opt.update(bad)
        else:
            bad.backward()
            opt.step()
            opt.clear_grad()
    assert opt.skipped_steps == 1 and opt.num_steps == 1
    for a, b in zip(before_w, weights(net)):
        np.testing.assert_array_equal(a, b)
    after_s = adam_state(opt)
    assert before_s.keys() == after_s.keys()
    for k in before_s:
        np.testing.assert_array_equal(before_s[k], after_s[k])
    opt.update(F.cross_entropy(net(x2), y2))  # training goes on
    assert opt.num_steps == 2
    assert all(np.isfinite(w).all() for w in weights(net))


def test_nonfinite_raise_policy():
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, on_nonfinite="raise")
    x, y = batches(1)[0]
    before = weights(net)
    with pytest.raises(FloatingPointError, match="unchanged"):
        opt.update(F.cross_entropy(net(x), y) * float("inf"))
    for a, b in zip(before, weights(net)):
        np.testing.assert_array_equal(a, b)


# -- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -1.0}, "Invalid lam"),
        ({"lam": float("nan")}, "Invalid lam"),
        ({"lam": 1.0, "lam_decay": 0.0}, "Invalid lam_decay"),
        ({"lam": 1.0, "lam_decay": 1.5}, "Invalid lam_decay"),
        ({"lam": 1.0, "granularity": "tensor"}, "Invalid granularity: 'tensor'"),
        ({"lam": 1.0, "on_nonfinite": "ignore"}, "Invalid on_nonfinite"),
        ({"lam": 1.0, "steps_per_epoch": 0}, "Invalid steps_per_epoch"),
    ],
)
def test_invalid_settings(kwargs, match):
    _, net = perturbed_pair()
    with pytest.raises(ValueError, match=match):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), **kwargs)


def test_regularizer_over_parameters_the_optimizer_does_not_own():
    source, net = perturbed_pair()
    reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
    head_only = paddle.optimizer.SGD(0.1, parameters=net[4].parameters())
    with pytest.raises(ValueError, match="does not own"):
        DTNH(head_only, reg, lam=1.0)


def test_transfer_regularizer_as_weight_decay_is_rejected_and_l2decay_warns():
    source, net = perturbed_pair()
    reg = L2(net, alpha=1.0, beta=0.1, head=["4"])
    with pytest.raises(TypeError, match="bypasses DTNH"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters(), weight_decay=reg), reg, lam=1.0)
    with pytest.warns(UserWarning, match="after the DTNH projection"):
        DTNH(paddle.optimizer.Momentum(0.1, parameters=net.parameters(), weight_decay=1e-4), reg, lam=1.0)


def test_wrapping_twice_and_non_regularizer():
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0)
    with pytest.raises(TypeError, match="already wrapped"):
        DTNH(opt, lam=1.0)
    with pytest.raises(TypeError, match="TransferRegularizer"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lambda: 0, lam=1.0)


def test_autograd_regularizer_needs_its_value():
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), OutputDistill(net), lam=1.0)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match=r"opt.update\(loss, omega\)"):
        opt.update(F.cross_entropy(net(x), y))
    F.cross_entropy(net(x), y).backward()
    with pytest.raises(RuntimeError, match=r"without opt.regularize\(omega\), which OutputDistill needs"):
        opt.step()


def test_corrupt_state_dict():
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0)
    with pytest.raises(ValueError, match="Corrupt DTNH state_dict"):
        opt.set_state_dict({"dtnh": {"num_steps": 1}, "optimizer": {}})
    with pytest.raises(TypeError):
        opt.set_state_dict([1, 2])


def test_paddle_model_fit_uses_the_hook():
    """paddle.Model's train_batch steps exactly as a hand-written hook-mode loop."""
    source, net = perturbed_pair()
    by_hand = copy.deepcopy(net)
    opt = DTNH(paddle.optimizer.Momentum(0.05, parameters=net.parameters()),
               L2SP(net, source, alpha=1.0, beta=0.1, head=["4"]), lam=1.0)
    hand_opt = DTNH(paddle.optimizer.Momentum(0.05, parameters=by_hand.parameters()),
                    L2SP(by_hand, source, alpha=1.0, beta=0.1, head=["4"]), lam=1.0)
    model = paddle.Model(net)
    model.prepare(opt, paddle.nn.CrossEntropyLoss())
    for x, y in batches(3):
        model.train_batch([x], [y.unsqueeze(-1)])
        F.cross_entropy(by_hand(x), y).backward()
        hand_opt.step()
        hand_opt.clear_grad()
    assert opt.num_steps == 3
    assert_same(net, by_hand, rtol=1e-6, atol=1e-7)


# -- presets and the moving-average reference --------------------------------------

def test_presets():
    _, net = perturbed_pair()
    inner = lambda: paddle.optimizer.SGD(0.1, parameters=net.parameters())  # noqa: E731
    with pytest.raises(ValueError, match="Unknown preset 'fast'; expected one of 'paper', 'never_hurt'"):
        DTNH(inner(), lam=1.0, preset="fast")
    default = DTNH(inner(), lam=1.0)
    assert default.rule == Rule() == PRESETS["paper"]
    assert (default.granularity, default.rule.on_conflict, default.reference) == ("global", "project", "batch")
    held = lambda: (net(paddle.ones([2, 6])) ** 2).mean()  # noqa: E731
    for name, rule in PRESETS.items():
        holdout = held if rule.reference == "holdout" else None
        assert DTNH(inner(), lam=1.0, preset=name, holdout=holdout).rule == rule
        assert DTNH(inner(), lam=1.0, preset=rule, holdout=holdout).rule == rule  # a Rule is a preset too
    override = DTNH(inner(), lam=1.0, preset="never_hurt", granularity="coordinate")
    assert override.rule == PRESETS["never_hurt"].replace(granularity="coordinate")
    with pytest.raises(ValueError, match="Invalid reference: 'momentum'"):
        DTNH(inner(), lam=1.0, reference="momentum")
    with pytest.raises(ValueError, match="Invalid ema_decay"):
        DTNH(inner(), lam=1.0, reference="ema", ema_decay=1.0)
    with pytest.raises(ValueError, match="Invalid max_reg_ratio"):
        DTNH(inner(), lam=1.0, max_reg_ratio=-1.0)
    assert DTNH(inner(), lam=1.0, preset="never_hurt", max_reg_ratio=2).max_reg_ratio == 2.0


def test_a_preset_cap_can_be_switched_off():
    # 0.1 dropped None overrides, so never_hurt's cap could not be lifted
    _, net = perturbed_pair()
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, preset="never_hurt",
               max_reg_ratio=None)
    assert opt.max_reg_ratio is None and opt.rule.granularity == "layer"
    assert resolve_rule("never_hurt", max_reg_ratio=None) == PRESETS["never_hurt"].replace(max_reg_ratio=None)


def test_an_unregistered_rule_or_reference_is_refused_naming_the_registered_ones():
    """Names are checked against the registries when DTNH is built, not
    found missing at the first step."""
    _, net = perturbed_pair()
    inner = lambda: paddle.optimizer.SGD(0.1, parameters=net.parameters())  # noqa: E731
    with pytest.raises(ValueError, match="Invalid on_conflict: 'mask'; expected one of 'project', 'drop', 'ignore'"):
        DTNH(inner(), lam=1.0, on_conflict="mask")
    with pytest.raises(ValueError, match="Invalid reference: 'next'; expected one of 'batch', 'ema', 'holdout'"):
        DTNH(inner(), lam=1.0, reference="next")


def test_paper_preset_equals_the_default_step_for_step():
    source, net_a = perturbed_pair()
    net_b = copy.deepcopy(net_a)
    opts = [DTNH(paddle.optimizer.Momentum(0.1, parameters=n.parameters()),
                 L2SP(n, source, alpha=1.0, beta=0.1, head=["4"]), lam=2.0, **kw)
            for n, kw in ((net_a, {}), (net_b, {"preset": "paper"}))]
    for x, y in batches(3):
        for n, opt in zip((net_a, net_b), opts):
            opt.update(F.cross_entropy(n(x), y))
        assert_same(net_a, net_b, rtol=0, atol=0)


def test_ema_reference_resumes_bit_equal(tmp_path):
    source, net_a = perturbed_pair()
    data = batches(6)

    def build(net):
        reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
        return DTNH(paddle.optimizer.Adam(0.01, parameters=net.parameters()), reg, lam=1.0,
                    granularity="coordinate", reference="ema", ema_decay=0.8)

    opt_a = build(net_a)
    for x, y in data[:3]:
        opt_a.update(F.cross_entropy(net_a(x), y))
    paddle.save(opt_a.state_dict(), str(tmp_path / "opt.pdopt"))
    net_b = make_net(seed=7)
    net_b.set_state_dict(net_a.state_dict())
    opt_b = build(net_b)
    opt_b.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
    assert set(opt_b.state_dict()["dtnh"]["ema_scaled"]) == {n for n, p in net_b.named_parameters()}
    for x, y in data[3:]:
        opt_a.update(F.cross_entropy(net_a(x), y))
        opt_b.update(F.cross_entropy(net_b(x), y))
        assert_same(net_a, net_b, rtol=0, atol=0)


def test_a_0_4_0_moving_average_checkpoint_still_loads():
    """0.2-0.4.0 saved m itself under "ema"; it loads as M = m / (1 - beta) and
    the run goes on as the uninterrupted one (up to rounding)."""
    source, net_a = perturbed_pair()
    data = batches(5)

    def build(net):
        reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
        return DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), reg, lam=1.0,
                    preset="never_hurt", ema_decay=0.8)

    opt_a = build(net_a)
    for x, y in data[:2]:
        opt_a.update(F.cross_entropy(net_a(x), y))
    state = opt_a.state_dict()
    scaled = state["dtnh"].pop("ema_scaled")
    state["dtnh"]["ema"] = {n: t * 0.2 for n, t in scaled.items()}  # as 0.4.0 wrote it
    net_b = copy.deepcopy(net_a)
    opt_b = build(net_b)
    opt_b.set_state_dict(state)
    for name, t in opt_b.state_dict()["dtnh"]["ema_scaled"].items():
        np.testing.assert_allclose(t.numpy(), scaled[name].numpy(), rtol=1e-6)
    for x, y in data[2:]:
        opt_a.update(F.cross_entropy(net_a(x), y))
        opt_b.update(F.cross_entropy(net_b(x), y))
    assert_same(net_a, net_b, rtol=1e-5, atol=1e-7)


def test_ema_reference_follows_its_recurrence_and_restarts_after_a_skip():
    source, net = perturbed_pair()
    beta = 0.7
    reg = L2SP(net, source, alpha=1.0, beta=0.1, head=["4"])
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), reg, lam=1.0,
               preset="never_hurt", ema_decay=beta)
    names = [n for n, _ in net.named_parameters()]
    expected = None
    for step, (x, y) in enumerate(batches(5)):
        loss = F.cross_entropy(net(x), y)
        if step == 2:  # a non-finite batch: skipped, and the average restarts
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.update(loss * float("nan"))
            assert opt.skipped_steps == 1 and opt.state_dict()["dtnh"]["ema_scaled"] == {}
            expected = None
            continue
        g = [t.numpy() for t in paddle.grad(loss, net.parameters(), retain_graph=True)]
        expected = g if expected is None else [beta * m + (1 - beta) * gi for m, gi in zip(expected, g)]
        opt.update(loss)
        ema = opt.state.reference.average(names, net.parameters())
        held = opt.state_dict()["dtnh"]["ema_scaled"]  # M = m / (1 - beta), what the checkpoint keeps
        for name, m in zip(names, expected):
            np.testing.assert_allclose(ema[name].numpy(), m, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(held[name].numpy() * (1 - beta), m, rtol=1e-5, atol=1e-7)


def test_resuming_with_another_rule_warns_and_names_the_option():
    _, net = perturbed_pair()
    sgd = lambda: paddle.optimizer.SGD(0.1, parameters=net.parameters())  # noqa: E731
    saved = DTNH(sgd(), lam=1.0, on_conflict="drop").state_dict()
    with pytest.warns(UserWarning, match="on_conflict: saved 'drop', now 'project'"):
        DTNH(sgd(), lam=1.0).set_state_dict(saved)
    saved["dtnh"]["rule"] = saved["dtnh"].pop("on_conflict")  # as 0.1 named it
    with pytest.warns(UserWarning, match="on_conflict: saved 'drop', now 'project'"):
        DTNH(sgd(), lam=1.0).set_state_dict(saved)
