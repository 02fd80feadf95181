"""The loops users run at scale, under Paddle's launcher on CPU (gloo,
loopback): PaddleHub's Trainer (which bypasses DataParallel.forward) and
paddle.Model.fit end with the same parameters on both ranks, equal to one
process on the concatenated batches; and two launcher invocations as two
nodes match one process. Marked ``multiprocess``: CI runs them, a developer
may skip them with ``-m "not multiprocess"``."""

import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "loop_worker.py"
DEMO = HERE.parent / "demo" / "transfer.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _launch(args, log_dir, timeout=300, extra=()):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(log_dir), *extra, *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-2500:] for p in sorted(pathlib.Path(log_dir).glob("workerlog.*")))
        pytest.fail(f"launcher failed:\n{proc.stderr[-1500:]}\n{logs}")


def _params(folder, rank):
    return dict(np.load(folder / f"rank{rank}.npz"))


def _single_and_pair(tmp_path, *args):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    proc = subprocess.run([sys.executable, str(WORKER), *args, "--batch-size", "8", "--out", str(one)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _launch([str(WORKER), *args, "--batch-size", "4", "--out", str(two)], tmp_path / "log",
            extra=["--nproc_per_node", "2"])
    return _params(one, 0), _params(two, 0), _params(two, 1)


def _assert_synchronised(single, rank0, rank1):
    for name in single:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=f"{name}: the ranks differ")
        np.testing.assert_allclose(rank0[name], single[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("loop", ["hub", "hub-plain"])
@pytest.mark.parametrize("regularizer", ["l2sp", "knowdist"])
def test_hub_trainer_trains_synchronised_replicas(tmp_path, loop, regularizer):
    if loop == "hub-plain" and regularizer == "knowdist":
        pytest.skip("a plain hub model never calls regularize(omega): KnowDist needs TransferTask")
    _assert_synchronised(*_single_and_pair(tmp_path, "--loop", loop, "--regularizer", regularizer))


@pytest.mark.parametrize("regularizer, accumulate", [("l2sp", 1), ("knowdist", 1), ("knowdist", 2)])
def test_paddle_model_fit_trains_synchronised_replicas(tmp_path, regularizer, accumulate):
    _assert_synchronised(*_single_and_pair(tmp_path, "--loop", "hapi", "--regularizer", regularizer,
                                           "--accumulate", str(accumulate)))


def _demo_args(out, cache):
    return [str(DEMO), "--source", "digits", "--target", "digits", "--iterations", "3", "--per-class", "2",
            "--batch-size", "8", "--image-size", "16", "--source-images", "64", "--methods", "dtnh_l2sp",
            "--output", str(out), "--cache", str(cache), "--no-progress"]


def _two_nodes(tmp_path, args, timeout=300):
    """The README's recipe: the same launcher command on each node, with
    --nnodes 2, the master's address and each node's --rank (one process each)."""
    port = random.randint(20000, 40000)
    nodes = []
    try:
        for node in (0, 1):
            cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master",
                   f"127.0.0.1:{port}", "--rank", str(node), "--nproc_per_node", "1", "--log_dir",
                   str(tmp_path / f"node{node}"), *args]
            nodes.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=timeout)[0] for p in nodes]
    finally:
        for p in nodes:  # nothing left running when a node failed or hung
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "".join(p.read_text()[-1500:] for p in tmp_path.glob("node*/workerlog.*"))
    assert all(p.returncode == 0 for p in nodes), "".join(o[-1500:] for o in outputs) + logs
    return (tmp_path / "node0" / "workerlog.0").read_text()


def test_two_nodes_on_loopback_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    args = ["--loop", "hapi", "--regularizer", "knowdist"]
    proc = subprocess.run([sys.executable, str(WORKER), *args, "--batch-size", "8", "--out", str(one)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _two_nodes(tmp_path, [str(WORKER), *args, "--batch-size", "4", "--out", str(two)])
    _assert_synchronised(_params(one, 0), _params(two, 0), _params(two, 1))


def test_the_demo_on_two_nodes_equals_two_processes_on_one(tmp_path):
    """ResNet-18's BatchNorm normalises each process's half batch, so the demo
    on two processes is compared with two processes, not with one."""
    cache = tmp_path / "cache"
    # the source pretrained first, alone: ranks waiting for rank 0's pretraining can outlast gloo's timeout
    proc = subprocess.run([sys.executable, *_demo_args(tmp_path / "alone", cache)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _launch(_demo_args(tmp_path / "one_node", cache), tmp_path / "log", extra=["--nproc_per_node", "2"])
    log = _two_nodes(tmp_path, _demo_args(tmp_path / "two_nodes", cache))
    assert "data parallel over 2 processes" in log
    single = json.loads((tmp_path / "one_node" / "results.json").read_text())["results"][0]
    pair = json.loads((tmp_path / "two_nodes" / "results.json").read_text())["results"][0]
    assert pair["test_accuracy"] == single["test_accuracy"]
    assert pair["test_loss"] == pytest.approx(single["test_loss"], abs=1e-6)
