"""The source-fit test: its two scores against brute force and hand
computation, its degenerate inputs, the random network, and preset="auto"."""

import logging
import math
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from scipy.optimize import minimize

from paddle_dtnh import DTNH, PRESETS, SourceFit, source_fit
from paddle_dtnh.regularizers import L2SP
from paddle_dtnh.transferability import (_standardised, logme, loo_ridge_accuracy, loo_ridge_predictions,
                                         random_reinit)


def _brute_force_loo(features, labels, ridge):
    """Refit the probe n times, each without one image (unpenalised bias)."""
    f = _standardised(np.asarray(features, dtype=np.float64))
    classes = np.unique(labels)
    targets = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)
    n, d = f.shape
    design = np.c_[f, np.ones(n)]
    penalty = np.diag([ridge] * d + [0.0])
    rows = []
    for i in range(n):
        keep = np.arange(n) != i
        a = design[keep]
        w = np.linalg.solve(a.T @ a + penalty, a.T @ targets[keep])
        rows.append(design[i] @ w)
    return np.array(rows)


@pytest.mark.parametrize("n_features", [5, 60])  # fewer and more features than images
def test_loo_predictions_equal_brute_force_refits(n_features):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 10)
    features = rng.standard_normal((30, n_features)) + labels[:, None] * 0.5
    for ridge in (0.1, 1.0, 10.0):
        _, closed, _ = loo_ridge_predictions(features, labels, ridge)
        np.testing.assert_allclose(closed, _brute_force_loo(features, labels, ridge), rtol=1e-9, atol=1e-10)
        brute = _brute_force_loo(features, labels, ridge)
        assert loo_ridge_accuracy(features, labels, ridge) == pytest.approx((brute.argmax(1) == labels).mean())


def test_loo_predictions_hand_computed():
    # standardised x = [-1, -1, 1, 1]: H = 1/4 + x_i x_j / 5, so H_ii = 0.45 and
    # the left-out prediction of image 0 is ((0.9 - 0.45) / 0.55, 0.1 / 0.55) = (9/11, 2/11)
    _, left_out, _ = loo_ridge_predictions([[-1.0], [-1.0], [1.0], [1.0]], [0, 0, 1, 1], ridge=1.0)
    np.testing.assert_allclose(left_out[0], [9 / 11, 2 / 11], rtol=1e-12)
    np.testing.assert_allclose(left_out[3], [2 / 11, 9 / 11], rtol=1e-12)


def _direct_log_evidence(x, y, alpha, beta):
    """log N(y | 0, I/beta + F F^T/alpha): the evidence without any algebra."""
    n = x.shape[0]
    cov = np.eye(n) / beta + x @ x.T / alpha
    sign, log_det = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + y @ np.linalg.solve(cov, y))


@pytest.mark.parametrize("shape", [(24, 3), (12, 30)])
def test_logme_is_the_maximised_evidence(shape):
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], shape[0] // 2)
    x = rng.standard_normal(shape) + labels[:, None] * 0.7
    best = []
    for c in (0, 1):
        y = (labels == c).astype(np.float64)
        res = minimize(lambda v: -_direct_log_evidence(x, y, math.exp(v[0]), math.exp(v[1])), [0.0, 0.0],
                       method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
        best.append(-res.fun / shape[0])
    assert logme(x, labels) == pytest.approx(np.mean(best), abs=1e-5)


def test_scores_prefer_features_that_carry_the_labels():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 8)
    informative = np.eye(4)[labels] * 3 + rng.standard_normal((32, 4))
    noise = rng.standard_normal((32, 4))
    assert loo_ridge_accuracy(informative, labels) > loo_ridge_accuracy(noise, labels)
    assert logme(informative, labels) > logme(noise, labels)


@pytest.mark.parametrize("features, labels, match", [
    (np.ones((6, 3)), [0, 0, 0, 1, 1, 1], "constant"),
    (np.random.default_rng(0).standard_normal((6, 3)), [0] * 6, "at least 2 classes"),
    (np.random.default_rng(0).standard_normal((4, 3)), [0, 0, 1, 2], "single image"),
    (np.r_[np.full((1, 3), np.nan), np.zeros((3, 3))], [0, 0, 1, 1], "non-finite"),
    (np.zeros((4, 3)), [0, 1, 1], "labels"),
])
def test_degenerate_inputs_raise(features, labels, match):
    for score in (loo_ridge_accuracy, logme):
        with pytest.raises(ValueError, match=match):
            score(features, labels)


def test_constant_columns_are_dropped():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 6)
    x = rng.standard_normal((12, 3)) + labels[:, None]
    assert loo_ridge_accuracy(np.c_[x, np.full(12, 5.0)], labels) == loo_ridge_accuracy(x, labels)


# -- the networks ----------------------------------------------------------------------
class _Picker(paddle.nn.Layer):
    """A 'source' whose features are two chosen input coordinates."""

    def __init__(self, picks):
        super().__init__()
        self.body = paddle.nn.Linear(16, 2, bias_attr=False)
        weight = np.zeros((16, 2), dtype=np.float32)
        weight[picks, [0, 1]] = 1.0
        self.body.weight.set_value(weight)
        self.fc = paddle.nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.body(x))


def _labelled_images(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x[:, 0] += 3 * (labels == 1)
    x[:, 1] += 3 * (labels == 2)
    return paddle.to_tensor(x), paddle.to_tensor(labels)


def test_source_that_sees_the_classes_fits_and_chooses_the_paper_rule():
    x, y = _labelled_images()
    report = source_fit(_Picker([0, 1]), x, y, head="fc")
    assert report.source_score >= 0.85 > 0.5 > report.random_score
    assert report.fits and report.preset == "paper" and report.decision.outcome == "fits"
    assert report.advantage_se > 0 and report.source_only > report.random_only
    assert report.source_logme > report.random_logme
    assert (report.num_images, report.num_features) == (60, 2)


def test_source_blind_to_the_classes_does_not_fit_and_turns_the_pull_off():
    x, y = _labelled_images()
    report = source_fit(_Picker([7, 9]), x, y, head="fc")  # two noise coordinates
    assert report.advantage < 0 and not report.fits
    assert report.decision.outcome == "does_not_fit" and report.preset == "off"


def test_source_fit_reads_datasets_and_loaders_as_tensors():
    x, y = _labelled_images()
    net = _Picker([0, 1])
    dataset = paddle.io.TensorDataset([x, y])
    expected = source_fit(net, x, y, head="fc", batch_size=7)
    assert source_fit(net, dataset, head="fc", batch_size=7) == expected
    assert source_fit(net, paddle.io.DataLoader(dataset, batch_size=16), head="fc") == expected
    assert source_fit(net, x.numpy(), y.numpy(), head="fc") == expected
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 60, 16)]  # any iterable of batches
    assert source_fit(net, batches, head="fc") == expected


def test_source_fit_leaves_the_source_untouched():
    x, y = _labelled_images()
    net = _Picker([0, 1])
    net.train()
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    seed_state = paddle.get_rng_state()
    source_fit(net, x, y, head="fc")
    assert net.training
    assert all(np.array_equal(before[k], v.numpy()) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert np.array_equal(paddle.get_rng_state()[0].current_seed(), seed_state[0].current_seed())


def test_source_fit_input_errors():
    x, y = _labelled_images()
    net = _Picker([0, 1])
    with pytest.raises(ValueError, match=r"head prefix\(es\) \['head'\] match no parameter"):
        source_fit(net, x, y, head="head")
    with pytest.raises(ValueError, match="labels are required"):
        source_fit(net, x, head="fc")
    with pytest.raises(ValueError, match="labels must be None"):
        source_fit(net, paddle.io.TensorDataset([x, y]), y, head="fc")
    with pytest.raises(TypeError, match="paddle.nn.Layer"):
        source_fit(lambda t: t, x, y, head="fc")
    bad = x.numpy().copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="Image 3 .* NaN or Inf pixels"):
        source_fit(net, bad, y, head="fc")


def test_random_reinit_is_seeded_and_resets_every_role():
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Flatten(),
                               paddle.nn.Linear(4 * 6 * 6, 5))
    with paddle.no_grad():
        net[1]._mean.set_value(paddle.full([4], 3.0))
        net[1].weight.set_value(paddle.full([4], 2.0))
    a, b, c = random_reinit(net, 0), random_reinit(net, 0), random_reinit(net, 1)
    for (name, pa), pb, pc, p in zip(a.named_parameters(), b.parameters(), c.parameters(), net.parameters()):
        assert np.array_equal(pa.numpy(), pb.numpy()), name
        assert not np.array_equal(pa.numpy(), p.numpy()) or p.numpy().std() == 0, name
    assert float(a[1]._mean.abs().sum()) == 0 and float(a[1]._variance.mean()) == 1
    assert float(a[1].weight.mean()) == 1 and float(a[0].bias.abs().sum()) == 0
    assert not np.array_equal(a[0].weight.numpy(), c[0].weight.numpy())
    fan_in = 3 * 3 * 3  # He normal: std sqrt(2 / fan_in)
    assert a[0].weight.numpy().std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.35)
    assert float(net[1]._mean.mean()) == 3.0  # the original is untouched


# -- preset="auto" -----------------------------------------------------------------------
#: outcome -> (source accuracy, right for the source only, right for the random only) on 20 images
_OUTCOMES = {True: (0.95, 8, 1), "fits": (0.95, 8, 1), "uncertain": (0.65, 3, 2), False: (0.5, 1, 3),
             "does_not_fit": (0.5, 1, 3)}


def _fit(outcome) -> SourceFit:
    score, b, c = _OUTCOMES[outcome]
    return SourceFit(source_score=score, random_score=0.6, source_logme=-0.5,
                     random_logme=-0.7, num_images=20, num_features=8, source_only=b, random_only=c)


def _setup(seed=0):
    paddle.seed(seed)
    source = paddle.nn.Linear(4, 3)
    model = paddle.nn.Linear(4, 3)
    model.set_state_dict(source.state_dict())
    reg = L2SP(model, source, alpha=0.1, beta=0.01)
    return model, reg


def _run(preset, fit=None, steps=3):
    model, reg = _setup()
    opt = DTNH(paddle.optimizer.Momentum(0.1, parameters=model.parameters()), reg, lam=5.0, preset=preset,
               fit=fit)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = paddle.to_tensor(rng.standard_normal((8, 4)).astype(np.float32))
        y = paddle.to_tensor(rng.integers(0, 3, 8))
        logits, omega = reg.run(x)
        opt.update(F.cross_entropy(logits, y), omega)
    return opt, model


@pytest.mark.parametrize("fits, chosen", [("fits", "paper"), ("uncertain", "never_hurt")])
def test_auto_runs_the_chosen_preset_bit_equal(fits, chosen, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="paddle_dtnh"):
        opt, model = _run("auto", _fit(fits))
    _, expected = _run(chosen)
    assert opt.rule == PRESETS[chosen] and opt.preset == "auto" and opt.source_fit.preset == chosen
    for p, q in zip(model.parameters(), expected.parameters()):
        assert np.array_equal(p.numpy(), q.numpy())
    # the decision's one line goes through the library's logger; the library prints nothing
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "paddle_dtnh"]
    assert len(lines) == 1 and "source fit" in lines[0] and f"-> preset {chosen!r}" in lines[0] and "0.600" in lines[0]


def test_auto_without_a_fit_turns_the_pull_off_bit_equal_to_fine_tuning(caplog):
    with caplog.at_level(logging.INFO, logger="paddle_dtnh"):
        opt, model = _run("auto", _fit("does_not_fit"))
    assert opt.decision.preset == "off" and opt.decision.outcome == "does_not_fit"
    plain, _ = _setup()
    inner = paddle.optimizer.Momentum(0.1, parameters=plain.parameters())
    fine_tuning = DTNH(inner, None, lam=0.0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = paddle.to_tensor(rng.standard_normal((8, 4)).astype(np.float32))
        y = paddle.to_tensor(rng.integers(0, 3, 8))
        fine_tuning.update(F.cross_entropy(plain(x), y))
    for p, q in zip(model.parameters(), plain.parameters()):
        assert np.array_equal(p.numpy(), q.numpy())
    assert "-> preset 'off'" in caplog.text


def test_auto_needs_a_fit_and_a_fit_needs_auto():
    model, reg = _setup()
    inner = paddle.optimizer.SGD(0.1, parameters=model.parameters())
    with pytest.raises(ValueError, match="source_fit"):
        DTNH(inner, reg, lam=1.0, preset="auto")
    with pytest.raises(TypeError, match="SourceFit"):
        DTNH(inner, reg, lam=1.0, preset="auto", fit={"fits": True})
    with pytest.raises(ValueError, match="only used by preset='auto'"):
        DTNH(inner, reg, lam=1.0, preset="never_hurt", fit=_fit(True))


def test_auto_saves_its_decision_and_a_resume_with_another_warns():
    opt, _ = _run("auto", _fit(True))
    saved = opt.state_dict()["dtnh"]
    assert saved["preset"] == "auto" and saved["source_fit"]["fits"] is True
    assert saved["source_fit"]["source_score"] == 0.95 and saved["source_fit"]["random_score"] == 0.6
    assert SourceFit.from_dict(saved["source_fit"]) == _fit(True)
    same, _ = _run("auto", _fit(True), steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same.set_state_dict(opt.state_dict())
    assert not [w for w in caught if "configuration" in str(w.message)]
    other, _ = _run("auto", _fit(False), steps=0)
    with pytest.warns(UserWarning, match="source_fit"):
        other.set_state_dict(opt.state_dict())


def test_auto_logs_the_test_to_visualdl(tmp_path):
    from visualdl import LogReader

    from paddle_dtnh.integrations.visualdl import DTNHLogger

    model, reg = _setup()
    logger = DTNHLogger(str(tmp_path), interval=1)
    DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0, preset="auto",
         fit=_fit(False), logger=logger)
    logger.close()
    reader = LogReader(file_path=str(next(tmp_path.glob("vdlrecords*"))))
    tags = reader.get_tags()["scalar"]
    assert {"dtnh/source_fit/advantage", "dtnh/source_fit/fits", "dtnh/source_fit/random_score"} <= set(tags)
    advantage = reader.get_data("scalar", "dtnh/source_fit/advantage")
    assert advantage[0].value == pytest.approx(-0.1)


def test_a_missing_holdout_names_the_rule_that_runs():
    model, reg = _setup()
    with pytest.warns(UserWarning, match="fallback"):
        opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0,
                   preset="never_hurt_holdout")
    assert opt.preset == "never_hurt" and opt.rule == PRESETS["never_hurt"]
    assert opt.state_dict()["dtnh"]["preset"] == "never_hurt"


def test_logme_stays_finite_where_the_features_fit_exactly():
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], 2)
    x = rng.standard_normal((6, 40))  # more features than images: any column is fitted exactly
    value = logme(x, labels)
    assert math.isfinite(value)
    assert math.isfinite(loo_ridge_accuracy(x, labels))


def test_the_same_rule_by_name_or_by_object_resumes_without_a_warning():
    opt, _ = _run("never_hurt")
    model, reg = _setup()
    same = DTNH(paddle.optimizer.Momentum(0.1, parameters=model.parameters()), reg, lam=5.0,
                preset=PRESETS["never_hurt"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same.set_state_dict(opt.state_dict())
    assert not [w for w in caught if "configuration" in str(w.message)]
    other, _ = _run("paper", steps=0)
    with pytest.warns(UserWarning, match="preset: saved 'never_hurt', now 'paper'"):
        other.set_state_dict(opt.state_dict())


def test_head_is_taken_as_the_regularizers_take_it():
    x, y = _labelled_images()
    net = _Picker([0, 1])
    by_name, by_list = source_fit(net, x, y, head="fc"), source_fit(net, x, y, head=["fc"])
    assert by_name == by_list and by_list.head == ("fc",)
    with pytest.raises(TypeError, match="name prefix or a list"):
        source_fit(net, x, y, head=3)
    with pytest.raises(ValueError, match="one classifier layer"):
        source_fit(net, x, y, head=["fc", "body"])


def test_raw_pixels_are_said_and_normalised_images_are_not():
    x, y = _labelled_images()
    net = _Picker([0, 1])
    raw = np.clip(np.round(x.numpy() * 40 + 128), 0, 255).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"integer images with values in \[0, 255\]: raw 0-255 pixels"):
        source_fit(net, raw, y, head="fc")
    with pytest.warns(UserWarning, match="raw 0-255 pixels"):
        source_fit(net, raw.astype(np.float32), y, head="fc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source_fit(net, x, y, head="fc")  # standardised values: no warning


def test_a_list_of_batches_with_labels_is_a_named_error():
    x, y = _labelled_images()
    batches = [(x[:30], y[:30]), (x[30:], y[30:])]
    with pytest.raises(ValueError, match="list of \\(images, labels\\) batches and labels= was given"):
        source_fit(_Picker([0, 1]), batches, y, head="fc")
    assert source_fit(_Picker([0, 1]), batches, head="fc").num_images == 60
