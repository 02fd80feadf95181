"""Two CPU processes (gloo, loopback) reach the parameters of one process on
the concatenated batch: DTNH averages its paddle.grad gradients across ranks."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("dp_worker.py")


def run(args, tmp_path, launcher):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable]
    if launcher:
        cmd += ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log")]
    proc = subprocess.run(cmd + [str(WORKER), *args], env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "log").glob("*")) if launcher else ""
        pytest.fail(f"worker failed:\n{proc.stderr[-2000:]}\n{logs}")


@pytest.mark.parametrize("mode, hook", [("l2sp", False), ("knowdist", False), ("knowdist", True)])
def test_two_processes_match_one_on_the_whole_batch(tmp_path, mode, hook):
    extra = ["--hook"] if hook else []
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    run(["--mode", mode, "--out", str(one), *extra], tmp_path, launcher=False)
    run(["--mode", mode, "--out", str(two), *extra], tmp_path, launcher=True)
    single, parallel = np.load(one), np.load(two)
    for name in single.files:
        np.testing.assert_allclose(parallel[name], single[name], atol=1e-5, rtol=0, err_msg=name)
