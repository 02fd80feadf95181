"""What the source-fit test costs against one training epoch.

The test is one forward pass of the training images through the source and
through a random copy of it, plus two closed forms in float64 on the n x d
feature matrix; an epoch is one DTNH training pass over the same images.
Prints both times (best of --repeats) and their ratio.

    OMP_NUM_THREADS=2 python benchmarks/source_fit_cost.py            # 10 images per class of digits
    OMP_NUM_THREADS=2 python benchmarks/source_fit_cost.py --per-class 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="digits")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=20, help="training batch (the evidence's: 20)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from paddle_dtnh import DTNH, source_fit
    from paddle_dtnh.data import few_shot_indices, load_dataset, to_tensor_batch
    from paddle_dtnh.models.architectures import target_from
    from paddle_dtnh.regularizers import L2SP

    target = load_dataset(args.target)
    idx = few_shot_indices(target.train.labels, args.per_class, 0)
    x = to_tensor_batch(target.train.images[idx], args.image_size)
    y = paddle.to_tensor(target.train.labels[idx])
    paddle.seed(0)
    source = paddle.vision.models.resnet18(num_classes=10)

    def test():
        return source_fit(source, x, y, head="fc")

    def epoch():
        model = target_from(source, target.num_classes)
        reg = L2SP(model, source, alpha=0.1, beta=0.01, head=["fc"])
        opt = DTNH(paddle.optimizer.Momentum(0.01, parameters=model.parameters()), reg, lam=1.0)
        for lo in range(0, len(idx), args.batch_size):
            logits, omega = reg.run(x[lo : lo + args.batch_size])
            opt.update(F.cross_entropy(logits, y[lo : lo + args.batch_size]), omega)

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    report = test()
    t_test, t_epoch = best(test), best(epoch)
    print(f"{len(idx)} images ({args.per_class} per class of {args.target}) at {args.image_size}x{args.image_size}, "
          f"{report.num_features} features, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"source-fit test: {t_test:.2f} s; one DTNH (L2-SP, paper) epoch of batch {args.batch_size}: "
          f"{t_epoch:.2f} s; ratio {t_test / t_epoch:.2f}")
    print(report.summary())
    return np.array([t_test, t_epoch])


if __name__ == "__main__":
    main()
