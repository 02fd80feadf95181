"""Choose ``preset="auto"``'s decision on the discovery cells: every candidate
policy, judged by the criterion of benchmarks/regret.py.

For each candidate :class:`paddle_dtnh.auto.DecisionPolicy` and each pair and
seed, the recorded source-fit report gives an outcome; the branch it runs is
read off the runs already made (``paper`` and ``never_hurt`` their DTNH runs,
``off`` the fine-tuning run, which the pull off is bit for bit in this
harness). Regret per cell against the better of fine-tuning and the vanilla
regularizer; a policy is summarised by its worst cell and its mean.
Discovery only: the numbers choose, validation (fixed after) judges.

The choice, written before the discovery runs came in: the lowest worst
cell, then the lowest mean regret (both to 0.1 point, the noise of a
5-seed mean being larger), then the simplest policy (one score before two,
no off margin before one, a fit margin nearer 1 SE).

    python benchmarks/decision_discovery.py docs/results/discovery
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
for path in (_HERE, _REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

from regret import branch_runs, collect, read_records  # noqa: E402

from paddle_dtnh.auto import DEFAULT_POLICY, DecisionPolicy  # noqa: E402
from paddle_dtnh.transferability import SourceFit  # noqa: E402

#: the candidates: margins in units of the advantage's paired SE, LogME's agreement, the two branches
GRID = dict(fit_margin=(0.0, 1.0, 1.645, 2.0), logme_agrees=(False, True), off_margin=(0.0, 1.0),
            if_no_fit=("off", "never_hurt"), if_uncertain=("never_hurt", "off"))


def candidates() -> list:
    return [DecisionPolicy(**dict(zip(GRID, values))) for values in itertools.product(*GRID.values())]


def simplicity(policy) -> tuple:
    """Smaller is simpler: one score, no off margin, a fit margin near 1 SE."""
    return (policy.logme_agrees, policy.off_margin > 0, abs(policy.fit_margin - 1.0))


def fits_by_pair(records) -> dict:
    return {(r["pair"], r["seed"]): SourceFit.from_dict(r["source_fit"]) for r in records if r.get("kind") == "fit"}


def judge_policy(policy, cells, fits) -> dict:
    """cell -> mean regret (points) of the policy's choices, with the seeds every branch has."""
    regrets = {}
    for name, by in cells.items():
        pair = name.split(", ")[0]
        runs_of = branch_runs(by)
        seeds = sorted(set(by["finetune"]) & set(by["vanilla"]) & set(by["paper"]) & set(by["never_hurt"])
                       & {s for (p, s) in fits if p == pair})
        if len(seeds) < 2:
            continue
        best = max(np.mean([by[k][s] for s in seeds]) for k in ("finetune", "vanilla"))
        chosen = [runs_of[policy.branch(policy.outcome(f.advantage, f.advantage_se, f.logme_advantage))][s]
                  for s in seeds for f in [fits[(pair, s)]]]
        regrets[name] = best - float(np.mean(chosen))
    return regrets


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the --output folder of benchmarks/auto_evidence.py --plan discovery")
    args = p.parse_args(argv)
    records = read_records(args.folder)
    cells = {k: v for k, v in collect(records).items()}
    fits = fits_by_pair(records)
    rows = []
    for policy in candidates():
        regrets = judge_policy(policy, cells, fits)
        if regrets:
            rows.append((max(regrets.values()), float(np.mean(list(regrets.values()))), policy, len(regrets)))
    if not rows:
        raise SystemExit(f"No complete cell in {args.folder}.")
    rows.sort(key=lambda row: (round(row[0], 1), round(row[1], 1), simplicity(row[2])))
    print("| fit margin (SE) | LogME agrees | off margin (SE) | does not fit -> | uncertain -> | cells | "
          "worst cell (pt) | mean regret (pt) |\n|---|---|---|---|---|---|---|---|")
    for worst, mean, pol, n in rows:
        mark = " (default)" if pol == DEFAULT_POLICY else ""
        print(f"| {pol.fit_margin:g}{mark} | {pol.logme_agrees} | {pol.off_margin:g} | {pol.if_no_fit} | "
              f"{pol.if_uncertain} | {n} | {worst:.2f} | {mean:+.2f} |")


if __name__ == "__main__":
    main()
