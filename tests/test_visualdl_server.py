"""VisualDL serves what DTNHLogger wrote: a real server on a loopback port,
read through its HTTP API (bounded in time, stopped at the end)."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import paddle
import paddle.nn.functional as F
import pytest

from paddle_dtnh import DTNH
from paddle_dtnh.regularizers import L2SP
from paddle_dtnh.integrations.visualdl import EVAL_TAGS, TAGS, DTNHLogger


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def visualdl_server(logdir, *extra):
    port = free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "visualdl")
    proc = subprocess.Popen([binary, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/app/api/runs", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("VisualDL did not start within 60 s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def api(base, path):
    status, body = get(base + path)
    assert status == 200, path
    return json.loads(body)["data"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two short runs with display names, written as the demo writes them."""
    root = tmp_path_factory.mktemp("vdl")
    written = {}
    for seed, name in enumerate(["l2sp/seed0", "dtnh_l2sp/seed0"]):
        paddle.seed(seed)
        source, model = paddle.nn.Linear(4, 3), paddle.nn.Linear(4, 3)
        model.set_state_dict(source.state_dict())
        reg = L2SP(model, source, alpha=0.5, beta=0.1)
        logger = DTNHLogger(str(root / name.replace("/", "_")), interval=2, display_name=name)
        opt = DTNH(paddle.optimizer.SGD(0.1, parameters=model.parameters()), reg, lam=1.0,
                   preset="paper" if name.startswith("dtnh") else "vanilla", logger=logger)
        losses = []
        for _ in range(4):
            out, omega = reg.run(paddle.randn([6, 4]))
            stats = opt.update(F.cross_entropy(out, paddle.to_tensor([0, 1, 2, 0, 1, 2])), omega)
            losses.append(float(stats["task_loss"]))
        logger.log_eval(4, loss=0.5, accuracy=0.75)
        logger.close()
        written[name] = losses
    return root, written


def test_the_server_shows_every_tag_of_every_run(logs):
    root, written = logs
    with visualdl_server(root, "--language", "en") as base:
        assert sorted(api(base, "/app/api/runs")) == sorted(written)
        tags = api(base, "/app/api/tags")
        for run in written:
            run_tags = {t.split("%", 1)[0].rsplit("/", 1)[-1] + "/" + t.split("%", 1)[1]
                        for t, kind in tags.items() if kind == "scalar" and f"/{run.replace('/', '_')}/" in t}
            for tag in TAGS + EVAL_TAGS:
                assert tag in run_tags, (run, tag)
            points = api(base, f"/app/api/scalar/list?run={run}&tag=loss/empirical")
            assert [p[1] for p in points] == [2, 4]  # every interval-th step
            assert [round(p[2], 5) for p in points] == [round(written[run][1], 5), round(written[run][3], 5)]
        status, _ = get(base + "/app/index")  # the page a browser loads
        assert status == 200


def test_without_a_language_a_browser_without_accept_language_gets_500(logs):
    """VisualDL 2.5's quirk the README warns about, and the fix it gives (--language en)."""
    root, _ = logs
    with visualdl_server(root) as base:
        assert get(base + "/app/index")[0] == 500
        assert get(base + "/app/index", {"Accept-Language": "en-US,en;q=0.9"})[0] == 200
