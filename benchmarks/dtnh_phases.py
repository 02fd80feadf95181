"""Where a DTNH step with a feature-map regularizer spends its time.

Times each phase of ``opt.update(loss, reg_loss)`` by hand on paddle.vision
ResNet-18 (CPU; median over steps):

    OMP_NUM_THREADS=2 python benchmarks/dtnh_phases.py --regularizer knowdist
"""

from __future__ import annotations

import argparse
import sys
import os
import statistics
import time

import paddle
import paddle.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

from paddle_dtnh.models.architectures import ARCHITECTURES, target_from
from lab import RunConfig, build_regularizer
from paddle_dtnh.projection import dtnh_direction


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regularizer", choices=["knowdist", "delta"], default="knowdist")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    paddle.seed(0)
    source = ARCHITECTURES[args.arch].build(1000)
    model = target_from(source, num_classes=10)
    reg = build_regularizer(args.regularizer, model, source, RunConfig())
    opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
    params = [p for p in model.parameters() if not p.stop_gradient]
    x = paddle.randn([args.batch_size, 3, args.image_size, args.image_size])
    y = paddle.randint(0, 10, [args.batch_size])

    phases = {k: [] for k in ["target forward", "source forward + distance", "backward of Omega",
                              "backward of J", "projection", "optimizer step",
                              "one backward of J + lam*Omega (baseline)"]}
    for step in range(args.steps + 1):
        t = [time.perf_counter()]
        with reg.capture() as feats:
            logits = model(x)
        t.append(time.perf_counter())
        omega = reg(x, feats)
        loss = F.cross_entropy(logits, y)
        t.append(time.perf_counter())
        g_reg = paddle.grad(omega, params, retain_graph=True, allow_unused=True)
        t.append(time.perf_counter())
        g_task = paddle.grad(loss, params, retain_graph=True, allow_unused=True)
        t.append(time.perf_counter())
        directions, _ = dtnh_direction(g_task, g_reg, 1.0, inplace=True)  # as DTNH does
        t.append(time.perf_counter())
        for p, d in zip(params, directions):
            p.grad = d
        opt.step()
        opt.clear_grad(set_to_zero=False)
        t.append(time.perf_counter())
        paddle.grad(loss + omega, params, allow_unused=True)
        t.append(time.perf_counter())
        if step > 0:  # the first step warms up
            for samples, a, b in zip(phases.values(), t, t[1:]):
                samples.append(b - a)

    print(f"| phase ({args.regularizer}, batch {args.batch_size}, {args.image_size}px) | ms |\n|---|---|")
    for name, samples in phases.items():
        print(f"| {name} | {1000 * statistics.median(samples):.0f} |")


if __name__ == "__main__":
    main()
