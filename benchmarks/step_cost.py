"""Cost of one training step per method, and of DELTA's attention.

paddle.vision ResNet-18 on a fixed random batch, on the current device.
Step times: every method in one process, interleaved round-robin, median
over --steps rounds (ratios between methods are what this measures well).
Peak memory: each method alone in a fresh process, so the peak is its own:
on GPU the peak allocated by Paddle, on CPU the peak resident set of the
process (Paddle's runtime included: compare differences, not absolutes).

    OMP_NUM_THREADS=2 python benchmarks/step_cost.py --json step_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

# method names as in the harness (lab.method_spec); "finetune" is
# the L2 regularizer without projection there too
METHODS = ["finetune", "l2sp", "dtnh_l2sp", "dtnh_l2sp@never_hurt", "knowdist", "dtnh_knowdist",
           "dtnh_knowdist@never_hurt", "delta", "dtnh_delta", "dtnh_delta@never_hurt"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--image-size", type=int, default=32, help="input height and width (default: 32)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--methods", nargs="+", default=METHODS, metavar="METHOD",
                        help="methods to time, as in demo/transfer.py, e.g. dtnh_l2sp@coordinate_ema "
                             f"(default: {' '.join(METHODS)})")
    parser.add_argument("--attention-batch", type=int, default=8,
                        help="images in the attention comparison; 0 skips it (default: 8)")
    parser.add_argument("--holdout-every", type=int, default=None,
                        help="steps between held-out refreshes of holdout rules (default: the rule's)")
    parser.add_argument("--arch", default="resnet18", help="resnet18 or resnet18_vd (default: resnet18)")
    parser.add_argument("--device", default=None, help="cpu or gpu (default: Paddle's current device)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    return parser.parse_args(argv)


def _setup(args):
    import paddle

    from paddle_dtnh.models.architectures import ARCHITECTURES, target_from

    if args.device:
        paddle.set_device(args.device)
    paddle.seed(0)
    source = ARCHITECTURES[args.arch].build(1000)
    model = target_from(source, num_classes=10)
    x = paddle.randn([args.batch_size, 3, args.image_size, args.image_size])
    y = paddle.randint(0, 10, [args.batch_size])
    return paddle, source, model, x, y


def _peak_memory_mb(paddle):
    if paddle.device.is_compiled_with_cuda() and "gpu" in paddle.device.get_device():
        return paddle.device.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def build_step(args, name, paddle, source, x, y):
    """A fresh model, regularizer and optimizer for ``name``; returns its step()."""
    import paddle.nn.functional as F

    from paddle_dtnh import DTNH
    from paddle_dtnh.models.architectures import target_from
    from lab import RunConfig, build_regularizer, method_spec

    paddle.seed(0)
    model = target_from(source, num_classes=10)
    spec = method_spec(name)
    reg = build_regularizer(spec.regularizer, model, source, RunConfig())  # DELTA: uniform attention
    inner = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
    holdout, rule = None, spec.rule
    if rule.reference == "holdout":  # a held-out batch of the same size, refreshed per the rule
        if args.holdout_every:
            rule = rule.replace(holdout_every=args.holdout_every)
        x_held, y_held = paddle.randn(x.shape), paddle.randint(0, 10, y.shape)
        holdout = lambda: F.cross_entropy(model(x_held), y_held)  # noqa: E731
    opt = DTNH(inner, reg, lam=1.0, preset=rule, holdout=holdout)
    on_cpu = paddle.device.get_device() == "cpu"

    def step():
        logits, omega = reg.run(x)
        opt.update(F.cross_entropy(logits, y), omega)
        if not on_cpu:  # kernels run asynchronously on accelerators
            paddle.device.synchronize()

    return step


def peak_memory_of(args, name):
    """Run ``name`` alone in this process for a few steps; print its peak memory."""
    paddle, source, _, x, y = _setup(args)
    step = build_step(args, name, paddle, source, x, y)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mem_mb": _peak_memory_mb(paddle)}))


def time_methods(args):
    """Median step time per method, all in this process and interleaved
    round-robin (rotating the order), so machine noise hits every method alike.
    A held-out rule refreshes every k steps, so its cost is the mean over
    the rounds (the median would hide the refreshes): time a multiple of k steps."""
    from lab import method_spec

    paddle, source, _, x, y = _setup(args)
    steps = {name: build_step(args, name, paddle, source, x, y) for name in args.methods}
    samples = {name: [] for name in args.methods}
    names = list(args.methods)
    for r in range(args.warmup + args.steps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            if r >= args.warmup:
                samples[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    amortized = {name for name in names if method_spec(name).rule.reference == "holdout"}
    return {name: 1000 * (statistics.mean(v) if name in amortized else statistics.median(v))
            for name, v in samples.items()}


def time_attention(args):
    from paddle_dtnh.attention import compute_attention

    paddle, source, _, _, _ = _setup(args)
    n = args.attention_batch
    data = [(paddle.randn([n, 3, args.image_size, args.image_size]), paddle.randint(0, 10, [n]))]
    head = compute_attention(source, data, num_classes=10, fe_epochs=1, progress=False).meta["head"]
    result = {}
    for method in ("batched", "brute_force"):
        start = time.perf_counter()
        att = compute_attention(source, data, num_classes=10, method=method, head=head, progress=True)
        result[f"{method}_s"] = time.perf_counter() - start
        result[method] = att
    gap = max(float(abs(result["batched"].gaps[k] - result["brute_force"].gaps[k]).max())
              for k in result["batched"].layers)
    return {"batched_s": result["batched_s"], "brute_force_s": result["brute_force_s"],
            "max_abs_gap_difference": gap}


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        peak_memory_of(args, args.one)
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = {}
    for name in args.methods:
        print(f"peak memory of {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, *forwarded, "--one", name],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    for name, step_ms in time_methods(args).items():
        results[name] = {"step_ms": step_ms, **results[name]}
    attention = time_attention(args) if args.attention_batch > 0 else None
    config = {
        "arch": args.arch, "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
        "warmup": args.warmup, "attention_batch": args.attention_batch,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine(),
        "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    import paddle

    config.update(paddle=paddle.__version__, device=args.device or paddle.device.get_device())

    print("\n| method | step (ms) | vs. baseline | peak memory (MB) |\n|---|---|---|---|")
    for name, r in results.items():
        base = name.partition("@")[0].replace("dtnh_", "") if name.startswith("dtnh_") else None
        ratio = f"{r['step_ms'] / results[base]['step_ms']:.2f}x {base}" if base in results else ""
        print(f"| {name} | {r['step_ms']:.0f} | {ratio} | {r['peak_mem_mb']:.0f} |")
    if attention:
        print(f"\nDELTA attention on {args.attention_batch} images: batched {attention['batched_s']:.1f} s, "
              f"brute force {attention['brute_force_s']:.1f} s "
              f"({attention['brute_force_s'] / attention['batched_s']:.1f}x), "
              f"max |gap difference| {attention['max_abs_gap_difference']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"methods": results, "attention": attention, "config": config}, f, indent=2)


if __name__ == "__main__":
    main()
