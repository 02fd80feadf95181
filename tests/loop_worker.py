"""Worker for test_loops_distributed.py: the loops users run at scale,
PaddleHub's Trainer and paddle.Model.fit, with DTNH, on a fixed dataset;
every rank saves its parameters. Run alone (1 process, whole batches) or
under ``python -m paddle.distributed.launch --nproc_per_node 2`` (half
batches each: together the same global batches)."""

import argparse
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from paddle_dtnh import DTNH  # noqa: E402
from paddle_dtnh.integrations.hub import TransferTask  # noqa: E402
from paddle_dtnh.regularizers import L2SP, KnowDist  # noqa: E402
from tests.dp_worker import Net  # noqa: E402


class PlainTask(paddle.nn.Layer):
    """A hub.Trainer model without TransferTask: its own training_step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch[0])
        loss = F.cross_entropy(logits, batch[1].reshape([-1, 1]))
        return {"loss": loss, "metrics": {}}


def build(regularizer):
    paddle.seed(0)
    source, model = Net(), Net()
    model.set_state_dict(source.state_dict())
    for q in model.parameters():  # start away from the source: Omega is non-zero
        q.set_value(q + 0.05 * paddle.randn(q.shape))
    if regularizer == "l2sp":
        reg = L2SP(model, source, alpha=1.0, beta=0.1, head=["fc"])
    else:
        reg = KnowDist(model, source, layers=["block1", "block2"], head=["fc"])
    opt = DTNH(paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=model.parameters()), reg, lam=2.0)
    return model, opt


def dataset(n=32):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3, 6, 6)).astype("float32")
    y = rng.integers(0, 4, size=(n, 1)).astype("int64")
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--loop", choices=["hub", "hub-plain", "hapi"], required=True)
    p.add_argument("--regularizer", choices=["l2sp", "knowdist"], default="l2sp")
    p.add_argument("--batch-size", type=int, required=True, help="per process")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1, help="paddle.Model's accumulate_grad_batches")
    p.add_argument("--out", required=True, help="a folder: rank<r>.npz")
    args = p.parse_args()
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        paddle.distributed.init_parallel_env()
    rank = paddle.distributed.get_rank()
    model, opt = build(args.regularizer)
    if args.loop.startswith("hub"):
        import paddlehub as hub

        task = TransferTask(model, opt) if args.loop == "hub" else PlainTask(model)
        checkpoints = os.path.join(args.out, "ckpt")
        os.makedirs(checkpoints, exist_ok=True)  # hub.Trainer lists it on every rank but makes it on rank 0 only
        trainer = hub.Trainer(task, opt, use_vdl=False, checkpoint_dir=checkpoints)
        trainer.train(dataset(), epochs=args.epochs, batch_size=args.batch_size, log_interval=1000,
                      save_interval=1000)
    else:
        hapi = paddle.Model(TransferTask(model, opt))
        hapi.prepare(opt, paddle.nn.CrossEntropyLoss())
        hapi.fit(dataset(), epochs=args.epochs, batch_size=args.batch_size, shuffle=False, verbose=0,
                 accumulate_grad_batches=args.accumulate)
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **{n: q.numpy() for n, q in model.named_parameters()})


if __name__ == "__main__":
    main()
