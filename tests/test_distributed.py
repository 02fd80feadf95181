"""Two CPU processes (gloo, loopback) reach the parameters of one process on
the concatenated batch: DTNH averages its paddle.grad gradients across ranks."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

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


def test_demo_runs_data_parallel_through_the_launcher(tmp_path):
    demo = pathlib.Path(__file__).resolve().parents[1] / "demo" / "transfer.py"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), str(demo), "--source", "digits", "--target", "digits",
           "--iterations", "3", "--per-class", "2", "--batch-size", "8", "--image-size", "16",
           "--source-images", "64", "--methods", "l2sp", "dtnh_knowdist", "--output", str(out),
           "--cache", str(tmp_path / "cache"), "--no-progress"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=400)
    logs = {p.name: p.read_text() for p in (tmp_path / "log").glob("workerlog.*")}
    assert proc.returncode == 0, proc.stderr[-1500:] + "".join(v[-1500:] for v in logs.values())
    assert "data parallel over 2 processes" in logs["workerlog.0"]
    assert "| DTNH (KnowDist) |" in logs["workerlog.0"] and "| DTNH" not in logs["workerlog.1"]
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["method"] for r in results] == ["l2sp", "dtnh_knowdist"]


def test_a_gradient_none_on_one_rank_only_is_named_on_every_rank(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
           str(tmp_path / "log"), str(WORKER), "--mode", "none-mismatch", "--out", str(tmp_path / "x.npz")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    logs = [p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*"))]
    assert len(logs) == 2
    for log in logs:
        assert "are None on 1 of 2 ranks and present on the others" in log, log[-2000:]
