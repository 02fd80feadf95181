"""The demo and the experiment core, end to end at tiny settings."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_dtnh.data import load_dataset
from lab import METHODS, RunConfig, pretrain_source, run_transfer
from paddle_dtnh import PRESETS
from paddle_dtnh import auto as auto_module
from paddle_dtnh.auto import DecisionPolicy

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("sources"))
    path = pretrain_source("digits", cache_dir=cache, image_size=16, max_images=64, batch_size=32, progress=False)
    return cache, path


def test_pretrained_source_is_cached_by_its_settings(tiny_source):
    cache, path = tiny_source
    mtime = os.path.getmtime(path)
    again = pretrain_source("digits", cache_dir=cache, image_size=16, max_images=64, batch_size=32, progress=False)
    assert again == path and os.path.getmtime(path) == mtime  # reused, not retrained
    meta = json.load(open(path[: -len(".pdparams")] + ".json"))
    assert meta["dataset"] == "digits"
    # the accuracy the cache records is the cached network's on the test images
    from lab.runs import load_source
    from lab.sources import evaluate
    from paddle_dtnh.data import to_tensor_batch

    test = load_dataset("digits").test
    x, y = to_tensor_batch(test.images[:2000], 16), paddle.to_tensor(test.labels[:2000])
    assert meta["test_accuracy"] == pytest.approx(evaluate(load_source(path, "resnet18"), x, y)[1], abs=1e-9)
    other = pretrain_source("digits", cache_dir=cache, image_size=16, max_images=32, batch_size=32, progress=False)
    assert other != path


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_reports(tiny_source, method):
    _, path = tiny_source
    target = load_dataset("digits")
    cfg = RunConfig(iterations=3, batch_size=8, per_class=2, image_size=16, eval_interval=3,
                    stats_interval=1, max_test=40)
    result = run_transfer(method, path, target, cfg, seed=0, progress=False)
    # the final accuracy is the last evaluation's, on the 40 test images
    assert result["curve"]["iteration"] == [0, 3]
    assert result["test_accuracy"] == result["curve"]["test_accuracy"][-1]
    assert round(result["test_accuracy"] * 40, 6).is_integer()
    diag = result["diagnostics"]
    assert diag["step"] == [1, 2, 3]
    a1, a3 = np.array(diag["angle1"]), np.array(diag["angle3"])
    spec = METHODS[method]
    if spec.rule == PRESETS["paper"]:  # the global projection only adds gJ: d turns toward gJ
        assert (a1 <= a3 + 1e-6).all()
    elif spec.project and spec.rule.reference == "batch":  # <d, gJ> >= ||gJ||^2 > 0 block by block
        assert (a1 < 90).all()
    elif spec.project:  # the guarantee is for their reference, not gJ: the angles are measured, finite
        assert np.isfinite(a1).all() and np.isfinite(a3).all()
    else:  # without projection the direction is the vanilla one
        np.testing.assert_allclose(a1, a3, atol=1e-6)


def test_demo_end_to_end(tiny_source, tmp_path):
    cache, _ = tiny_source
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "transfer.py"), "--source", "digits", "--target", "digits",
         "--iterations", "4", "--per-class", "2", "--batch-size", "8", "--image-size", "16",
         "--source-images", "64", "--output", str(out), "--cache", cache, "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.load(open(out / "results.json"))["results"]
    assert [r["method"] for r in results] == ["finetune", "l2sp", "dtnh_l2sp@auto"]
    chosen = results[2]["source_fit"]["preset"]
    assert f"| DTNH auto (L2-SP) -> {chosen} |" in proc.stdout and "| Fine-tuning |" in proc.stdout
    # the test's one printed line, with both scores
    assert proc.stdout.count("DTNH preset 'auto': source fit: LOO ridge accuracy") == 1
    assert "L2-SP cost" in proc.stdout or "L2-SP gained" in proc.stdout  # the line that says what happened
    for name in ("accuracy.png", "fig3_empirical_loss.png", "fig4_angle1_vs_angle3.png", "fig5_angle2_vs_angle4.png"):
        assert (out / name).stat().st_size > 1000
    assert results[1]["config"]["lam"]["l2sp"] == 10.0
    assert os.listdir(out / "visualdl" / "dtnh_l2sp@auto_seed0")


def test_demo_help_and_bad_arguments():
    proc = subprocess.run([sys.executable, str(ROOT / "demo" / "transfer.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--methods", "--source", "--target", "--seeds", "--iterations", "--device", "--output"):
        assert option in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "demo" / "transfer.py"), "--iterations", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--iterations must be positive" in bad.stderr


def _table_cells(table: str, label: str) -> list:
    """The cells of the accuracy table's row for ``label``'s column order."""
    head = next(line for line in table.splitlines() if line.startswith("| target |"))
    row = next(line for line in table.splitlines() if line.startswith("| digits |"))
    columns = [c.strip() for c in head.strip("|").split("|")]
    return dict(zip(columns, [c.strip() for c in row.strip("|").split("|")]))[label]


def test_transfer_matrix_resumes_and_writes_its_tables(tiny_source, tmp_path):
    """Interrupted after its first run (and a line cut by a crash), the matrix
    resumes to the table and results of an uninterrupted one; the table's
    cells are the runs' accuracies."""
    _, source = tiny_source

    def matrix(out, methods, *extra):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "transfer_matrix.py"), "--sources", source,
               "--targets", "digits", "--methods", *methods, "--seeds", "1", "--iterations", "2",
               "--per-class", "2", "--batch-size", "8", "--image-size", "16", "--output", str(out),
               "--no-progress", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    both = ["l2sp", "dtnh_l2sp"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert "2 runs, 0 already done" in matrix(straight, both)
    assert "1 runs, 0 already done" in matrix(resumed, both[:1])  # the interruption
    with open(resumed / "runs.jsonl", "a") as f:  # a line cut by a crash is dropped and redone
        f.write('{"key": "trunc')
    assert "2 runs, 1 already done" in matrix(resumed, both)

    by_method = {}
    for out in (straight, resumed):
        runs = json.loads((out / "results.json").read_text())["runs"]
        by_method[out] = {r["method"]: r["test_accuracy"] for r in runs}
    assert by_method[straight] == by_method[resumed] and set(by_method[straight]) == set(both)
    table = (resumed / "table.md").read_text()
    assert table == (straight / "table.md").read_text()
    for method, label in (("l2sp", "L2-SP"), ("dtnh_l2sp", "DTNH (L2-SP)")):
        assert _table_cells(table, label) == f"{100 * by_method[resumed][method]:.2f} ± 0.00 (n=1)"
    assert "DTNH - vanilla (points)" in table
    (resumed / "table.md").unlink()
    assert "2 runs, 2 already done" in matrix(resumed, both, "--report-only")
    assert (resumed / "table.md").read_text() == table  # the report alone rewrites the same table


def test_the_paddlehub_network_runs_through_the_harness(tmp_path):
    """--arch resnet18_vd: pretraining, KnowDist's default layers and DTNH;
    the run's accuracy row is its last evaluation, and its records are those
    of a network that trained."""
    path = pretrain_source("digits", cache_dir=str(tmp_path), image_size=16, max_images=32, batch_size=32,
                           progress=False, arch="resnet18_vd")
    cfg = RunConfig(arch="resnet18_vd", iterations=2, batch_size=8, per_class=2, image_size=16,
                    eval_interval=2, stats_interval=1, max_test=20)
    for method in ("dtnh_l2sp@never_hurt", "dtnh_knowdist"):
        result = run_transfer(method, path, load_dataset("digits"), cfg, seed=0, progress=False)
        diag, curve = result["diagnostics"], result["curve"]
        assert diag["step"] == [1, 2] and curve["iteration"] == [0, 2]
        assert result["test_accuracy"] == curve["test_accuracy"][-1]
        assert all(abs(20 * a - round(20 * a)) < 1e-6 for a in curve["test_accuracy"])  # right of 20 images
        assert result["test_loss"] == curve["test_loss"][-1] and np.isfinite(curve["test_loss"]).all()
        assert curve["train_loss"][-1] != curve["train_loss"][0]  # the vd network trained
        # the pull toward the source: zero at the source, positive once the weights (or features) moved
        assert diag["reg_loss"][-1] > 0 and all(0.0 <= c <= 1.0 for c in diag["blocks_in_conflict"])
    wrong = RunConfig(arch="resnet18", iterations=1, batch_size=8, per_class=2, image_size=16, max_test=20)
    with pytest.raises(ValueError, match="holds no resnet18 weights"):
        run_transfer("l2sp", path, load_dataset("digits"), wrong, seed=0, progress=False)


def test_a_checkpointed_run_resumes_to_the_same_result(tiny_source, tmp_path, monkeypatch):
    """Interrupted after step 3 (checkpoints at 2), resumed: the same curves and diagnostics."""
    import lab.runs as experiment

    _, path = tiny_source
    cfg = RunConfig(iterations=6, batch_size=8, per_class=2, image_size=16, eval_interval=3, stats_interval=1,
                    max_test=40, checkpoint_every=2, augment=True)
    target = load_dataset("digits")
    straight = run_transfer("dtnh_l2sp@never_hurt", path, target, cfg, seed=1, progress=False)
    ckpt = str(tmp_path / "run.ckpt")
    calls = {"n": 0}
    real = experiment.DTNH.update

    def dies_at_step_4(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(experiment.DTNH, "update", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_transfer("dtnh_l2sp@never_hurt", path, target, cfg, seed=1, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(experiment.DTNH, "update", real)
    assert os.path.isfile(ckpt)
    resumed = run_transfer("dtnh_l2sp@never_hurt", path, target, cfg, seed=1, progress=False, checkpoint=ckpt)
    assert resumed["curve"] == straight["curve"]
    assert resumed["diagnostics"] == straight["diagnostics"]
    assert not os.path.exists(ckpt)  # removed once the run is complete


def test_the_scenarios_set_defaults_the_options_override():
    sys.path.insert(0, str(ROOT / "demo"))
    try:
        import transfer
    finally:
        sys.path.remove(str(ROOT / "demo"))
    helps = transfer.parse_args(["--scenario", "helps"])
    assert (helps.source, helps.target, helps.source_epochs, helps.source_images, helps.iterations) == (
        "mnist5k-src", "mnist5k-tgt", 4, 3000, 100)
    assert "dtnh_l2sp@auto" in helps.methods
    hurts = transfer.parse_args(["--iterations", "7"])
    assert (hurts.source, hurts.target, hurts.iterations, hurts.methods) == (
        "mnist5k", "digits", 7, transfer.DEFAULT_METHODS)


def test_peeking_at_the_next_batch_leaves_the_data_order_unchanged():
    from lab.runs import _next_batch, _peek_batch

    plain_rng, peek_rng = np.random.default_rng(3), np.random.default_rng(3)
    plain, peeked_order = [], []
    for _ in range(12):  # 7 images, batches of 3: the order runs out every few steps
        batch, plain = _next_batch(plain, 3, 7, plain_rng)
        drawn, peeked_order = _next_batch(peeked_order, 3, 7, peek_rng)
        assert drawn == batch
        peeked_order, upcoming = _peek_batch(peeked_order, 3, 7, peek_rng)
        assert upcoming == _next_batch(list(peeked_order), 3, 7, np.random.default_rng(99))[0]


@pytest.mark.parametrize("source", ["extra", "budget", "cross", "next"])
def test_every_holdout_source_runs_through_the_harness(tiny_source, source):
    _, path = tiny_source
    cfg = RunConfig(iterations=4, batch_size=6, per_class=3, image_size=16, eval_interval=4,
                    stats_interval=1, max_test=40, holdout_per_class=1, holdout_source=source, holdout_every=2)
    result = run_transfer("dtnh_l2sp@layer_drop_holdout", path, load_dataset("digits"), cfg, seed=0,
                          progress=False)
    assert result["diagnostics"]["step"] == [1, 2, 3, 4]
    if source != "next":
        with pytest.raises(ValueError, match="holdout_per_class"):
            run_transfer("dtnh_l2sp@layer_drop_holdout", path, load_dataset("digits"),
                         RunConfig(iterations=1, holdout_per_class=0, holdout_source=source), progress=False)


def test_never_hurt_holdout_without_held_out_images_runs_its_fallback(tiny_source):
    _, path = tiny_source
    cfg = RunConfig(iterations=3, batch_size=6, per_class=2, image_size=16, eval_interval=3, max_test=40)
    with pytest.warns(UserWarning, match="using its fallback"):
        fallen = run_transfer("dtnh_l2sp@never_hurt_holdout", path, load_dataset("digits"), cfg, seed=0,
                              progress=False)
    ema = run_transfer("dtnh_l2sp@never_hurt", path, load_dataset("digits"), cfg, seed=0, progress=False)
    assert fallen["curve"] == ema["curve"]


_FORCED = {"as measured": None,
           "uncertain": DecisionPolicy(fit_margin=1e9, logme_agrees=False, off_margin=1e9, if_no_fit="off",
                                       if_uncertain="never_hurt"),
           "no fit": DecisionPolicy(fit_margin=1e9, logme_agrees=False, off_margin=0, if_no_fit="off",
                                    if_uncertain="off")}


@pytest.mark.parametrize("reg, policy", [("l2sp", "as measured"), ("knowdist", "as measured"),
                                         ("l2sp", "uncertain"), ("knowdist", "no fit")])
def test_auto_run_equals_the_run_of_the_rule_it_chose(tiny_source, reg, policy, monkeypatch):
    """What lets the discovery read a policy's accuracy off the paper,
    never_hurt and fine-tuning runs of the same seed: the auto run is
    bit-equal to the run of the branch its test chose (the pull off: the
    fine-tuning run)."""
    if _FORCED[policy] is not None:
        monkeypatch.setattr(auto_module, "DEFAULT_POLICY", _FORCED[policy])
    _, path = tiny_source
    target = load_dataset("digits")
    cfg = RunConfig(iterations=3, batch_size=8, per_class=3, image_size=16, eval_interval=3, max_test=40)
    auto = run_transfer(f"dtnh_{reg}@auto", path, target, cfg, seed=2, progress=False)
    chosen = auto["decision"]["preset"]
    assert chosen in ("paper", "never_hurt", "off")
    assert chosen == {"as measured": chosen, "uncertain": "never_hurt", "no fit": "off"}[policy]
    straight = run_transfer("finetune" if chosen == "off" else f"dtnh_{reg}@{chosen}", path, target, cfg, seed=2,
                            progress=False)
    assert auto["curve"]["test_loss"] == straight["curve"]["test_loss"]
    assert auto["distance_to_source"] == straight["distance_to_source"]
