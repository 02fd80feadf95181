"""Hook mode pairs the right gradients: accumulation is exact, every misuse
is an error with nothing changed, an omega without a path is refused, and
mixed precision (a GradScaler forced on, as CPU Paddle switches it off)
applies the same direction as the unscaled step."""

import contextlib
import copy
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh import _paddle_compat as compat
from paddle_dtnh.integrations.hub import TransferTask
from paddle_dtnh.projection import dtnh_direction
from tests.test_contract import Net, build, flat, pair

KINDS = ["L2SP", "KnowDist"]


def setup(kind, lr=1.0, **kw):
    paddle.seed(0)
    source, model = pair()
    reg = build(kind, model, source)
    opt = DTNH(paddle.optimizer.SGD(lr, parameters=model.parameters()), reg, lam=2.0, **kw)
    return model, reg, opt


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(paddle.to_tensor(rng.normal(size=(4, 2, 5, 5)).astype(paddle.get_default_dtype())),
             paddle.to_tensor(rng.integers(0, 3, size=4))) for _ in range(n)]


def weights(model):
    return [p.numpy().copy() for p in model.parameters()]


def unchanged(model, before, opt):
    for a, b in zip(weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert opt.num_steps == 0 and opt.skipped_steps == 0


def assert_step_refused(model, before, opt, match):
    """step() raises RuntimeError matching ``match`` and changes nothing."""
    with pytest.raises(RuntimeError, match=match):
        opt.step()
    unchanged(model, before, opt)


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_micro_batches_give_the_direction_of_the_sums(kind, float64):
    model, reg, opt = setup(kind)
    params = list(model.parameters())
    batches = data(2)
    # the reference: per micro-batch gradients by autograd, summed, then the rule
    sum_j, sum_o = 0.0, 0.0
    for x, y in batches:
        out, omega = reg.run(x)
        sum_j = sum_j + flat(paddle.grad(F.cross_entropy(out, y), params, retain_graph=True), params)
        sum_o = sum_o + flat(paddle.grad(omega, params, allow_unused=True), params)
    d = sum_j + 2.0 * (sum_o - min(sum_j @ sum_o, 0.0) / (sum_j @ sum_j) * sum_j)
    before = flat(params, params)
    for x, y in batches:  # the loop with accumulation: regularize + backward per micro-batch
        out, omega = reg.run(x)
        opt.regularize(omega)
        F.cross_entropy(out, y).backward()
    opt.step()
    np.testing.assert_allclose(before - flat(params, params), d, rtol=1e-7, atol=1e-9)
    assert opt.num_steps == 1


def test_a_closed_form_gradient_counts_once_per_backward(float64):
    model, reg, opt = setup("L2SP")
    params = list(model.parameters())
    batches = data(3)
    sum_j = sum(flat(paddle.grad(F.cross_entropy(model(x), y), params), params) for x, y in batches)
    go = 3 * flat(opt._explicit.gradient(params, None), params)  # the same weights under each micro-batch
    d = sum_j + 2.0 * (go - min(sum_j @ go, 0.0) / (sum_j @ sum_j) * sum_j)
    before = flat(params, params)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()  # no regularize: closed form
    opt.step()
    np.testing.assert_allclose(before - flat(params, params), d, rtol=1e-7, atol=1e-9)


def test_paddle_model_accumulate_grad_batches_matches_the_loop():
    paddle.seed(0)
    source, base = pair()
    model_a, model_b = copy.deepcopy(base), copy.deepcopy(base)
    (x1, y1), (x2, y2) = data(2)
    opt_a = DTNH(paddle.optimizer.SGD(0.5, parameters=model_a.parameters()), build("KnowDist", model_a, source),
                 lam=2.0)
    hapi = paddle.Model(TransferTask(model_a, opt_a))
    hapi.prepare(opt_a, paddle.nn.CrossEntropyLoss())
    dataset = paddle.io.TensorDataset([paddle.concat([x1, x2]), paddle.concat([y1, y2]).reshape([-1, 1])])
    hapi.fit(dataset, epochs=1, batch_size=4, shuffle=False, verbose=0, accumulate_grad_batches=2)
    reg_b = build("KnowDist", model_b, source)
    opt_b = DTNH(paddle.optimizer.SGD(0.5, parameters=model_b.parameters()), reg_b, lam=2.0)
    for x, y in ((x1, y1), (x2, y2)):
        out, omega = reg_b.run(x)
        opt_b.regularize(omega)
        F.cross_entropy(out, y).backward()
    opt_b.step()
    assert opt_a.num_steps == opt_b.num_steps == 1
    for a, b in zip(weights(model_a), weights(model_b)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_two_forwards_and_one_backward_is_refused():
    model, reg, opt = setup("KnowDist")
    before = weights(model)
    (x1, y1), (x2, y2) = data(2)
    out1, omega1 = reg.run(x1)
    opt.regularize(omega1)
    out2, omega2 = reg.run(x2)
    opt.regularize(omega2)
    F.cross_entropy(out1, y1).backward()
    assert_step_refused(model, before, opt, "1 of 2 regularize\\(\\) call\\(s\\).*never ran")


def test_a_stale_regularize_is_refused():
    model, reg, opt = setup("KnowDist")
    before = weights(model)
    (x1, _), (x2, y2) = data(2)
    _, omega = reg.run(x1)  # an evaluation pass in train mode, say
    opt.regularize(omega)
    F.cross_entropy(model(x2), y2).backward()  # a forward and backward without regularize
    assert_step_refused(model, before, opt, "never ran")
    opt.clear_grad()
    # the bookkeeping is clean again: the next proper step works
    out, omega = reg.run(x2)
    opt.regularize(omega)
    F.cross_entropy(out, y2).backward()
    opt.step()
    assert opt.num_steps == 1


@pytest.mark.parametrize("kind", KINDS)
def test_regularize_then_step_without_backward_is_refused(kind):
    model, reg, opt = setup(kind)
    before = weights(model)
    x, _ = data(1)[0]
    _, omega = reg.run(x)
    opt.regularize(omega)
    assert_step_refused(model, before, opt, "never ran|regularize\\(\\) ran 1 time\\(s\\) but loss.backward\\(\\) 0")


def test_a_backward_without_regularize_among_micro_batches_is_refused():
    model, reg, opt = setup("KnowDist")
    before = weights(model)
    (x1, y1), (x2, y2) = data(2)
    out, omega = reg.run(x1)
    opt.regularize(omega)
    F.cross_entropy(out, y1).backward()
    F.cross_entropy(model(x2), y2).backward()
    assert_step_refused(model, before, opt, "regularize\\(\\) ran 1 time\\(s\\) but loss.backward\\(\\) 2")


def test_step_with_no_backward_at_all_is_refused():
    model, reg, opt = setup("L2SP")
    before = weights(model)
    assert_step_refused(model, before, opt, "found no loss.backward")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["detached", "no_grad", "constant", "other model"])
def test_an_omega_without_a_path_is_refused(kind, how):
    model, reg, opt = setup(kind)
    before = weights(model)
    x, y = data(1)[0]
    out, omega = reg.run(x)
    if how == "detached":
        omega = omega.detach()
    elif how == "no_grad":
        with paddle.no_grad():
            omega = reg.run(x)[1]
    elif how == "constant":
        omega = paddle.to_tensor(1.0)
    else:
        other = Net()
        omega = (other(x) ** 2).mean()
    match = "no gradient path|does not depend on any parameter"
    with pytest.raises(ValueError, match=match):
        opt.update(F.cross_entropy(out, y), omega)
    out, _ = reg.run(x)
    with pytest.raises(ValueError, match=match):
        opt.regularize(omega)
    unchanged(model, before, opt)


# -- mixed precision -------------------------------------------------------


@pytest.fixture(autouse=True)
def float16_amp_state(monkeypatch):
    """What auto_cast(dtype="float16") sets on a GPU; a scaler outside it
    switches itself off at its first scale()."""
    from paddle.amp.auto_cast import amp_global_state

    monkeypatch.setattr(amp_global_state(), "amp_dtype", "float16")


def forced_scaler(**kwargs):
    """A GradScaler that is on although the place is the CPU (its scale and
    unscale kernels run there; Paddle only refuses to enable it)."""
    import paddle.amp.grad_scaler as grad_scaler

    class GpuLike:
        def is_gpu_place(self):
            return True

    class Tracer:
        _expected_place = GpuLike()

    real = grad_scaler._dygraph_tracer
    grad_scaler._dygraph_tracer = lambda: Tracer()
    try:
        scaler = paddle.amp.GradScaler(**kwargs)
    finally:
        grad_scaler._dygraph_tracer = real
    assert scaler.is_enable()
    return scaler


def reference_step(kind, batch):
    model, reg, opt = setup(kind, lr=0.5)
    x, y = batch
    out, omega = reg.run(x)
    opt.update(F.cross_entropy(out, y), omega)
    return weights(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["minimize", "step"])
def test_hook_mode_under_a_scaler_applies_the_unscaled_direction(kind, call):
    batch = data(1)[0]
    expected = reference_step(kind, batch)
    model, reg, opt = setup(kind, lr=0.5)
    scaler = forced_scaler(init_loss_scaling=1024.0)
    x, y = batch
    out, omega = reg.run(x)
    opt.regularize(omega)
    scaled = scaler.scale(F.cross_entropy(out, y))
    assert scaler.is_enable()
    np.testing.assert_allclose(scaled.numpy(), 1024.0 * F.cross_entropy(out, y).numpy(), rtol=1e-6)
    scaled.backward()
    if call == "minimize":  # what paddle.Model's AMP path calls
        ops, params_grads = scaler.minimize(opt, scaled)
        assert ops is None and len(params_grads) == len(list(model.parameters()))
    else:
        scaler.step(opt)
        scaler.update()
    for a, b in zip(weights(model), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert opt.num_steps == 1 and opt.skipped_steps == 0


@pytest.mark.parametrize("mode", ["hook", "explicit"])
def test_an_overflow_under_a_scaler_skips_and_lowers_the_scale(mode):
    model, reg, opt = setup("KnowDist", on_nonfinite="raise")  # an overflow is routine under a scaler
    before = weights(model)
    scaler = forced_scaler(init_loss_scaling=1024.0, decr_every_n_nan_or_inf=1)
    x, y = data(1)[0]
    out, omega = reg.run(x)
    loss = F.cross_entropy(out, y) * float("inf")
    if mode == "hook":
        opt.regularize(omega)
        scaled = scaler.scale(loss)
        scaled.backward()
        scaler.minimize(opt, scaled)
    else:
        opt.update(loss, omega, scaler=scaler)
    for a, b in zip(weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert opt.num_steps == 0 and opt.skipped_steps == 1
    assert scaler._scale.numpy().reshape(-1)[0] == 512.0


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_mode_with_a_scaler_scales_both_backwards_and_unscales_them(kind):
    batch = data(1)[0]
    expected = reference_step(kind, batch)
    model, reg, opt = setup(kind, lr=0.5, track_stats=True)
    scaler = forced_scaler(init_loss_scaling=1024.0)
    calls = []
    real_grads = opt._explicit.gradient

    class Spy:  # the explicit loop's gO, recording the omega it is given
        regularizer = real_grads.regularizer

        def __call__(self, params, omega, scale=None):
            calls.append(None if omega is None else omega.numpy().reshape(-1)[0])
            return real_grads(params, omega, scale)

    opt._explicit.gradient = Spy()
    x, y = batch
    out, omega = reg.run(x)
    opt.update(F.cross_entropy(out, y), omega, scaler=scaler)
    for a, b in zip(weights(model), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(calls[0], 1024.0 * float(omega), rtol=1e-6)  # gO of the scaled omega
    assert float(opt.last_stats["task_grad_norm"]) < 100  # unscaled before the rule


def test_without_a_scaler_nothing_changes():
    batch = data(1)[0]
    expected = reference_step("KnowDist", batch)
    model, reg, opt = setup("KnowDist", lr=0.5)
    out, omega = reg.run(batch[0])
    with pytest.warns(UserWarning, match="AmpScaler can only be enabled"):
        scaler = paddle.amp.GradScaler()  # CPU: Paddle switches it off
    opt.update(F.cross_entropy(out, batch[1]), omega, scaler=scaler)
    for a, b in zip(weights(model), expected):
        np.testing.assert_array_equal(a, b)


def test_half_precision_gradients_are_combined_in_float32():
    from paddle_dtnh.optim.amp import in_float32 as _in_float32, unscaled as _unscaled

    gJ = [paddle.to_tensor([1.0, 0.0]).astype("bfloat16"), None]
    up = _in_float32(gJ)
    assert up[0].dtype == paddle.float32 and up[1] is None
    same = paddle.to_tensor([3.0])
    assert _in_float32([same])[0] is same  # float32 passes through, no copy
    d, _ = dtnh_direction(up[:1], [paddle.to_tensor([-1.0, 1.0])], 1.0)
    np.testing.assert_allclose(d[0].numpy(), [1.0, 1.0])
    # unscaling a half-precision gradient happens in float32, not in place in bfloat16
    unscaled = _unscaled([paddle.to_tensor([512.0, 3.0]).astype("bfloat16")], paddle.to_tensor([256.0]))
    assert unscaled[0].dtype == paddle.float32
    np.testing.assert_array_equal(unscaled[0].numpy(), [2.0, 3.0 / 256.0])


def test_paddle_model_with_amp_configs_trains_through_transfer_task():
    """On CPU paddle.Model turns AMP off: the step is the one without
    amp_configs; on a GPU its AMP path is scaler.minimize(opt, scaled), tested
    above with the scaler forced on."""
    (x, y), = data(1)
    trained = []
    for amp_configs in ({"level": "O1"}, None):
        paddle.seed(0)
        source, model = pair()
        opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), build("KnowDist", model, source),
                   lam=1.0)
        hapi = paddle.Model(TransferTask(model, opt))
        hapi.prepare(opt, paddle.nn.CrossEntropyLoss(), amp_configs=amp_configs)
        before = weights(model)
        hapi.fit(paddle.io.TensorDataset([x, y.reshape([-1, 1])]), epochs=1, batch_size=4, verbose=0)
        assert opt.num_steps == 1 and any((a != b).any() for a, b in zip(weights(model), before))
        trained.append(weights(model))
    for a, b in zip(*trained):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["explicit", "hook"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_auto_cast_around_the_forward_in_both_loops(mode, dtype):
    """Run on CPU, where Paddle turns auto_cast off (a warning says so): the
    loops accept it and step exactly as without it. On a GPU the forward runs
    in half precision and DTNH combines the gradients in float32 (tested above
    on cast tensors); that combination was not run here."""
    batch = data(1)[0]
    expected = reference_step("KnowDist", batch)
    model, reg, opt = setup("KnowDist", lr=0.5)
    x, y = batch
    with pytest.warns(UserWarning, match="can only be enabled on CUDAPlace"):
        with paddle.amp.auto_cast(dtype=dtype, level="O1"):
            out, omega = reg.run(x)
            loss = F.cross_entropy(out, y)
    if mode == "explicit":
        opt.update(loss, omega)
    else:
        opt.regularize(omega)
        loss.backward()
        opt.step()
    for a, b in zip(weights(model), expected):
        np.testing.assert_array_equal(a, b)


# -- an empty batch: a named error in every loop, before anything changes --------------------------------
def _momentum_setup(kind):
    paddle.seed(0)
    source, model = pair()
    reg = build(kind, model, source)
    opt = DTNH(paddle.optimizer.Momentum(0.1, momentum=0.9, parameters=model.parameters()), reg, lam=2.0)
    x, y = data(1)[0]
    out, omega = reg.run(x)
    opt.update(F.cross_entropy(out, y), omega)  # Momentum's state exists and would advance
    return model, reg, opt


def _snapshot(model, opt):
    state = {k: v.numpy().copy() for k, v in flat_state(opt.state_dict())}
    return weights(model), state, opt.num_steps, opt.skipped_steps


def flat_state(state, prefix=""):
    for k, v in state.items():
        if isinstance(v, dict):
            yield from flat_state(v, f"{prefix}{k}/")
        elif isinstance(v, paddle.Tensor):
            yield f"{prefix}{k}", v


def _assert_as_before(model, opt, before):
    w, state, steps, skipped = before
    for a, b in zip(weights(model), w):
        np.testing.assert_array_equal(a, b)
    after = dict((k, v.numpy()) for k, v in flat_state(opt.state_dict()))
    assert after.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(after[k], state[k], err_msg=k)
    assert (opt.num_steps, opt.skipped_steps) == (steps, skipped)


def _empty():
    return paddle.zeros([0, 2, 5, 5], paddle.get_default_dtype()), paddle.zeros([0], "int64")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loop", ["run", "explicit", "hook"])
def test_an_empty_batch_is_named_before_anything_changes(kind, loop):
    model, reg, opt = _momentum_setup(kind)
    before = _snapshot(model, opt)
    x, y = _empty()
    # Paddle 2.6's convolution refuses an empty batch itself, in the user's forward: also a named error,
    # before the library sees anything (3.x runs the forward, and the library names it)
    named = "empty batch" if compat.PADDLE_3 else "empty batch|inputs should not be 0"
    with pytest.raises(ValueError, match=named):
        if loop == "run":
            reg.run(x)
        with reg.capture() if kind == "KnowDist" else contextlib.nullcontext() as features:
            out = model(x)  # the user's own forward: the optimizer reads the batch from its shape
        loss = F.cross_entropy(out, y)
        omega = reg(x, features) if kind == "KnowDist" else reg()
        if loop == "explicit":
            opt.update(loss, omega)
        else:
            if kind == "KnowDist":
                opt.regularize(omega)
            loss.backward()
            opt.step()
    opt.clear_grad()
    _assert_as_before(model, opt, before)
    x, y = data(1, seed=2)[0]  # the next batch trains
    out, omega = reg.run(x)
    opt.update(F.cross_entropy(out, y), omega)
    assert opt.num_steps == before[2] + 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("runner", ["hub.Trainer step", "paddle.Model"])
def test_an_empty_batch_under_transfer_task_is_named(kind, runner):
    model, reg, opt = _momentum_setup(kind)
    before = _snapshot(model, opt)
    task = TransferTask(model, opt)
    x, y = _empty()
    with pytest.raises(ValueError, match="empty batch"):
        if runner == "paddle.Model":
            hapi = paddle.Model(task)
            hapi.prepare(opt, paddle.nn.CrossEntropyLoss())
            hapi.train_batch([x], [y.reshape([-1, 1])])
        else:
            task.training_step((x, y), 0)
            opt.step()
    opt.clear_grad()
    _assert_as_before(model, opt, before)


def test_many_dtnhs_on_one_model_leave_no_hooks_behind():
    import gc

    from paddle_dtnh.regularizers import KnowDist

    source, model = pair()
    reg = KnowDist(model, source, layers=["block1"], head=["fc"])
    gc.collect()
    hooks = len(model._forward_post_hooks)
    for _ in range(201):  # each dies in a reference cycle (DTNH <-> its loops)
        DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0)
    gc.collect()
    assert len(model._forward_post_hooks) == hooks


@pytest.mark.parametrize("noted", [False, True])
def test_the_scaled_loss_gradscaler_minimize_hands_on_is_not_logged(noted):
    from paddle_dtnh.diagnostics import StepLogger

    class Recorder(StepLogger):
        def __init__(self):
            self.losses = []

        def on_step(self, dtnh, stats):
            self.losses.append(stats.get("task_loss"))

    model, reg, opt = setup("KnowDist", lr=0.5)
    opt.logger = Recorder()
    scaler = forced_scaler(init_loss_scaling=1024.0)
    x, y = data(1)[0]
    out, omega = reg.run(x)
    opt.regularize(omega)
    loss = F.cross_entropy(out, y)
    if noted:
        opt.note_task_loss(loss)
    scaled = scaler.scale(loss)
    scaled.backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler.minimize(opt, scaled)  # what paddle.Model's AMP path calls
    said = [str(w.message) for w in caught if "scaled by the loss scale" in str(w.message)]
    assert opt.num_steps == 1 and len(said) == (0 if noted else 1), said
    logged = opt.logger.losses[0]
    if noted:
        np.testing.assert_allclose(float(logged), float(loss), rtol=1e-6)
    else:
        assert logged is None or not np.isclose(float(logged), 1024.0 * float(loss))
