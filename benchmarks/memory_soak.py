"""Resident memory over a long DTNH run: no leaked hooks, graphs or tensors.

DTNH(KnowDist) (forward hooks, retain_graph, two paddle.grad per step) on a
tiny conv net, explicit and hook mode alternating, with and without the
diagnostics, beside the plain Paddle loop on the same net; prints the
resident set every ``--every`` steps and the growth after the warm-up. The
batches are made once (``paddle.to_tensor`` itself keeps a small object
alive per call, which would measure the script, not the library).

    OMP_NUM_THREADS=1 python benchmarks/memory_soak.py --steps 3000
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_dtnh import DTNH
from paddle_dtnh.regularizers import KnowDist


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(steps: int, every: int = 100, *, stats: bool = True, plain: bool = False) -> dict:
    """Run ``steps`` DTNH(KnowDist) steps (``plain``: bare Paddle steps);
    resident MB at every ``every`` steps."""
    paddle.seed(0)

    def net():
        return paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.BatchNorm2D(8), paddle.nn.ReLU(),
                                    paddle.nn.Conv2D(8, 8, 3, padding=1), paddle.nn.ReLU(),
                                    paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(8, 4))

    source, model = net(), net()
    reg = KnowDist(model, source, layers=["2", "4"], head=["7"])
    inner = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    opt = DTNH(inner, reg, lam=0.1, track_stats=stats)
    rng = np.random.default_rng(0)
    pool = [(paddle.to_tensor(rng.normal(size=(16, 3, 8, 8)).astype("float32")),
             paddle.to_tensor(rng.integers(0, 4, size=16))) for _ in range(8)]
    samples = {}
    for step in range(1, steps + 1):
        x, y = pool[step % len(pool)]
        if plain:
            F.cross_entropy(model(x), y).backward()
            inner.step()
            inner.clear_grad()
            if step % every == 0:
                samples[step] = rss_mb()
            continue
        logits, omega = reg.run(x)
        loss = F.cross_entropy(logits, y)
        if step % 2:
            opt.update(loss, omega)
        else:
            opt.regularize(omega)
            loss.backward()
            opt.step(loss)
            opt.clear_grad()
        if step % every == 0:
            samples[step] = rss_mb()
    hooks = sum(len(layer._forward_post_hooks) for _, layer in model.named_sublayers())
    hooks += sum(len(layer._forward_post_hooks) for _, layer in reg.source.named_sublayers())
    return {"rss_mb": samples, "hooks_left": hooks}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=500)
    args = p.parse_args()
    for label, kw in (("plain Paddle loop", dict(plain=True)), ("DTNH(KnowDist)", dict(stats=False)),
                      ("DTNH(KnowDist), stats every step", dict(stats=True))):
        result = soak(args.steps, args.every, **kw)
        first, last = list(result["rss_mb"].values())[0], list(result["rss_mb"].values())[-1]
        trace = ", ".join(f"{mb:.1f}" for mb in result["rss_mb"].values())
        print(f"{label}: resident MB every {args.every} steps: {trace}; growth from step "
              f"{min(result['rss_mb'])} to {max(result['rss_mb'])}: {last - first:+.2f} MB; "
              f"hooks left registered: {result['hooks_left']}")


if __name__ == "__main__":
    main()
