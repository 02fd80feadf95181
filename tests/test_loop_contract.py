"""docs/loop_contract.md: the custom loop written against that page alone
runs as written, and its two loops take the same steps, as the page says."""

import pathlib
import re

import numpy as np
import pytest

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "loop_contract.md"


def page_code():
    section = PAGE.read_text(encoding="utf-8").split("## A loop of your own", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_pages_loop_runs_and_both_loops_take_the_same_steps():
    scope = {}
    exec(compile(page_code(), str(PAGE), "exec"), scope)
    explicit, hook = scope["explicit"], scope["hook"]
    assert explicit.num_steps == hook.num_steps == 3 and explicit.skipped_steps == hook.skipped_steps == 0
    (a, b), source = scope["models"], scope["source"]
    for p, q, s in zip(a.parameters(), b.parameters(), source.parameters()):
        assert not np.allclose(p.numpy(), s.numpy())  # they trained
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    # the moving average the rule judges against is the same in both loops
    ema_a, ema_b = explicit.state_dict()["dtnh"]["ema_scaled"], hook.state_dict()["dtnh"]["ema_scaled"]
    assert ema_a.keys() == ema_b.keys() == {"weight", "bias"}
    for name in ema_a:
        np.testing.assert_allclose(ema_a[name].numpy(), ema_b[name].numpy(), rtol=1e-5, atol=1e-7)
    assert hook.last_stats["task_loss"] is not None  # note_task_loss reached the logs


def test_the_pages_hook_loop_is_not_the_sum_convention():
    """With accumulation="sum" the same (loss / 2) loop takes another step:
    the test above can tell the two conventions apart."""
    code = page_code().replace('for accumulation in ("sum", "mean")', 'for accumulation in ("sum", "sum")')
    scope = {}
    exec(compile(code, str(PAGE), "exec"), scope)
    a, b = scope["models"]
    assert not np.allclose(a.weight.numpy(), b.weight.numpy(), rtol=1e-5, atol=1e-6)


def test_a_regression_task_on_the_neutral_task_takes_the_explicit_loops_steps():
    """RegularizedTask knows no task: a regression subclass with KnowDist (gO
    needs the forward's omega) under a hand-written backward()/step() loop
    steps as the explicit loop does; ClassificationTask is hub's TransferTask."""
    import paddle
    import paddle.nn.functional as F

    from paddle_dtnh import DTNH
    from paddle_dtnh.integrations.hub import TransferTask
    from paddle_dtnh.integrations.task import ClassificationTask, RegularizedTask
    from paddle_dtnh.regularizers import KnowDist

    class Regression(RegularizedTask):
        def loss_and_metrics(self, output, batch):
            return F.mse_loss(output, batch[1]), {"mae": (output - batch[1]).abs().mean()}

    def build():
        paddle.seed(3)
        source = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 1))
        model = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 1))
        model.set_state_dict(source.state_dict())
        reg = KnowDist(model, source, layers=["1"], head=["2"])
        return model, reg, DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=0.5)

    rng = np.random.default_rng(0)
    batches = [(paddle.to_tensor(rng.standard_normal((6, 4)).astype("float32")),
                paddle.to_tensor(rng.standard_normal((6, 1)).astype("float32"))) for _ in range(3)]
    model_a, reg_a, explicit = build()
    for x, y in batches:
        output, omega = reg_a.run(x)
        explicit.update(F.mse_loss(output, y), omega)
    model_b, reg_b, hook = build()
    task = Regression(model_b, hook)
    start = [p.numpy().copy() for p in model_b.parameters()]
    for i, batch in enumerate(batches):
        out = task.training_step(batch, i)
        out["loss"].backward()
        hook.step()
        hook.clear_grad()
    assert hook.num_steps == 3 and "mae" in out["metrics"] and hook.last_stats["task_loss"] is not None
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    assert not any(np.allclose(p.numpy(), s) for p, s in zip(model_b.parameters(), start))  # it trained
    assert issubclass(TransferTask, ClassificationTask)
    with pytest.raises(NotImplementedError, match="loss_and_metrics"):
        RegularizedTask(model_b, hook).training_step(batches[0], 0)
