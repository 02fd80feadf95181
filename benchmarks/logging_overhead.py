"""Cost of VisualDL logging: DTNH with and without a DTNHLogger.

ResNet-18 (paddle.vision), one process, the configurations stepping in
turn (round-robin) so machine noise hits both alike; median step time.

    OMP_NUM_THREADS=2 python benchmarks/logging_overhead.py --regularizer l2sp
"""

from __future__ import annotations

import argparse
import sys
import os
import statistics
import tempfile
import time

import paddle
import paddle.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

from paddle_dtnh import DTNH
from paddle_dtnh.models.architectures import ARCHITECTURES, target_from
from lab import RunConfig, build_regularizer
from paddle_dtnh.integrations.visualdl import DTNHLogger


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regularizer", choices=["l2sp", "knowdist"], default="l2sp")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default="resnet18")
    parser.add_argument("--interval", type=int, default=10, help="logging interval (default: 10, the default)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    paddle.seed(0)
    source = ARCHITECTURES[args.arch].build(1000)
    x = paddle.randn([args.batch_size, 3, args.image_size, args.image_size])
    y = paddle.randint(0, 10, [args.batch_size])
    logdir = tempfile.mkdtemp(prefix="dtnh_vdl_")

    def build(logger):
        model = target_from(source, num_classes=10)
        reg = build_regularizer(args.regularizer, model, source, RunConfig())
        opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()), reg, lam=1.0, logger=logger)

        def step():
            logits, omega = reg.run(x)
            opt.update(F.cross_entropy(logits, y), omega)

        return step

    configs = {"no logger": build(None), f"logger, interval {args.interval}": build(DTNHLogger(logdir, args.interval))}
    samples = {k: [] for k in configs}
    for r in range(args.rounds + 2):
        for name in (list(configs) if r % 2 else list(configs)[::-1]):
            start = time.perf_counter()
            configs[name]()
            if r >= 2:
                samples[name].append(time.perf_counter() - start)
    base, logged = (statistics.mean(v) for v in samples.values())
    for name, v in samples.items():
        print(f"{name}: mean {1000 * statistics.mean(v):.1f} ms, median {1000 * statistics.median(v):.1f} ms")
    print(f"overhead (mean step time, logging steps included): {100 * (logged / base - 1):+.1f}%")


if __name__ == "__main__":
    main()
