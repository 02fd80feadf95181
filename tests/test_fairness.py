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
