"""Writes tests/data/dtnh-0.4.0.pdparams with paddle_dtnh 0.4.0 (commit
25a1add): a never_hurt DTNH (moving-average reference, cap) over a
Linear(4, 3) with L2-SP, its model and optimizer state after 3 steps, and
the weights 3 steps later; and a hook-mode trace (two micro-batches,
``accumulation="mean"``, the diagnostics on, one non-finite batch skipped):
the weights and stats after every step. tests/test_structure.py resumes
from the first and replays the second with the current code, bit for bit.

    git worktree add --detach /tmp/v04 25a1add
    PYTHONPATH=/tmp/v04 OMP_NUM_THREADS=1 python tests/data/make_0_4_checkpoint.py tests/data/dtnh-0.4.0.pdparams
"""

import sys

import numpy as np
import paddle
import paddle.nn.functional as F


def build():
    from paddle_dtnh import DTNH
    from paddle_dtnh.regularizers import L2SP

    paddle.seed(0)
    source = paddle.nn.Linear(4, 3)
    model = paddle.nn.Linear(4, 3)
    model.set_state_dict(source.state_dict())
    reg = L2SP(model, source, alpha=0.1, beta=0.01)
    opt = DTNH(paddle.optimizer.Momentum(0.1, parameters=model.parameters()), reg, lam=1.0, preset="never_hurt",
               lam_decay=0.5, steps_per_epoch=2)
    return model, reg, opt


def batches():
    rng = np.random.default_rng(7)
    return [(paddle.to_tensor(rng.standard_normal((8, 4)).astype(np.float32)),
             paddle.to_tensor(rng.integers(0, 3, 8))) for _ in range(6)]


def frozen(value):
    """``value`` with every tensor copied to NumPy now (state dicts hold live tensors)."""
    if isinstance(value, dict):
        return {k: frozen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(frozen(v) for v in value)
    return value.numpy().copy() if isinstance(value, paddle.Tensor) else value


def train(model, reg, opt, data):
    for x, y in data:
        logits, omega = reg.run(x)
        opt.update(F.cross_entropy(logits, y), omega)


def hook_trace():
    """Hook mode, paper's rule, two half-batches a step, batch 2 non-finite:
    per step, the weights, the counters and the stats (as NumPy)."""
    from paddle_dtnh import DTNH
    from paddle_dtnh.regularizers import L2SP

    paddle.seed(1)
    source = paddle.nn.Linear(4, 3)
    model = paddle.nn.Linear(4, 3)
    model.set_state_dict(source.state_dict())
    reg = L2SP(model, source, alpha=0.1, beta=0.01)
    opt = DTNH(paddle.optimizer.Momentum(0.1, parameters=model.parameters()), reg, lam=2.0,
               accumulation="mean", track_stats=True, model=model)
    trace = []
    for i, (x, y) in enumerate(batches()[:4]):
        if i == 2:
            x = x * float("nan")
        for xs, ys in ((x[:4], y[:4]), (x[4:], y[4:])):
            output, omega = reg.run(xs)
            opt.regularize(omega)
            (F.cross_entropy(output, ys) / 2).backward()
        opt.step()
        opt.clear_grad()
        trace.append(frozen({"weights": model.state_dict(), "num_steps": opt.num_steps,
                             "skipped_steps": opt.skipped_steps, "stats": dict(opt.last_stats)}))
    return trace


if __name__ == "__main__":
    import paddle_dtnh

    model, reg, opt = build()
    data = batches()
    train(model, reg, opt, data[:3])
    saved = {"version": paddle_dtnh.__version__, "model": frozen(model.state_dict()),
             "optimizer": frozen(opt.state_dict())}
    train(model, reg, opt, data[3:])
    saved["after"] = frozen(model.state_dict())
    saved["hook_trace"] = hook_trace()
    paddle.save(saved, sys.argv[1])
