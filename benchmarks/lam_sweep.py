"""Accuracy against lam: does a conflict rule keep a regularizer from hurting?

For every source -> target pair, regularizer and lam, runs the regularizer
without projection (vanilla), with DTNH under each conflict rule given, and
fine-tuning as the reference line; several seeds each. Resumable: finished
runs are kept in ``runs.jsonl`` and skipped when the command is repeated.

Writes into --output: ``table.md`` (mean ± std of the test accuracy per
lam, the paired per-seed difference against vanilla, the share of the gap
to fine-tuning recovered where the regularizer hurts and the share of its
gain kept where it helps, the diagnostics), ``results.json``, and one PNG
per regularizer and pair (accuracy against lam, log axis).

    # screen the rules at one lam per setting
    OMP_NUM_THREADS=2 python benchmarks/lam_sweep.py --pairs mnist5k:digits --regularizers l2sp \\
        --lams 10 --rules paper layer_project layer_drop global_drop coordinate layer_drop_ema coordinate_ema
    # sweep lam
    OMP_NUM_THREADS=2 python benchmarks/lam_sweep.py --lams 0.01 0.1 1 10 100 --rules paper never_hurt
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


def parse_args(argv=None):
    from paddle_dtnh.models.architectures import ARCHITECTURES
    from lab import CANDIDATES, HOLDOUT_SOURCES, REGULARIZERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["mnist5k:digits", "fashion-mnist:digits"], metavar="SOURCE:TARGET",
                   help="source dataset (pretrained here) and target (default: mnist5k:digits fashion-mnist:digits)")
    p.add_argument("--regularizers", nargs="+", default=["l2sp", "knowdist"],
                   choices=[r for r in REGULARIZERS if r != "l2"], help="default: l2sp knowdist")
    p.add_argument("--lams", nargs="+", type=float, default=None,
                   help="lam values (default per regularizer: l2sp 0.1 1 10 100 1000, knowdist 0.001 0.01 0.1 1 10)")
    p.add_argument("--rules", nargs="+", default=["paper", "never_hurt"], choices=list(CANDIDATES),
                   help="DTNH conflict rules to run beside vanilla (default: paper never_hurt)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="resnet18", help="network (default: resnet18)")
    p.add_argument("--iterations", type=int, default=60, help="steps per run (default: 60)")
    p.add_argument("--max-test", type=int, default=500, help="test images evaluated (default: 500)")
    p.add_argument("--output", default="output/lam_sweep", help="default: output/lam_sweep")
    p.add_argument("--cache", default=os.path.join("output", "sources"), help="pretrained source cache")
    p.add_argument("--source-epochs", type=int, default=1, help="source pretraining epochs (default: 1)")
    p.add_argument("--source-images", type=int, default=4000, help="source pretraining images (default: 4000)")
    p.add_argument("--per-class", type=int, default=10, help="target training images per class (default: 10)")
    p.add_argument("--holdout-per-class", type=int, default=2,
                   help="held-out images per class of the holdout rules (default: 2)")
    p.add_argument("--holdout-source", choices=list(HOLDOUT_SOURCES), default="budget",
                   help="held-out images beyond the training set (extra), out of it (budget), rotating "
                        "folds of it (cross), or the next step's batch (next) (default: budget)")
    p.add_argument("--holdout-every", type=int, default=1, help="steps between held-out refreshes (default: 1)")
    p.add_argument("--report-only", action="store_true", help="write the tables and plots from finished runs")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.seeds <= 0 or args.iterations <= 0:
        p.error("--seeds and --iterations must be positive")
    if any(lam < 0 for lam in args.lams or []):
        p.error("--lams must be >= 0")
    for pair in args.pairs:
        if pair.count(":") != 1:
            p.error(f"--pairs takes SOURCE:TARGET, got {pair!r}")
    return args


DEFAULT_LAMS = {"l2sp": [0.1, 1.0, 10.0, 100.0, 1000.0], "knowdist": [0.001, 0.01, 0.1, 1.0, 10.0],
                "delta": [0.01, 0.1, 1.0, 10.0, 100.0]}


def grid(args):
    """Every run of the sweep: (pair, regularizer, lam, method, seed); fine-tuning once per pair."""
    runs = []
    for pair in args.pairs:
        for seed in range(args.seeds):
            runs.append((pair, "l2", None, "finetune", seed))
        for reg in args.regularizers:
            for lam in args.lams or DEFAULT_LAMS[reg]:
                for seed in range(args.seeds):
                    runs.append((pair, reg, lam, reg, seed))
                    runs += [(pair, reg, lam, f"dtnh_{reg}@{rule}", seed) for rule in args.rules]
    return runs


def config(args, reg, lam):
    from lab import RunConfig

    cfg = RunConfig(arch=args.arch, iterations=args.iterations, eval_interval=args.iterations, stats_interval=5,
                    max_test=args.max_test, per_class=args.per_class, holdout_per_class=args.holdout_per_class,
                    holdout_source=args.holdout_source, holdout_every=args.holdout_every)
    if lam is not None:
        cfg.lam[reg] = lam
    return cfg


def _stats(values):
    values = np.asarray(values, dtype=float)
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0, sem


def variant(run) -> str:
    """A run's method, with its held-out protocol where its rule has one."""
    from lab import CANDIDATES

    cfg = run.get("config", {})
    rule = run["method"].partition("@")[2]
    if rule not in CANDIDATES or CANDIDATES[rule].reference != "holdout" or not cfg.get("holdout_per_class"):
        return run["method"]
    images = "batch" if cfg["holdout_source"] == "next" else f"{cfg['holdout_per_class']}/class"
    return f"{run['method']} [{cfg['holdout_source']} {images}, every {cfg['holdout_every']}]"


def pair_label(run) -> str:
    """A run's pair, with its source's pretraining where it was not the first
    sweep's (runs stored before the field existed had the class-split
    Fashion-MNIST sources, always pretrained 4 epochs on 30000 images)."""
    epochs, images = run.get("source_epochs"), run.get("source_images")
    if epochs is None:
        epochs, images = (4, 30000) if run["pair"].startswith("fashion-mnist-") else (1, 4000)
    return run["pair"] if (epochs, images) == (1, 4000) else f"{run['pair']} (source: {epochs} epochs of {images})"


def report(runs, args) -> str:
    """Markdown: per pair, regularizer and lam, every method's accuracy and its
    paired difference against vanilla; the goals' shares; the diagnostics."""
    from lab import goal_text

    by = {}
    for r in runs:
        by.setdefault((pair_label(r), variant(r), r["lam"]), {})[r["seed"]] = r
    lines = []
    for pair in sorted({pair_label(r) for r in runs}):
        finetune = by.get((pair, "finetune", None), {})
        ft_acc = [100 * r["test_accuracy"] for r in finetune.values()]
        ft_text = f"{_stats(ft_acc)[0]:.2f} ± {_stats(ft_acc)[1]:.2f} (n={len(ft_acc)})" if ft_acc else "-"
        for reg in args.regularizers:
            lams = args.lams or DEFAULT_LAMS[reg]
            named = [reg] + [f"dtnh_{reg}@{rule}" for rule in args.rules]
            methods = sorted({m for (p, m, _) in by if p == pair and m.split(" [")[0] in named},
                             key=lambda m: (named.index(m.split(" [")[0]), m))
            if not any((pair, m, lam) in by for m in methods for lam in lams):
                continue  # this pair was not run with this regularizer
            lines += [f"\n**{pair.replace(':', ' -> ', 1)}, {reg}** (fine-tuning: {ft_text})\n",
                      "| lam | method | accuracy (%) | vs vanilla, paired (points, mean ± SE) | goal | "
                      "conflicting steps | gO removed | Angle 1 / Angle 3 (deg) | distance to source |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for lam in sorted(lams):
                vanilla = by.get((pair, reg, lam), {})
                for method in methods:
                    cell = by.get((pair, method, lam), {})
                    if not cell:
                        continue
                    acc = [100 * r["test_accuracy"] for r in cell.values()]
                    mean, std, _ = _stats(acc)
                    seeds = sorted(set(cell) & set(vanilla))
                    diff = [100 * (cell[s]["test_accuracy"] - vanilla[s]["test_accuracy"]) for s in seeds]
                    diff_text = "" if method == reg or not diff else "{:+.2f} ± {:.2f}".format(*_stats(diff)[::2])
                    goal = goal_text(cell, vanilla, finetune, method == reg)
                    diag = lambda k, fmt: (fmt(np.mean([r[k] for r in cell.values() if r.get(k) is not None]))
                                           if any(r.get(k) is not None for r in cell.values()) else "-")
                    lines.append(
                        f"| {lam:g} | {method} | {mean:.2f} ± {std:.2f} (n={len(acc)}) | {diff_text} | {goal} "
                        f"| {diag('conflict_rate', lambda v: f'{100 * v:.0f}%')} "
                        f"| {diag('mean_reg_removed', lambda v: f'{100 * v:.1f}%')} "
                        f"| {diag('mean_angle1', lambda v: f'{v:.1f}')} / {diag('mean_angle3', lambda v: f'{v:.1f}')} "
                        f"| {diag('distance_to_source', lambda v: f'{v:.2f}')} |")
    return "\n".join(lines)


def plot(runs, args, output) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for pair in sorted({pair_label(r) for r in runs}):
        ft = [100 * r["test_accuracy"] for r in runs if pair_label(r) == pair and r["method"] == "finetune"]
        for reg in args.regularizers:
            lams = args.lams or DEFAULT_LAMS[reg]
            if not any(pair_label(r) == pair and r["regularizer"] == reg for r in runs):
                continue
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            named = [reg] + [f"dtnh_{reg}@{rule}" for rule in args.rules]
            for method in sorted({variant(r) for r in runs if pair_label(r) == pair and r["method"] in named},
                                 key=lambda m: (named.index(m.split(" [")[0]), m)):
                xs, means, stds = [], [], []
                for lam in sorted(lams):
                    acc = [100 * r["test_accuracy"] for r in runs
                           if pair_label(r) == pair and variant(r) == method and r["lam"] == lam]
                    if acc:
                        xs.append(lam)
                        means.append(np.mean(acc))
                        stds.append(np.std(acc))
                if xs:
                    label = "vanilla" if method == reg else method.split("@", 1)[1]
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
            if ft:
                ax.axhline(np.mean(ft), color="gray", linestyle="--", label="fine-tuning")
            ax.set_xscale("log")
            ax.set(xlabel="lam", ylabel="test accuracy (%)", title=f"{reg}: {pair.replace(':', ' -> ', 1)}")
            ax.legend(fontsize=8)
            slug = pair.split(" ")[0].replace(":", "_to_") + ("_strong" if " (source" in pair else "")
            path = os.path.join(output, f"lam_sweep_{reg}_{slug}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def extra_key(args, spec) -> list:
    """Settings beyond the first sweep's protocol, in the run key only where
    they differ from it (so the first sweep's runs keep their keys)."""
    extra = [args.arch] if args.arch != "resnet18" else []
    if (args.source_epochs, args.source_images) != (1, 4000):
        extra.append({"source_epochs": args.source_epochs, "source_images": args.source_images})
    if args.per_class != 10:
        extra.append({"per_class": args.per_class})
    if spec.rule.reference == "holdout":
        extra.append({"holdout_per_class": args.holdout_per_class, "holdout_source": args.holdout_source,
                      "holdout_every": args.holdout_every})
    return extra


def main(argv=None):
    args = parse_args(argv)
    from paddle_dtnh.data import load_dataset
    from lab import RunStore, method_spec, pretrain_source, run_transfer, summarize_diagnostics

    os.makedirs(args.output, exist_ok=True)
    store = RunStore(os.path.join(args.output, "runs.jsonl"))
    cells = grid(args)
    # the key holds the rule's options, so redefining a preset never reuses stale runs
    keyed = [(cell, store.key(*cell, method_spec(cell[3]).resolved_options, args.iterations, args.max_test,
                              *extra_key(args, method_spec(cell[3]))))
             for cell in cells]
    todo = [(cell, key) for cell, key in keyed if key not in store.runs]
    print(f"{len(cells)} runs, {len(cells) - len(todo)} already done", flush=True)
    started = time.time()
    sources, targets = {}, {}
    for i, ((pair, reg, lam, method, seed), key) in enumerate([] if args.report_only else todo, 1):
        source, target = pair.split(":")
        if source not in sources:
            sources[source] = pretrain_source(source, cache_dir=args.cache, progress=not args.no_progress,
                                              arch=args.arch, epochs=args.source_epochs,
                                              max_images=args.source_images)
        if target not in targets:
            targets[target] = load_dataset(target)
        result = run_transfer(method, sources[source], targets[target], config(args, reg, lam), seed=seed,
                              progress=not args.no_progress)
        diagnostics = result.pop("diagnostics")
        result.pop("curve")
        result.update(key=key, pair=pair, regularizer=reg, lam=lam, source_epochs=args.source_epochs,
                      source_images=args.source_images, **summarize_diagnostics(diagnostics))
        store.add(result)
        eta = (time.time() - started) / i * (len(todo) - i)
        print(f"[{i}/{len(todo)}] {pair} {method} lam={lam} seed {seed}: {100 * result['test_accuracy']:.2f}% "
              f"({result['seconds']:.0f} s; about {eta / 60:.0f} min left)", flush=True)
    runs = [store.runs[key] for _, key in keyed if key in store.runs]
    if args.report_only:  # every finished run of these pairs and regularizers, whatever its protocol
        runs = [r for r in store.runs.values() if r["pair"] in args.pairs
                and r["regularizer"] in args.regularizers + ["l2"]]
    table = report(runs, args)
    figures = plot(runs, args, args.output)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    print(table)
    for path in figures:
        print(f"figure: {path}")


if __name__ == "__main__":
    sys.exit(main())
