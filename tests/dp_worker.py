"""Worker for test_distributed.py: a few DTNH steps on this rank's share of a
fixed batch; rank 0 saves the parameters. Run alone (1 process, whole batch)
or under `python -m paddle.distributed.launch --nproc_per_node 2`."""

import argparse
import sys

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from paddle_dtnh import DTNH  # noqa: E402
from paddle_dtnh.regularizers import L2SP, KnowDist  # noqa: E402


class Net(paddle.nn.Layer):
    """Conv net without BatchNorm: batch statistics would differ between a
    half batch and the whole batch, data parallelism or not."""

    def __init__(self):
        super().__init__()
        self.block1 = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.ReLU())
        self.block2 = paddle.nn.Sequential(paddle.nn.Conv2D(8, 8, 3, stride=2, padding=1), paddle.nn.ReLU())
        self.fc = paddle.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(paddle.mean(self.block2(self.block1(x)), axis=[2, 3]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["l2sp", "knowdist", "none-mismatch"], required=True)
    p.add_argument("--hook", action="store_true", help="loss.backward(); opt.step() instead of update()")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    world = 1
    if dist.get_world_size() > 1:
        dist.init_parallel_env()
        world = dist.get_world_size()
    rank = dist.get_rank() if world > 1 else 0
    paddle.seed(0)
    source, model = Net(), Net()
    model.set_state_dict(source.state_dict())
    for q in model.parameters():  # start away from the source: Omega is non-zero
        q.set_value(q + 0.05 * paddle.randn(q.shape))
    if args.mode == "none-mismatch":  # rank 1 skips block2: its gradients are None there only
        opt = DTNH(paddle.optimizer.SGD(0.05, parameters=model.parameters()), lam=0.0)
        x = paddle.randn([2, 3, 6, 6])
        h = model.block1(x) if rank == 1 else model.block2(model.block1(x))
        opt.update(paddle.mean(h))
        return
    if args.mode == "l2sp":
        reg = L2SP(model, source, alpha=1.0, beta=0.1, head=["fc"])
    else:
        reg = KnowDist(model, source, layers=["block1", "block2"], head=["fc"])
    opt = DTNH(paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=model.parameters()), reg, lam=2.0)
    network = paddle.DataParallel(model) if world > 1 else model

    rng = np.random.default_rng(1)
    for _ in range(args.steps):
        x = rng.normal(size=(8, 3, 6, 6)).astype("float32")
        y = rng.integers(0, 4, size=8)
        share = slice(rank * 8 // world, (rank + 1) * 8 // world)
        x, y = paddle.to_tensor(x[share]), paddle.to_tensor(y[share])
        if args.mode == "l2sp":
            loss = F.cross_entropy(network(x), y)
            omega = None
        else:
            with reg.capture() as feats:
                logits = network(x)
            loss, omega = F.cross_entropy(logits, y), reg(x, feats)
        if args.hook:
            if omega is not None:
                opt.regularize(omega)
            loss.backward()
            opt.step()
            opt.clear_grad()
        else:
            opt.update(loss, omega)
    if rank == 0:
        np.savez(args.out, **{n: q.numpy() for n, q in model.named_parameters()})


if __name__ == "__main__":
    main()
