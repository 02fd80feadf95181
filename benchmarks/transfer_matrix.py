"""The DTNH paper's tables: sources x targets x methods x seeds.

Writes ``runs.jsonl`` (one line per finished run; a rerun skips those, so an
interrupted matrix resumes), ``table.md`` (mean ± std of the test accuracy,
shaped like the paper's Table II, one block per source) and ``results.json``.

Offline (default): sources pretrained here on embedded data (mnist5k is
appropriate for digit targets, fashion-mnist is not), targets digits and
fashion-mnist, 10 images per class.

    OMP_NUM_THREADS=2 python benchmarks/transfer_matrix.py --seeds 5

Paper protocol (``--preset paper``: ResNet-18, 224 crops, batch 48, SGD
momentum 0.9, lr 0.01 divided by 10 at 6000 of 8000 iterations), for a GPU
and the data, with lam tuned per pair via --lam-*:

    python benchmarks/transfer_matrix.py --preset paper --device gpu --sources imagenet \\
        --targets caltech256 --target-root /data/caltech256 --per-class 30 --lam-l2sp 0.1

Data parallel: ``python -m paddle.distributed.launch --nproc_per_node 2
benchmarks/transfer_matrix.py ...`` (each global batch is split across the
processes; rank 0 writes the files).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

PRESETS = {
    "offline": dict(iterations=100, batch_size=20, per_class=10, image_size=32, lr=0.01, lr_drop_at=0.75),
    "paper": dict(iterations=8000, batch_size=48, per_class=30, image_size=224, lr=0.01, lr_drop_at=0.75,
                  augment=True, flip=True, eval_interval=500, stats_interval=50, max_test=100000,
                  checkpoint_every=500),
}


def parse_args(argv=None):
    from paddle_dtnh.data import DATASETS
    from lab import METHODS, check_methods

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from paddle_dtnh.models.architectures import ARCHITECTURES

    p.add_argument("--preset", choices=list(PRESETS), default="offline", help="default: offline")
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="resnet18", help="network (default: resnet18)")
    p.add_argument("--sources", nargs="+", default=["mnist5k", "fashion-mnist"],
                   help="datasets to pretrain a source on, 'imagenet' (paddle.vision weights), "
                        "or .pdparams paths (default: mnist5k fashion-mnist)")
    p.add_argument("--targets", nargs="+", default=["digits", "fashion-mnist"], choices=list(DATASETS),
                   help="target datasets (default: digits fashion-mnist)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help="finetune, <reg> or dtnh_<reg>[@<rule>] (see demo/transfer.py --help); "
                        f"default: {' '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell, 0..N-1 (default: 5)")
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--per-class", type=int, help="override the preset's images per class")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--image-size", type=int, help="override the preset's input size")
    for reg in ("l2", "l2sp", "knowdist", "delta"):
        p.add_argument(f"--lam-{reg}", type=float, help=f"lam for {reg} methods (default: RunConfig's)")
    p.add_argument("--lam-decay", type=float, default=1.0, help="lam ratio per epoch (default: 1.0)")
    p.add_argument("--source-root", help="folder of a source dataset's files")
    p.add_argument("--target-root", help="folder of a target dataset's files")
    p.add_argument("--download", action="store_true", help="allow downloading paddle.vision datasets")
    p.add_argument("--device", default="cpu", help="cpu or gpu (default: cpu)")
    p.add_argument("--output", default="output/matrix", help="default: output/matrix")
    p.add_argument("--cache", default=os.path.join("output", "sources"), help="pretrained source cache")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="write the tables from finished runs; run nothing")
    args = p.parse_args(argv)
    if args.seeds <= 0:
        p.error("--seeds must be positive")
    try:
        check_methods(args.methods)
    except ValueError as err:
        p.error(str(err))
    return args


def build_config(args):
    from lab import RunConfig

    cfg = RunConfig(arch=args.arch, **PRESETS[args.preset])
    for field in ("iterations", "per_class", "batch_size", "image_size"):
        if getattr(args, field) is not None:
            setattr(cfg, field, getattr(args, field))
    for reg in cfg.lam:
        value = getattr(args, f"lam_{reg}")
        if value is not None:
            cfg.lam[reg] = value
    cfg.lam_decay = args.lam_decay
    return cfg


def resolve_source(name, args, image_size):
    from paddle_dtnh.data import DATASETS
    from lab import pretrain_source

    if name in DATASETS:
        return pretrain_source(name, cache_dir=args.cache, image_size=image_size, data_root=args.source_root,
                               progress=not args.no_progress, arch=args.arch)
    if name == "imagenet":
        from paddle_dtnh.io import files
        from paddle_dtnh.integrations.hub import load_source

        path = os.path.join(args.cache, f"source-imagenet-{args.arch}.pdparams")
        if not os.path.isfile(path):
            spec = {"resnet18": "resnet18", "resnet18_vd": "resnet18_vd_imagenet"}[args.arch]
            files.save(load_source(spec, num_classes=1000).source.state_dict(), path)
        return path
    if os.path.isfile(name):
        return name
    sys.exit(f"Unknown source {name!r}: a dataset ({', '.join(DATASETS)}), 'imagenet' or a .pdparams path.")


def run_key(source, target, method, seed, cfg) -> str:
    from lab import RunStore, method_spec

    # the rule's options are in the key: redefining a preset never reuses stale runs
    return RunStore.key(source, target, method, method_spec(method).resolved_options, seed, dataclasses.asdict(cfg))


def markdown_table(runs, sources, targets, methods) -> str:
    from lab import method_spec

    lines = []
    for source in sources:
        lines += [f"\n**Source: {source}**\n", "| target | " + " | ".join(method_spec(m).label for m in methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for target in targets:
            cells = []
            for m in methods:
                acc = [100 * r["test_accuracy"] for r in runs
                       if (r["source"], r["target"], r["method"]) == (source, target, m)]
                cells.append(f"{np.mean(acc):.2f} ± {np.std(acc):.2f} (n={len(acc)})" if acc else "-")
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _runs_by_seed(runs, source, target, method) -> dict:
    return {r["seed"]: r for r in runs if (r["source"], r["target"], r["method"]) == (source, target, method)}


def _mean_of(by_seed, seeds, key, fmt) -> str:
    """Mean of a diagnostic over ``seeds``; '-' where no step was logged."""
    values = [by_seed[s][key] for s in seeds if by_seed[s].get(key) is not None]
    return fmt(np.mean(values)) if values else "-"


def _percent(v):
    return f"{100 * v:.0f}%"


def _degrees(v):
    return f"{v:.2f}"


def diagnostics_table(runs, sources, targets, methods) -> str:
    """Per pair and DTNH method: its accuracy minus the same regularizer's
    without projection (same seeds), the goal against fine-tuning (see
    :func:`lab.goal_text`), how often gJ and gO
    conflicted, and its mean Angle 1 against Angle 3."""
    from lab import goal_text, method_spec

    lines = ["| source -> target | method | DTNH - vanilla (points) | goal | conflicting steps, vanilla / DTNH "
             "| mean Angle 1 / Angle 3 under DTNH (deg) |", "|---|---|---|---|---|---|"]
    for source in sources:
        for target in targets:
            for method in methods:
                spec = method_spec(method)
                if not spec.project or spec.regularizer not in methods:
                    continue
                vanilla = _runs_by_seed(runs, source, target, spec.regularizer)
                dtnh = _runs_by_seed(runs, source, target, method)
                seeds = sorted(set(vanilla) & set(dtnh))
                if not seeds:
                    continue
                gains = [100 * (dtnh[s]["test_accuracy"] - vanilla[s]["test_accuracy"]) for s in seeds]
                goal = goal_text(dtnh, vanilla, _runs_by_seed(runs, source, target, "finetune"))
                lines.append(
                    f"| {source} -> {target} | {spec.label} | {np.mean(gains):+.2f} ± {np.std(gains):.2f} | {goal} "
                    f"| {_mean_of(vanilla, seeds, 'conflict_rate', _percent)} / "
                    f"{_mean_of(dtnh, seeds, 'conflict_rate', _percent)} "
                    f"| {_mean_of(dtnh, seeds, 'mean_angle1', _degrees)} / "
                    f"{_mean_of(dtnh, seeds, 'mean_angle3', _degrees)} |"
                )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import paddle

    from paddle_dtnh.data import load_dataset
    from paddle_dtnh.distributed import init_from_launcher, rank
    from lab import RunStore, method_spec, run_transfer, summarize_diagnostics

    paddle.set_device(args.device)
    init_from_launcher()
    lead = rank() == 0  # only rank 0 writes
    cfg = build_config(args)
    os.makedirs(args.output, exist_ok=True)
    store = RunStore(os.path.join(args.output, "runs.jsonl"))
    done = store.runs
    started = time.time()
    sources = {} if args.report_only else {s: resolve_source(s, args, cfg.image_size) for s in args.sources}
    cells = [(s, t, m, seed) for s in args.sources for t in args.targets for seed in range(args.seeds)
             for m in args.methods]
    todo = [] if args.report_only else [c for c in cells if run_key(*c, cfg) not in done]
    print(f"{len(cells)} runs, {len(cells) - len(todo)} already done", flush=True)
    targets = {}
    for i, (source, target, method, seed) in enumerate(todo, 1):
        if target not in targets:
            targets[target] = load_dataset(target, root=args.target_root, download=args.download)
        # long runs (the paper preset) checkpoint every cfg.checkpoint_every steps and resume
        ckpt = os.path.join(args.output, "checkpoints", run_key(source, target, method, seed, cfg) + ".ckpt")
        result = run_transfer(method, sources[source], targets[target], cfg, seed=seed,
                              progress=not args.no_progress, checkpoint=ckpt)
        diag = result.pop("diagnostics")
        result.update(key=run_key(source, target, method, seed, cfg), source=source, target=target,
                      **summarize_diagnostics(diag))
        if not lead:
            continue
        store.add(result)
        print(f"[{i}/{len(todo)}] {source} -> {target} {method_spec(method).label} seed {seed}: "
              f"{100 * result['test_accuracy']:.2f}% ({result['seconds']:.0f} s)", flush=True)
    if not lead:
        return
    keys = {run_key(*c, cfg) for c in cells}
    runs = [r for r in done.values() if r["key"] in keys]
    table = markdown_table(runs, args.sources, args.targets, args.methods)
    table += "\n\n" + diagnostics_table(runs, args.sources, args.targets, args.methods)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "args": vars(args), "runs": runs}, f, indent=1)
    print(table)
    print(f"\nthis invocation: {time.time() - started:.0f} s; runs: {sum(r['seconds'] for r in runs):.0f} s in all")


if __name__ == "__main__":
    main()
