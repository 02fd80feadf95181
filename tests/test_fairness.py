"""A rule that holds images out is compared with baselines trained on exactly the images it saw."""

import numpy as np

from lab.runs import RunConfig, _holdout_images
from paddle_dtnh.data import load_dataset


def test_the_baselines_train_on_the_arms_training_and_held_out_images():
    target = load_dataset("digits")
    for seed in (0, 3):
        arm_train, held = _holdout_images(target, RunConfig(per_class=10, holdout_per_class=4,
                                                            holdout_source="extra"), seed, True)
        baseline, none = _holdout_images(target, RunConfig(per_class=10, extra_train_per_class=4), seed, False)
        assert none is None and len(arm_train) == 100 and len(held) == 40
        assert np.array_equal(np.sort(baseline), np.union1d(arm_train, held))
        assert len(np.intersect1d(arm_train, held)) == 0


def test_the_evidence_pages_fairness_table_is_the_reports_output_on_the_committed_runs():
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import holdout_fairness

    from lab import RunStore

    runs = RunStore.merged(str(root / "docs" / "results" / "holdout_fairness")).values()
    assert len(runs) == 30  # 2 pairs x 3 arms x 5 seeds, nothing dropped
    table = holdout_fairness.report(runs, [0, 1, 2, 3, 4]).replace("lam 10", "λ 10")
    assert table in (root / "docs" / "evidence.md").read_text(encoding="utf-8")
