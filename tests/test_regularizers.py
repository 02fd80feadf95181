import numpy as np
import paddle
import pytest

from paddle_dtnh.io import files

from paddle_dtnh.regularizers import (
    L1SP,
    L2,
    L2SP,
    GroupLassoSP,
    L2SPFisher,
    SourceMismatchError,
    estimate_fisher,
    load_fisher,
    save_fisher,
)


class TinyNet(paddle.nn.Layer):
    def __init__(self, classes=2):
        super().__init__()
        self.conv = paddle.nn.Conv2D(2, 3, 2)
        self.bn = paddle.nn.BatchNorm2D(3)
        self.fc1 = paddle.nn.Linear(12, 4)
        self.head = paddle.nn.Linear(4, classes)

    def forward(self, x):
        x = paddle.nn.functional.relu(self.bn(self.conv(x)))
        return self.head(paddle.nn.functional.relu(self.fc1(x.flatten(1))))


def make_pair(float64=True):
    source = TinyNet(classes=5)
    target = TinyNet(classes=2)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head")}
    target.set_state_dict(state)
    # move away from the source so every penalty is non-zero
    for p in target.parameters():
        if not p.stop_gradient:
            p.set_value(p + 0.1 * paddle.randn(p.shape, dtype=p.dtype))
    return source, target


def np_params(model):
    return {n: p.numpy() for n, p in model.named_parameters()}


def regularized(weights_only):
    names = ["conv.weight", "fc1.weight"] if weights_only else [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc1.weight", "fc1.bias"]
    head = ["head.weight"] if weights_only else ["head.weight", "head.bias"]
    return names, head


def group_lasso_np(d, axis, eps):
    if d.ndim == 1:
        sq, p_g = d * d, 1
    else:
        others = tuple(a for a in range(d.ndim) if a != axis)
        sq, p_g = np.sum(d * d, axis=others), d.size // d.shape[axis]
    return np.sqrt(p_g) * np.sum(np.sqrt(sq + eps) - np.sqrt(eps))


FISHER_SEED = 3


def fake_fisher(model):
    rng = np.random.default_rng(FISHER_SEED)
    return {n: paddle.to_tensor(rng.uniform(0.1, 2.0, p.shape)) for n, p in model.named_parameters()}


def reference(kind, target, source, weights_only, alpha, beta, fisher=None, eps=1e-8):
    """Omega in numpy, straight from the formulas of ALGORITHMS.md section 3."""
    w, w0 = np_params(target), np_params(source)
    shared, head = regularized(weights_only)
    total = 0.0
    for n in shared:
        d = w[n] - w0[n]
        if kind == "l2":
            total += alpha / 2 * np.sum(w[n] ** 2)
        elif kind == "l2sp":
            total += alpha / 2 * np.sum(d**2)
        elif kind == "l1sp":
            total += alpha * np.sum(np.sqrt(d**2 + eps) - np.sqrt(eps))
        elif kind == "group":
            total += alpha * group_lasso_np(d, 1 if n == "fc1.weight" else 0, eps)
        elif kind == "fisher":
            total += alpha / 2 * np.sum(fisher[n].numpy() * d**2)
    return total + sum(beta / 2 * np.sum(w[n] ** 2) for n in head)


def build(kind, target, source, weights_only, alpha, beta):
    kw = dict(alpha=alpha, beta=beta, head=["head"], weights_only=weights_only)
    if kind == "l2":
        return L2(target, **kw)
    if kind == "l2sp":
        return L2SP(target, source, **kw)
    if kind == "l1sp":
        return L1SP(target, source, **kw)
    if kind == "group":
        return GroupLassoSP(target, source, **kw)
    return L2SPFisher(target, source, fisher=fake_fisher(source), **kw)


KINDS = ["l2", "l2sp", "l1sp", "group", "fisher"]


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_value_matches_numpy(kind, weights_only, float64):
    source, target = make_pair()
    reg = build(kind, target, source, weights_only, alpha=0.3, beta=0.05)
    expected = reference(kind, target, source, weights_only, 0.3, 0.05, fisher=fake_fisher(source))
    assert expected > 0
    np.testing.assert_allclose(float(reg()), expected, rtol=1e-10)
    names, head = regularized(weights_only)
    assert reg.regularized_names() == names + head


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_grad_matches_finite_differences(kind, weights_only, float64):
    source, target = make_pair()
    reg = build(kind, target, source, weights_only, alpha=0.3, beta=0.05)
    grads = reg.closed_form_grads()
    h = 1e-6
    for p, g in zip(reg.regularized_parameters(), grads):
        flat = p.numpy().ravel().copy()
        fd = np.empty_like(flat)
        for i in range(flat.size):
            for sign in (1, -1):
                bumped = flat.copy()
                bumped[i] += sign * h
                p.set_value(bumped.reshape(p.shape))
                value = float(reg())
                fd[i] = value if sign == 1 else (fd[i] - value) / (2 * h)
            p.set_value(flat.reshape(p.shape))
        np.testing.assert_allclose(g.numpy().ravel(), fd, rtol=1e-5, atol=1e-7, err_msg=p.name)


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_grad_matches_autograd(kind, float64):
    source, target = make_pair()
    reg = build(kind, target, source, False, alpha=0.3, beta=0.05)
    auto = paddle.grad(reg(), reg.regularized_parameters())
    for a, g in zip(auto, reg.closed_form_grads()):
        np.testing.assert_allclose(g.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)


def test_l2sp_is_zero_at_the_source(float64):
    source, target = make_pair()
    target.set_state_dict({k: v for k, v in source.state_dict().items() if not k.startswith("head")})
    reg = L2SP(target, source, alpha=1.0, beta=0.0, head=["head"])
    assert float(reg()) == 0.0
    assert all(float(paddle.abs(g).max()) == 0.0 for g in reg.closed_form_grads()[:-1])


def test_source_as_state_dict_and_as_file(tmp_path, float64):
    source, target = make_pair()
    path = str(tmp_path / "src.pdparams")
    paddle.save(source.state_dict(), path)
    a = L2SP(target, source, alpha=1.0, beta=0.1, head=["head"])
    b = L2SP(target, path, alpha=1.0, beta=0.1, head=["head"])
    c = L2SP(target, dict(source.state_dict()), alpha=1.0, beta=0.1, head=["head"])
    paddle.save([source.state_dict(), None], path)  # PaddleHub's older layout
    d = L2SP(target, path, alpha=1.0, beta=0.1, head=["head"])
    assert float(a()) == float(b()) == float(c()) == float(d())


def test_source_never_registered_as_parameters_or_saved():
    source, target = make_pair()
    reg = L2SP(target, source, alpha=1.0, beta=0.1, head=["head"])
    assert list(reg.parameters()) == []
    assert dict(reg.state_dict()) == {}


# -- bad input ----------------------------------------------------------------

def test_missing_head_declaration_lists_the_mismatch():
    source, target = make_pair()
    with pytest.raises(SourceMismatchError) as err:
        L2SP(target, source, alpha=1.0, beta=0.1)
    message = str(err.value)
    assert "head.weight (target [4, 2], source [4, 5])" in message
    assert "head=[" in message


def test_missing_and_extra_names_are_listed():
    source, target = make_pair()
    state = dict(source.state_dict())
    state["fc9.weight"] = state.pop("fc1.weight")
    with pytest.raises(SourceMismatchError) as err:
        L2SP(target, state, alpha=1.0, beta=0.1, head=["head"])
    message = str(err.value)
    assert "missing in the source (1): fc1.weight" in message
    assert "extra in the source (1): fc9.weight" in message
    state["fc1.weight"] = state["fc9.weight"]
    L2SP(target, state, alpha=1.0, beta=0.1, head=["head"], strict=False)


def test_unknown_head_prefix():
    source, target = make_pair()
    with pytest.raises(ValueError, match=r"head prefix\(es\) \['fc'\] match no parameter"):
        L2SP(target, source, alpha=1.0, beta=0.1, head=["fc"])


@pytest.mark.parametrize("field", ["alpha", "beta"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), None])
def test_invalid_coefficients(field, bad):
    source, target = make_pair()
    kw = {"alpha": 1.0, "beta": 1.0, field: bad}
    with pytest.raises(ValueError, match=f"Invalid {field}"):
        L2SP(target, source, head=["head"], **kw)


def test_source_required_and_checked():
    _, target = make_pair()
    with pytest.raises(ValueError, match="needs the source weights"):
        L2SP(target, alpha=1.0, beta=0.1, head=["head"])
    with pytest.raises(FileNotFoundError, match="nope.pdparams"):
        L2SP(target, "nope.pdparams", alpha=1.0, beta=0.1, head=["head"])
    with pytest.raises(TypeError, match="state dict"):
        L2SP(target, 42, alpha=1.0, beta=0.1, head=["head"])


def test_fisher_must_cover_shared_parameters():
    source, target = make_pair()
    fisher = fake_fisher(source)
    del fisher["conv.weight"]
    fisher["fc1.weight"] = paddle.ones([3, 3])
    with pytest.raises(SourceMismatchError) as err:
        L2SPFisher(target, source, fisher=fisher, alpha=1.0, beta=0.1, head=["head"])
    assert "missing (1): conv.weight" in str(err.value)
    assert "fc1.weight (parameter [12, 4], fisher [3, 3])" in str(err.value)


# -- Fisher estimation ------------------------------------------------------------

def softmax_regression_fisher(W, b, xs):
    """Exact diagonal Fisher of p = softmax(x W + b): per class k,
    d log p_k / dW = x (e_k - p)^T, d log p_k / db = e_k - p."""
    FW, Fb = np.zeros_like(W), np.zeros_like(b)
    for x in xs:
        z = x @ W + b
        p = np.exp(z - z.max())
        p /= p.sum()
        for k in range(len(p)):
            e = -p.copy()
            e[k] += 1
            FW += p[k] * np.outer(x, e) ** 2
            Fb += p[k] * e**2
    return FW / len(xs), Fb / len(xs)


def test_exact_fisher_matches_closed_form(float64):
    net = paddle.nn.Linear(4, 3)
    xs = np.random.default_rng(0).normal(size=(10, 4))
    data = [(paddle.to_tensor(xs[:6]), None), (paddle.to_tensor(xs[6:]), None)]
    fisher = estimate_fisher(net, data, mode="exact", progress=False)
    FW, Fb = softmax_regression_fisher(net.weight.numpy(), net.bias.numpy(), xs)
    np.testing.assert_allclose(fisher["weight"].numpy(), FW, rtol=1e-10)
    np.testing.assert_allclose(fisher["bias"].numpy(), Fb, rtol=1e-10)
    assert net.weight.grad is None  # gradients untouched


def test_sampled_fisher_is_unbiased_and_seeded(float64):
    net = paddle.nn.Linear(3, 2)
    xs = np.random.default_rng(1).normal(size=(400, 3))
    data = [paddle.to_tensor(xs)]
    a = estimate_fisher(net, data, mode="sampled", seed=5, progress=False)
    b = estimate_fisher(net, data, mode="sampled", seed=5, progress=False)
    np.testing.assert_array_equal(a["weight"].numpy(), b["weight"].numpy())
    FW, _ = softmax_regression_fisher(net.weight.numpy(), net.bias.numpy(), xs)
    np.testing.assert_allclose(a["weight"].numpy(), FW, rtol=0.2)


def test_fisher_max_samples_and_mode_restored():
    net = TinyNet()
    net.train()
    data = [paddle.randn([4, 2, 3, 3]) for _ in range(3)]
    fisher = estimate_fisher(net, data, max_samples=5, progress=False)
    assert net.training
    assert set(fisher) == {n for n, p in net.named_parameters() if not p.stop_gradient}


def test_fisher_bad_input():
    net = paddle.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Invalid mode"):
        estimate_fisher(net, [paddle.randn([1, 2])], mode="empirical")
    with pytest.raises(ValueError, match="empty"):
        estimate_fisher(net, [], progress=False)


def test_fisher_save_load_round_trip(tmp_path, float64):
    source, target = make_pair()
    fisher = estimate_fisher(source, [paddle.randn([3, 2, 3, 3])], progress=False)
    path = str(tmp_path / "fisher.pdparams")
    save_fisher(fisher, path)
    loaded = load_fisher(path)
    for n in fisher:
        np.testing.assert_array_equal(loaded[n].numpy(), fisher[n].numpy())
    a = L2SPFisher(target, source, fisher=fisher, alpha=1.0, beta=0.1, head=["head"])
    b = L2SPFisher(target, source, fisher=path, alpha=1.0, beta=0.1, head=["head"])
    assert float(a()) == float(b()) > 0
    paddle.save({"weight": paddle.ones([2])}, str(tmp_path / "other.pdparams"))
    with pytest.raises(ValueError, match="carries no digest record"):
        load_fisher(str(tmp_path / "other.pdparams"))
    files.save({"weight": paddle.ones([2])}, str(tmp_path / "other.pdparams"))
    with pytest.raises(ValueError, match="not a Fisher file"):
        load_fisher(str(tmp_path / "other.pdparams"))
