"""Worker for test_reliability.py: DTNH(Adam, L2-SP) on a tiny conv net with
BatchNorm, a checkpoint after every step, resuming from it when present.
``--kill-at K`` SIGKILLs the process right after step K's checkpoint;
``--kill-while-saving K`` SIGKILLs it inside step K's save, before the rename."""

import argparse
import os
import signal
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
import paddle_dtnh.io.checkpoint as checkpoint  # noqa: E402
import paddle_dtnh.io.files as files  # noqa: E402
from paddle_dtnh import DTNH  # noqa: E402
from paddle_dtnh.regularizers import L2SP  # noqa: E402


def build():
    paddle.seed(0)
    def net():
        return paddle.nn.Sequential(paddle.nn.Conv2D(3, 6, 3), paddle.nn.BatchNorm2D(6), paddle.nn.ReLU(),
                                    paddle.nn.Flatten(), paddle.nn.Linear(6 * 16, 4))
    source, model = net(), net()
    for q in model.parameters():
        if not q.stop_gradient:
            q.set_value(q + 0.1 * paddle.randn(q.shape))
    reg = L2SP(model, source, alpha=1.0, beta=0.1, head=["4"])
    opt = DTNH(paddle.optimizer.Adam(0.01, parameters=model.parameters()), reg, lam=1.0, lam_decay=0.9,
               steps_per_epoch=2)
    return model, opt


def batch(step):
    rng = np.random.default_rng(1000 + step)  # the data of a step depends on the step only
    return (paddle.to_tensor(rng.normal(size=(8, 3, 6, 6)).astype("float32")),
            paddle.to_tensor(rng.integers(0, 4, size=8)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kill-at", type=int)
    p.add_argument("--kill-while-saving", type=int)
    args = p.parse_args()
    model, opt = build()
    start = checkpoint.load_checkpoint(args.ckpt, model, opt)["step"] if os.path.exists(args.ckpt) else 0
    for step in range(start, args.steps):
        x, y = batch(step)
        opt.update(F.cross_entropy(model(x), y))
        if step + 1 == args.kill_while_saving:
            files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save_checkpoint(args.ckpt, model, opt, step=step + 1)
        if step + 1 == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    np.savez(args.out, **{k: v.numpy() for k, v in model.state_dict().items()})


if __name__ == "__main__":
    main()
