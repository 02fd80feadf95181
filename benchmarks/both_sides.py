"""The both-sides table: for one regularizer and lam, every pair's
fine-tuning, vanilla and rule accuracies, the share of the gap recovered or
of the gain kept, and whether the rule is within 1 SE (paired) of
max(fine-tuning, vanilla). Reads a lam_sweep store; runs nothing.

    python benchmarks/both_sides.py --store output/lam_sweep/runs.jsonl --regularizer l2sp --lam 10
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]  # lab/ and lam_sweep beside this script

COLUMNS = {"finetune": "fine-tuning", "{reg}": "vanilla", "dtnh_{reg}@paper": "paper",
           "dtnh_{reg}@never_hurt": "never_hurt", "dtnh_{reg}@never_hurt_holdout": "never_hurt_holdout"}


def main(argv=None):
    from lab import RunStore, goal_text
    from lam_sweep import pair_label, variant

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="a runs.jsonl written by benchmarks/lam_sweep.py")
    p.add_argument("--regularizer", default="l2sp")
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument("--skip", nargs="*", default=[], metavar="VARIANT",
                   help="rule columns to leave out, as printed in the header (e.g. a protocol with few runs)")
    args = p.parse_args(argv)
    reg = args.regularizer
    cells, fixed = {}, [c.format(reg=reg) for c in COLUMNS]
    for r in RunStore(args.store).runs.values():
        if r["method"] == "finetune" or (r["regularizer"] == reg and r["lam"] == args.lam):
            name = variant(r)
            if name.split(" [")[0] in fixed:  # a preset's column, whatever its held-out protocol
                name = name.split(" [")[0]
            cells.setdefault(pair_label(r), {}).setdefault(name, {})[r["seed"]] = r
    rules = sorted({m for by in cells.values() for m in by if m.startswith(f"dtnh_{reg}@")
                    and m not in fixed
                    and m.split("@", 1)[1] not in args.skip})
    columns = [c.format(reg=reg) for c in COLUMNS if c.split("@", 1)[-1] not in args.skip] + rules
    names = [COLUMNS.get(c.replace(reg, "{reg}"), c.split("@", 1)[-1]) for c in columns]
    print("| pair | " + " | ".join(names) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for pair, by in sorted(cells.items()):
        if reg not in by or "finetune" not in by:
            continue
        row = []
        for c in columns:
            runs = by.get(c)
            if not runs:
                row.append("-")
                continue
            # over the seeds every column of the row has, as the shares are
            common = set(runs) & set(by[reg]) & set(by["finetune"])
            acc = np.mean([100 * runs[s]["test_accuracy"] for s in sorted(common)])
            if c in ("finetune", reg):
                row.append(f"{acc:.1f}")
                continue
            goal = goal_text(runs, by[reg], by["finetune"])
            share = goal.split("; ", 1)[1] if "; " in goal else ""
            text = f"{acc:.1f} ({share.replace('of a ', 'of ')})" if share else f"{acc:.1f}"
            row.append(f"**{text}**" if goal.startswith("meets") else text)
        print(f"| {pair.replace(':', ' -> ', 1)} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
