"""Both sides, with preset="auto": the runs that judge the source-fit test.

Every cell below runs fine-tuning, the vanilla regularizer, DTNH with the
paper's rule and DTNH with never_hurt, on the same seeds, and records the
source-fit test of each seed's training images; benchmarks/regret.py then
reads auto's accuracy off the run of the preset it chose (bit-equal runs,
tests/test_demo.py) and applies the criterion. Resumable: finished runs
and tests are JSON lines in --output and are skipped when run again;
several workers may share the work (``--worker i --workers n``), each
writing its own file.

    python benchmarks/auto_evidence.py --prepare          # sources and tests
    python benchmarks/auto_evidence.py --worker 0 --workers 2 &
    python benchmarks/auto_evidence.py --worker 1 --workers 2 &
    python benchmarks/regret.py output/auto_evidence

The pairs were chosen before any of their runs, to span the sides and the
source strengths the issue names; none of them was run by the project
before (its earlier pairs were the Fashion-MNIST class splits a/b among
themselves, MNIST -> digits and Fashion-MNIST -> digits). What each is
expected to show is written beside it, so a surprise is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # the harness (lab/) lives beside the package, not in it
    sys.path.insert(0, _REPO)

#: source name -> how it is pretrained here (lab.pretrain_source); "arch" defaults to resnet18
SOURCES = {  # their test accuracy after pretraining here, as measured (each .json beside the cache file)
    "mnist5k": dict(dataset="mnist5k", epochs=4, max_images=4000),  # 93.3%: converged
    "mnist5k-weak": dict(dataset="mnist5k", epochs=1, max_images=1000),  # 10.0%: 16 steps, untrained
    "fashion-mnist": dict(dataset="fashion-mnist", epochs=2, max_images=8000),  # 73.4%: half-way
    "fashion-mnist-b": dict(dataset="fashion-mnist-b", epochs=2, max_images=8000),  # 91.0% on its 5 classes
    "digits": dict(dataset="digits", epochs=10, max_images=1198),  # 90.8%; 8x8 images upscaled
    # 0.5: pretrained on the "-src" partitions, so no target image of a "-tgt" set was ever seen
    "mnist5k-src": dict(dataset="mnist5k-src", epochs=4, max_images=3000),
    "fashion-mnist-src": dict(dataset="fashion-mnist-src", epochs=2, max_images=8000),
    "mnist5k-inv-src": dict(dataset="mnist5k-inv-src", epochs=4, max_images=3000),
    "mnist5k-inv-src-vd": dict(dataset="mnist5k-inv-src", epochs=4, max_images=3000, arch="resnet18_vd"),
    "fashion-mnist-inv-src": dict(dataset="fashion-mnist-inv-src", epochs=2, max_images=8000),
    "fashion-mnist-inv-src-half": dict(dataset="fashion-mnist-inv-src", epochs=1, max_images=2000),
}

#: 0.4's pairs (docs/results/auto_evidence); three of them leak (their sources were pretrained on the
#: target's own images: mnist5k -> mnist5k, -> mnist5k-inv, fashion-mnist -> fashion-mnist)
PAIRS = {
    "mnist5k:mnist5k": "in-domain, same classes, converged source: expected to help",
    "mnist5k:mnist5k-inv": "shifted domain (inverted images), same classes: side unknown",
    "fashion-mnist:fashion-mnist": "in-domain, 10 classes, converged source: expected to help",
    "fashion-mnist-b:mnist5k": "another dataset, other classes: expected to hurt",
    "mnist5k-weak:fashion-mnist-a": "a barely trained source, another dataset: expected to hurt",
    "digits:mnist5k": "same classes, another dataset, a low-resolution source: side unknown",
}

#: (pair, regularizer, lam): L2-SP at lam 1/10/100, KnowDist where it is expected to help and to hurt
CELLS = [
    ("mnist5k:mnist5k", "l2sp", 10.0),
    ("mnist5k:mnist5k", "l2sp", 100.0),
    ("mnist5k:mnist5k", "knowdist", 0.01),
    ("mnist5k:mnist5k-inv", "l2sp", 10.0),
    ("fashion-mnist:fashion-mnist", "l2sp", 1.0),
    ("fashion-mnist:fashion-mnist", "l2sp", 10.0),
    ("fashion-mnist-b:mnist5k", "l2sp", 10.0),
    ("fashion-mnist-b:mnist5k", "l2sp", 100.0),
    ("fashion-mnist-b:mnist5k", "knowdist", 1.0),
    ("mnist5k-weak:fashion-mnist-a", "l2sp", 1.0),
    ("mnist5k-weak:fashion-mnist-a", "l2sp", 10.0),
    ("digits:mnist5k", "l2sp", 10.0),
]

RULES = ("paper", "never_hurt")

#: 0.5's discovery set (where the decision rule was chosen): 0.4's three pairs that do not leak, and its
#: three leaking pairs re-run leak-free (sources pretrained on the "-src" partitions, targets from "-tgt")
DISCOVERY_PAIRS = {
    "fashion-mnist-b:mnist5k": PAIRS["fashion-mnist-b:mnist5k"],
    "mnist5k-weak:fashion-mnist-a": PAIRS["mnist5k-weak:fashion-mnist-a"],
    "digits:mnist5k": PAIRS["digits:mnist5k"],
    "mnist5k-src:mnist5k-tgt": "0.4's mnist5k -> mnist5k, leak-free: in-domain, converged source: expected to help",
    "mnist5k-src:mnist5k-inv-tgt": "0.4's mnist5k -> mnist5k-inv, leak-free: shifted domain: side unknown",
    "fashion-mnist-src:fashion-mnist-tgt": "0.4's fashion-mnist -> fashion-mnist, leak-free: in-domain, "
                                           "half-trained source: expected to help",
}
_RENAMED = {"mnist5k:mnist5k": "mnist5k-src:mnist5k-tgt", "mnist5k:mnist5k-inv": "mnist5k-src:mnist5k-inv-tgt",
            "fashion-mnist:fashion-mnist": "fashion-mnist-src:fashion-mnist-tgt"}
DISCOVERY_CELLS = [(_RENAMED.get(pair, pair), reg, lam) for pair, reg, lam in CELLS]

#: 0.5's validation set, fixed (pairs, reasons, sides expected, cells, seeds) before any of its runs: no run
#: of this project used these source -> target pairs before
VALIDATION_PAIRS = {
    "mnist5k-inv-src:mnist5k-inv-tgt": "in-domain (inverted digits), disjoint images, converged source: "
                                       "expected to help",
    "fashion-mnist-inv-src:fashion-mnist-inv-tgt": "in-domain (inverted clothes), disjoint images, converged "
                                                   "source: expected to help",
    "fashion-mnist-inv-src:fashion-mnist-tgt": "a shifted domain (the source saw inverted clothes): side unknown",
    "digits:fashion-mnist-tgt": "another dataset, a low-resolution digits source: expected to hurt",
    "mnist5k-inv-src:fashion-mnist-b-tgt": "another dataset and other classes, a converged source: expected to hurt",
    "fashion-mnist-inv-src-half:mnist5k-inv-tgt": "another dataset, a source one epoch of 2000 images into "
                                                  "training: expected to hurt",
    "mnist5k-inv-src-vd:mnist5k-inv-tgt": "PaddleHub's ResNet-18-vd, in-domain (inverted digits), converged: "
                                          "expected to help",
}
VALIDATION_CELLS = [
    ("mnist5k-inv-src:mnist5k-inv-tgt", "l2sp", 10.0),
    ("mnist5k-inv-src:mnist5k-inv-tgt", "delta", 1.0),
    ("fashion-mnist-inv-src:fashion-mnist-inv-tgt", "l2sp", 10.0),
    ("fashion-mnist-inv-src:fashion-mnist-inv-tgt", "knowdist", 0.01),
    ("fashion-mnist-inv-src:fashion-mnist-tgt", "l2sp", 10.0),
    ("fashion-mnist-inv-src:fashion-mnist-tgt", "l2sp", 100.0),
    ("digits:fashion-mnist-tgt", "l2sp", 10.0),
    ("digits:fashion-mnist-tgt", "knowdist", 1.0),
    ("mnist5k-inv-src:fashion-mnist-b-tgt", "l2sp", 100.0),
    ("mnist5k-inv-src:fashion-mnist-b-tgt", "delta", 1.0),
    ("fashion-mnist-inv-src-half:mnist5k-inv-tgt", "l2sp", 1.0),
    ("fashion-mnist-inv-src-half:mnist5k-inv-tgt", "l2sp", 10.0),
    ("mnist5k-inv-src-vd:mnist5k-inv-tgt", "l2sp", 10.0),
]

#: plan name -> (pairs, cells, DTNH rules run beside fine-tuning and the vanilla regularizer)
PLANS = {
    "0.4": (PAIRS, CELLS, RULES),
    "discovery": (DISCOVERY_PAIRS, DISCOVERY_CELLS, RULES),
    # the per-stage test on the same cells, once the global runs are in (same output folder)
    "discovery-stages": (DISCOVERY_PAIRS, DISCOVERY_CELLS, ("auto_stages",)),
    "validation": (VALIDATION_PAIRS, VALIDATION_CELLS, ("auto", "auto_stages")),
    # the same runs, auto's first: what decides the goal runs before the per-stage test's
    "validation-auto": (VALIDATION_PAIRS, VALIDATION_CELLS, ("auto",)),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=list(PLANS), default="0.4", help="which pairs and cells (default: 0.4)")
    p.add_argument("--output", default=os.path.join("output", "auto_evidence"))
    p.add_argument("--cache", default=os.path.join("output", "sources"), help="pretrained source cache")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="default: 0 1 2 3 4")
    p.add_argument("--cells", type=int, nargs="+", default=None, metavar="I",
                   help="indices into CELLS (default: all)")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--max-test", type=int, default=1000)
    p.add_argument("--prepare", action="store_true", help="pretrain the sources and run the tests only")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0 <= args.worker < args.workers:
        p.error("--worker must be in [0, --workers)")
    return args


def planned_runs(cells, seeds, rules=RULES) -> list:
    """(pair, regularizer, lam, method, seed), seed by seed, so that a run cut
    short leaves whole seeds; fine-tuning once per pair and seed."""
    runs = []
    for seed in seeds:
        for pair in dict.fromkeys(c[0] for c in cells):
            runs.append((pair, "l2", None, "finetune", seed))
        for pair, reg, lam in cells:
            runs.append((pair, reg, lam, reg, seed))
            runs += [(pair, reg, lam, f"dtnh_{reg}@{rule}", seed) for rule in rules]
    return runs


def pretrained(name: str, cache: str, progress: bool = True) -> str:
    """The weights file of source ``name`` of :data:`SOURCES` (pretrained here once, cached)."""
    from lab import pretrain_source

    settings = SOURCES[name]
    return pretrain_source(settings["dataset"], cache_dir=cache, epochs=settings["epochs"],
                           max_images=settings["max_images"], progress=progress,
                           arch=settings.get("arch", "resnet18"))


def arch_of(pair: str) -> str:
    return SOURCES[pair.split(":")[0]].get("arch", "resnet18")


def config(args, reg, lam, pair):
    from lab import RunConfig

    cfg = RunConfig(iterations=args.iterations, eval_interval=args.iterations, max_test=args.max_test,
                    arch=arch_of(pair))
    if lam is not None:
        cfg.lam[reg] = lam
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from paddle_dtnh.data import load_dataset
    from lab import RunStore, fit_report, method_spec, run_transfer

    _, plan_cells, rules = PLANS[args.plan]
    cells = [plan_cells[i] for i in args.cells] if args.cells is not None else plan_cells
    os.makedirs(args.output, exist_ok=True)
    done = RunStore.merged(args.output)
    # a worker on a subset of the cells writes a file of its own, so workers on other subsets never share one
    subset = "" if args.cells is None else "-c" + "-".join(map(str, args.cells))
    store = RunStore(os.path.join(args.output, f"runs-w{args.worker}{subset}.jsonl"))
    sources, targets = {}, {}

    def source_of(pair):
        name = pair.split(":")[0]
        if name not in sources:
            sources[name] = pretrained(name, args.cache, progress=not args.no_progress)
        return sources[name]

    def target_of(pair):
        name = pair.split(":")[1]
        if name not in targets:
            targets[name] = load_dataset(name)
        return targets[name]

    if args.prepare:
        from lab.leakage import leakage

        for pair in dict.fromkeys(c[0] for c in cells):
            source, target = pair.split(":")
            found = leakage(SOURCES[source]["dataset"], target, max_images=SOURCES[source]["max_images"])
            print(f"leakage: {found}", flush=True)
            if args.plan != "0.4" and not found.clean:
                raise SystemExit(f"{pair}: the source was pretrained on target images ({found}); refusing to run it.")
            for seed in args.seeds:
                key = RunStore.key("fit", pair, SOURCES[pair.split(":")[0]], seed)
                if key in done:
                    continue
                report = fit_report(source_of(pair), target_of(pair), config(args, "l2", None, pair), seed)
                store.add({"key": key, "kind": "fit", "pair": pair, "seed": seed, "source_fit": report.as_dict()})
                print(f"{pair} seed {seed}: {report.summary()}", flush=True)
        return
    plan = planned_runs(cells, args.seeds, rules)
    keyed = [(run, RunStore.key("run", *run, SOURCES[run[0].split(":")[0]],
                                method_spec(run[3]).resolved_options, args.iterations, args.max_test))
             for run in plan]
    mine = [(run, key) for i, (run, key) in enumerate(keyed) if i % args.workers == args.worker]
    todo = [(run, key) for run, key in mine if key not in done]
    print(f"worker {args.worker}: {len(mine)} runs, {len(mine) - len(todo)} already done", flush=True)
    started = time.time()
    for i, ((pair, reg, lam, method, seed), key) in enumerate(todo, 1):
        result = run_transfer(method, source_of(pair), target_of(pair), config(args, reg, lam, pair), seed=seed,
                              progress=not args.no_progress)
        store.add({"key": key, "kind": "run", "pair": pair, "regularizer": reg, "lam": lam, "method": method,
                   "seed": seed, "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
                   "decision": result.get("decision"),
                   "distance_to_source": result["distance_to_source"], "seconds": result["seconds"],
                   "skipped_steps": result["skipped_steps"]})
        eta = (time.time() - started) / i * (len(todo) - i)
        print(f"[{i}/{len(todo)}] {pair} {method} lam={lam} seed {seed}: {100 * result['test_accuracy']:.2f}% "
              f"({result['seconds']:.0f} s; about {eta / 60:.0f} min left)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
