"""The defects a review of 0.3 found, each pinned by a test that failed on 0.3."""

import logging

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH, PRESETS, Rule
from paddle_dtnh.regularizers import L2SP, KnowDist
from tests.test_hook_mode import forced_scaler


# -- a resumed multi_precision run continues bit-equal ---------------------------------
def _bf16_run(steps, state=None):
    """SGD(multi_precision) over bfloat16 parameters under a forced GradScaler."""
    paddle.seed(0)
    net = paddle.nn.Linear(4, 3)
    net.to(dtype="bfloat16")
    opt = DTNH(paddle.optimizer.SGD(0.5, parameters=net.parameters(), multi_precision=True), lam=0.0, model=net)
    scaler = forced_scaler(init_loss_scaling=256.0)
    if state is not None:
        net.set_state_dict(state["model"])
        opt.set_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    for seed in steps:
        rng = np.random.default_rng(seed)
        x = paddle.to_tensor(rng.standard_normal((8, 4)).astype(np.float32)).astype("bfloat16")
        # the matmul in float32 (CPU Paddle has no bfloat16 matmul); the parameters stay bfloat16
        out = x.astype("float32") @ net.weight.astype("float32") + net.bias.astype("float32")
        opt.update((out**2).mean(), scaler=scaler)  # CPU Paddle has no bfloat16 check_finite_and_unscale
    return net, opt, scaler


def _checkpoint(net, opt, scaler):
    return {"model": {k: v.clone() for k, v in net.state_dict().items()}, "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict()}


def test_master_weights_are_restored_by_structured_name(monkeypatch):
    from paddle.amp.auto_cast import amp_global_state

    monkeypatch.setattr(amp_global_state(), "amp_dtype", "float16")  # a forced scaler stays on
    net, opt, scaler = _bf16_run([0, 1])
    with paddle.no_grad():  # what a GPU step leaves there: float32 values between bfloat16 ones
        for master in opt.inner._master_weights.values():
            master.set_value(master + 1e-3)
    state = _checkpoint(net, opt, scaler)
    assert sorted(state["optimizer"]["optimizer"]["master_weights"]) == ["bias", "weight"]
    expected = {k: v.numpy().copy() for k, v in state["optimizer"]["optimizer"]["master_weights"].items()}
    _, resumed, _ = _bf16_run([], state=state)
    by_name = dict(zip(["weight", "bias"], (resumed.inner._master_weights[p.name] for p in resumed._params)))
    for name, value in expected.items():
        np.testing.assert_array_equal(by_name[name].numpy(), value)


def test_a_resumed_multi_precision_run_continues_bit_equal(monkeypatch):
    from paddle.amp.auto_cast import amp_global_state

    monkeypatch.setattr(amp_global_state(), "amp_dtype", "float16")
    straight, _, _ = _bf16_run([0, 1, 2, 3, 4, 5])
    resumed, _, _ = _bf16_run([3, 4, 5], state=_checkpoint(*_bf16_run([0, 1, 2])))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert np.array_equal(a.astype("float32").numpy(), b.astype("float32").numpy())


def test_master_weights_that_do_not_fit_are_refused():
    _, opt, _ = _bf16_run([])
    saved = opt.state_dict()
    saved["optimizer"]["master_weights"] = {"weight": paddle.zeros([2, 2])}
    with pytest.raises(ValueError, match="master weight of weight"):
        opt.set_state_dict(saved)


# -- options that do nothing are refused ---------------------------------------------------
@pytest.mark.parametrize("options, match", [
    (dict(on_conflict="ignore", max_reg_ratio=1.0), "max_reg_ratio"),
    (dict(on_conflict="ignore", reference="ema"), "reference"),
    (dict(on_conflict="ignore", reference="holdout"), "reference"),
    (dict(reference="batch", ema_decay=0.5), "ema_decay"),
    (dict(reference="ema", holdout_every=4), "holdout_every"),
])
def test_a_rule_refuses_options_that_do_nothing(options, match):
    with pytest.raises(ValueError, match=match):
        Rule(**options)


def test_dtnh_refuses_them_too():
    net = paddle.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="max_reg_ratio"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, preset="vanilla", max_reg_ratio=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, preset="paper", ema_decay=0.5)


# -- the vanilla preset's conflict rate is not diluted -------------------------------------
class _Rates:
    interval = 4

    def __init__(self):
        self.rates, self.count, self.steps = [], 0.0, 0

    def wants_stats(self, step):
        return step % self.interval == 0

    def on_step(self, dtnh, stats):
        if "conflict" in stats:
            self.count += float(stats["conflict"])
            self.steps += 1
        if self.wants_stats(dtnh.num_steps):
            self.rates.append(self.count / self.steps)
            self.count, self.steps = 0.0, 0

    def on_skip(self, dtnh):
        pass


def test_the_vanilla_conflict_rate_counts_only_steps_that_measured_it(tmp_path):
    from visualdl import LogReader

    from paddle_dtnh.integrations.visualdl import DTNHLogger

    paddle.seed(0)
    source = paddle.nn.Linear(3, 2)
    model = paddle.nn.Linear(3, 2)
    with paddle.no_grad():  # above the source; the data pull further up, L2-SP down: every step conflicts
        for p, q in zip(model.parameters(), source.parameters()):
            p.set_value(q + 5.0)
    logger = DTNHLogger(str(tmp_path), interval=4)
    reg = L2SP(model, source, alpha=1.0, beta=0.0)
    opt = DTNH(paddle.optimizer.SGD(1e-4, parameters=model.parameters()), reg, lam=1.0, preset="vanilla",
               logger=logger)
    x = paddle.rand([16, 3]) + 0.5  # positive inputs: every weight moves the outputs the same way
    for _ in range(8):
        out, omega = reg.run(x)
        opt.update(F.mse_loss(out, source(x).detach() + 100.0), omega)
    logger.close()
    reader = LogReader(file_path=str(next(tmp_path.glob("vdlrecords*"))))
    rates = [r.value for r in reader.get_data("scalar", "dtnh/conflict_rate")]
    assert rates == [1.0, 1.0]  # 0.25 each on 0.3: three one-backward steps counted as "no conflict"


# -- hook-mode misuse gets the library's error ------------------------------------------------
def test_backward_before_regularize_names_the_order():
    paddle.seed(0)
    source = paddle.vision.models.resnet18(num_classes=3)
    model = paddle.vision.models.resnet18(num_classes=3)
    model.set_state_dict(source.state_dict())
    reg = KnowDist(model, source, head=["fc"])
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0)
    out, omega = reg.run(paddle.randn([2, 3, 16, 16]))
    F.cross_entropy(out, paddle.to_tensor([0, 1])).backward()
    with pytest.raises(RuntimeError, match=r"regularize\(omega\) came after loss.backward\(\).*Expected order"):
        opt.regularize(omega)


# -- a run that only skips stops ------------------------------------------------------------------
def test_consecutive_skips_raise_after_the_cap(caplog):
    net = paddle.nn.Linear(2, 2)
    opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0, max_consecutive_skips=3)
    x = paddle.ones([1, 2])
    with caplog.at_level(logging.CRITICAL, logger="paddle_dtnh"):
        opt.update((net(x) * float("nan")).sum())
        opt.update(net(x).sum())  # an applied step restarts the count
        for _ in range(2):
            opt.update((net(x) * float("nan")).sum())
        with pytest.raises(FloatingPointError, match=r"3 consecutive steps .* at step 5.*lower the learning rate"):
            opt.update((net(x) * float("nan")).sum())
    assert opt.skipped_steps == 4 and opt.num_steps == 1
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0, max_consecutive_skips=0)
    assert DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=0.0).max_consecutive_skips == 50


def test_presets_still_build():
    for name, rule in PRESETS.items():
        assert Rule(**{k: v for k, v in rule.as_dict().items() if k != "fallback"}) is not None, name


def test_never_hurt_holdout_is_deprecated_with_its_evidence():
    from paddle_dtnh.rules import DEPRECATED_PRESETS, resolve_rule

    with pytest.warns(DeprecationWarning, match=r"0.5 ± 0.3 and 5.4 ± 1.2 points"):
        rule = resolve_rule("never_hurt_holdout")
    assert rule == PRESETS["never_hurt_holdout"]  # still runs, as an option
    explicit = Rule(granularity="layer", on_conflict="drop", reference="holdout", max_reg_ratio=1.0, holdout_every=8)
    assert explicit == rule.replace(fallback=None)
    assert set(DEPRECATED_PRESETS) <= set(PRESETS)


# -- gradient accumulation: both idioms give the whole batch's step -------------------------
def _accumulation_run(kind, micro_batches, *, scale_loss, accumulation="sum", regularize=True):
    """Weights moved by one hook-mode step over ``micro_batches``."""
    from tests.test_hook_mode import setup, weights

    model, reg, opt = setup(kind, lr=0.1, accumulation=accumulation)
    before = weights(model)
    for x, y in micro_batches:
        out, omega = reg.run(x)
        if regularize:
            opt.regularize(omega)
        loss = F.cross_entropy(out, y)
        (loss / len(micro_batches) if scale_loss else loss).backward()
    opt.step()
    return [a - b for a, b in zip(weights(model), before)]


@pytest.mark.parametrize("kind,regularize", [("L2SP", True), ("L2SP", False), ("KnowDist", True)])
@pytest.mark.parametrize("idiom", ["sum", "mean"])
def test_accumulated_micro_batches_take_the_whole_batch_step(kind, regularize, idiom, float64):
    """Two micro-batches, then step(): ``"mean"`` with ``(loss / 2).backward()``
    is the whole batch's step; ``"sum"`` with the losses as they are is twice
    it (the loop's own gradient is the sum). 0.3 added an extra pull under
    ``loss / 2`` whatever omega was given."""
    from tests.test_hook_mode import data

    micro = data(2)
    whole = [(paddle.concat([x for x, _ in micro]), paddle.concat([y for _, y in micro]))]
    expected = _accumulation_run(kind, whole, scale_loss=False)
    got = _accumulation_run(kind, micro, scale_loss=idiom == "mean", accumulation=idiom, regularize=regularize)
    factor = 1.0 if idiom == "mean" else 2.0
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, factor * e, rtol=1e-9, atol=1e-12)


def test_accumulation_is_checked():
    with pytest.raises(ValueError, match="accumulation.*'sum', 'mean'"):
        DTNH(paddle.optimizer.SGD(0.1, parameters=paddle.nn.Linear(2, 2).parameters()), lam=1.0,
             accumulation="average")
