"""preset="auto" and "auto_stages": the decision's three outcomes, the pull
kept per stage in both loops (checked against an oracle built from
paddle.grad and the paper's kernel), and a report of another source refused."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH, PRESETS, SourceFit, source_fit
from paddle_dtnh.auto import DEFAULT_POLICY, DecisionPolicy, decide
from paddle_dtnh.models.architectures import ARCHITECTURES, target_from
from paddle_dtnh.projection import dtnh_direction
from paddle_dtnh.regularizers import L2SP, KnowDist
from paddle_dtnh.transferability import StageFit, paired_se


def _report(advantage_images=(30, 5), logme=0.3, stages=()):
    b, c = advantage_images
    return SourceFit(source_score=0.5 + (b - c) / 100, random_score=0.5, source_logme=logme, random_logme=0.0,
                     num_images=100, num_features=512, source_only=b, random_only=c, stages=stages)


def test_paired_se_is_mcnemars():
    # 12 right for the source only, 8 for the random only, of 100: var = (20 - 16/100) / 100^2
    assert paired_se(12, 8, 100) == pytest.approx(np.sqrt(20 - 0.16) / 100)
    assert paired_se(0, 0, 100) == 0.0


_POLICY = DecisionPolicy(fit_margin=1.0, logme_agrees=True, off_margin=0.0, if_no_fit="off",
                         if_uncertain="never_hurt")


@pytest.mark.parametrize("images, logme, outcome, preset", [
    ((30, 5), 0.3, "fits", "paper"),  # +0.25, about 5 SE, LogME agrees
    ((30, 5), -0.3, "uncertain", "never_hurt"),  # the two scores disagree
    ((7, 4), 0.3, "uncertain", "never_hurt"),  # +0.03: within one SE
    ((7, 4), -0.3, "does_not_fit", "off"),  # within one SE and LogME says no
    ((4, 9), 0.3, "does_not_fit", "off"),  # a negative advantage
])
def test_the_three_outcomes(images, logme, outcome, preset):
    decision = decide(_report(images, logme), policy=_POLICY)
    assert (decision.outcome, decision.preset) == (outcome, preset)
    assert "advantage" in decision.reason and "SE" in decision.reason


def test_the_default_policy_is_the_one_chosen_on_the_discovery_cells():
    assert DEFAULT_POLICY == DecisionPolicy(fit_margin=2.0, logme_agrees=True, off_margin=0.0, if_no_fit="off",
                                            if_uncertain="never_hurt")
    assert DEFAULT_POLICY.branch("fits") == "paper"
    # +0.09 at 1.8 SE with LogME agreeing (a helpful discovery seed): uncertain, not a fit
    assert decide(_report((17, 8), 0.2)).preset == "never_hurt"
    with pytest.raises(ValueError, match="if_no_fit"):
        DecisionPolicy(fit_margin=1, logme_agrees=True, off_margin=0, if_no_fit="vanilla", if_uncertain="off")


def test_a_0_4_report_without_per_image_record_is_refused_with_the_fix():
    old = SourceFit.from_dict({"source_score": 0.7, "random_score": 0.6, "source_logme": 0.1, "random_logme": 0.0,
                               "num_images": 100, "num_features": 8, "fits": True, "preset": "paper"})
    with pytest.raises(ValueError, match="run paddle_dtnh.source_fit again"):
        decide(old)


def _networks(seed=0):
    paddle.seed(seed)
    source = ARCHITECTURES["resnet18"].build(4)
    model = target_from(source, 3)
    return source, model


def _stages(fitting):
    return tuple(StageFit(name, 0.9 if name in fitting else 0.5, 0.5, 40 if name in fitting else 5, 0 if name in
                          fitting else 5, 100, 64) for name in ("layer1", "layer2", "layer3", "layer4"))


def _oracle(model, reg, x, y, lam, kept):
    """One SGD (lr 1) step of the paper's rule with gO kept only on ``kept`` parameter-name prefixes."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    names = {id(p): n for n, p in model.named_parameters()}
    logits, omega = reg.run(x)
    g_o = paddle.grad(omega, params, retain_graph=True, allow_unused=True)
    g_j = paddle.grad(F.cross_entropy(logits, y), params, allow_unused=True)
    g_o = [g if g is not None and names[id(p)].split(".")[0] in kept else None for p, g in zip(params, g_o)]
    directions, _ = dtnh_direction(list(g_j), g_o, lam, PRESETS["paper"])
    return {names[id(p)]: (p - d).numpy() for p, d in zip(params, directions)}


@pytest.mark.parametrize("loop", ["explicit", "hook"])
@pytest.mark.parametrize("kind", ["knowdist", "l2sp"])
def test_auto_stages_pulls_only_the_stages_that_fit(loop, kind):
    x = paddle.randn([4, 3, 16, 16])
    y = paddle.to_tensor([0, 1, 2, 0])
    make = (lambda m, s: KnowDist(m, s, head=["fc"])) if kind == "knowdist" else \
        (lambda m, s: L2SP(m, s, alpha=0.1, beta=0.01, head=["fc"]))
    source, model = _networks()
    reg = make(model, source)
    # the pull moves weights only once they left the source: take one plain step first
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p + 0.01 * paddle.randn(p.shape))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = _report(stages=_stages({"layer1", "layer3"}))
    decision = decide(report, stages=True)
    assert decision.pulled_stages == ("layer1", "layer3") and decision.preset == "paper"
    expected = _oracle(model, reg, x, y, 5.0, {"conv1", "bn1", "layer1", "layer3", "fc"})
    model.set_state_dict(state)
    model.train()
    with pytest.warns(UserWarning, match="lost to preset='auto' on the discovery cells"):
        opt = DTNH(paddle.optimizer.SGD(1.0, parameters=model.parameters()), reg, lam=5.0, preset="auto_stages",
                   fit=report)
    logits, omega = reg.run(x)
    if loop == "explicit":
        opt.update(F.cross_entropy(logits, y), omega)
    else:
        opt.regularize(omega)
        F.cross_entropy(logits, y).backward()
        opt.step()
    for name, p in model.named_parameters():
        if not p.stop_gradient:
            np.testing.assert_allclose(p.numpy(), expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_report_of_another_source_is_refused():
    source, model = _networks(0)
    other, _ = _networks(1)
    x = paddle.randn([8, 3, 16, 16])
    y = paddle.to_tensor([0, 1, 2, 3] * 2)
    report = source_fit(other, x, y, head=["fc"])
    reg = L2SP(model, source, alpha=0.1, beta=0.01, head=["fc"])
    inner = paddle.optimizer.SGD(0.1, parameters=model.parameters())
    with pytest.raises(ValueError, match="measured on another source"):
        DTNH(inner, reg, lam=1.0, preset="auto", fit=report)
    DTNH(inner, reg, lam=1.0, preset="auto", fit=source_fit(source, x, y, head="fc"))  # its own source: accepted
    knowdist = KnowDist(model, source, head=["fc"])
    with pytest.raises(ValueError, match="measured on another source"):
        DTNH(inner, knowdist, lam=1.0, preset="auto", fit=report)


@pytest.mark.parametrize("loop", ["explicit", "hook"])
def test_auto_off_steps_on_the_data_gradient_alone_in_both_loops(loop):
    x = paddle.randn([4, 3, 16, 16])
    y = paddle.to_tensor([0, 1, 2, 0])
    source, model = _networks()
    reg = KnowDist(model, source, head=["fc"])
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p + 0.01 * paddle.randn(p.shape))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if not p.stop_gradient]
    g_j = paddle.grad(F.cross_entropy(model(x), y), params)
    expected = [(p - g).numpy() for p, g in zip(params, g_j)]
    model.set_state_dict(state)
    opt = DTNH(paddle.optimizer.SGD(1.0, parameters=model.parameters()), reg, lam=5.0, preset="auto",
               fit=_report((4, 9)))
    assert opt.decision.preset == "off"
    logits, omega = reg.run(x)
    if loop == "explicit":
        stats = opt.update(F.cross_entropy(logits, y), omega)
    else:
        opt.regularize(omega)
        F.cross_entropy(logits, y).backward()
        opt.step()
        stats = opt.last_stats
    assert "reg_loss" in stats  # still logged
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-5, atol=1e-6)
