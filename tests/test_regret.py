"""The criterion script: regret against the better baseline, auto read off
the preset its test chose, worst and mean over cells (hand-checked)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import regret  # noqa: E402


def _write(folder, records):
    with open(os.path.join(folder, "runs-w0.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _run(pair, method, reg, lam, seed, acc):
    return {"kind": "run", "pair": pair, "method": method, "regularizer": reg, "lam": lam, "seed": seed,
            "test_accuracy": acc}


def _fit(pair, seed, fits):
    return {"kind": "fit", "pair": pair, "seed": seed,
            "source_fit": {"fits": fits, "advantage": 0.1 if fits else -0.1}}


def test_regret_by_hand(tmp_path, capsys):
    records = []
    # pair a: the regularizer helps (vanilla 80/82 > fine-tuning 70/72); the test says "fits" on both seeds
    for seed, (ft, va, pa, nh) in enumerate([(0.70, 0.80, 0.79, 0.71), (0.72, 0.82, 0.81, 0.73)]):
        records += [_run("a", "finetune", "l2", None, seed, ft), _run("a", "l2sp", "l2sp", 10.0, seed, va),
                    _run("a", "dtnh_l2sp@paper", "l2sp", 10.0, seed, pa),
                    _run("a", "dtnh_l2sp@never_hurt", "l2sp", 10.0, seed, nh), _fit("a", seed, True)]
    # pair b: it hurts (vanilla 60/50 < fine-tuning 70/70); the test is right on seed 0, wrong on seed 1
    for seed, (ft, va, pa, nh) in enumerate([(0.70, 0.60, 0.61, 0.69), (0.70, 0.50, 0.52, 0.71)]):
        records += [_run("b", "finetune", "l2", None, seed, ft), _run("b", "l2sp", "l2sp", 10.0, seed, va),
                    _run("b", "dtnh_l2sp@paper", "l2sp", 10.0, seed, pa),
                    _run("b", "dtnh_l2sp@never_hurt", "l2sp", 10.0, seed, nh), _fit("b", seed, seed == 1)]
    _write(tmp_path, records)
    results = {r.cell: r for r in regret.judge(regret.collect(regret.read_records(str(tmp_path))))}
    a, b = results["a, l2sp lam 10"], results["b, l2sp lam 10"]
    assert a.best == "vanilla" and b.best == "finetune"
    assert a.regret["paper"][0] == pytest.approx(1.0) and a.regret["never_hurt"][0] == pytest.approx(9.0)
    assert a.regret["auto"][0] == pytest.approx(1.0)  # paper on both seeds
    # b: auto = never_hurt on seed 0 (69), paper on seed 1 (52): regret (1 + 18) / 2
    assert b.regret["auto"][0] == pytest.approx(9.5) and b.regret["auto"][1] == pytest.approx(8.5)
    worst, mean = regret.summary(list(results.values()))["auto"]
    assert worst == pytest.approx(9.5) and mean == pytest.approx(5.25)
    regret.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "worst 9.5 (missed), mean +5.2 (missed)" in out or "worst 9.5 (missed), mean +5.3 (missed)" in out


def test_regret_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="No complete cell"):
        regret.main([str(tmp_path)])


def test_the_evidence_plan_runs_whole_seeds_and_fine_tuning_once_per_pair():
    import auto_evidence

    cells = [("a:b", "l2sp", 1.0), ("a:b", "knowdist", 0.01), ("c:d", "l2sp", 10.0)]
    plan = auto_evidence.planned_runs(cells, [0, 1])
    assert [r[4] for r in plan] == [0] * 11 + [1] * 11  # seed by seed: a cut run leaves whole seeds
    assert [r for r in plan if r[3] == "finetune"] == [("a:b", "l2", None, "finetune", 0),
                                                        ("c:d", "l2", None, "finetune", 0),
                                                        ("a:b", "l2", None, "finetune", 1),
                                                        ("c:d", "l2", None, "finetune", 1)]
    assert {r[3] for r in plan if r[0] == "a:b" and r[1] == "knowdist"} == {
        "knowdist", "dtnh_knowdist@paper", "dtnh_knowdist@never_hurt"}
    # every pair of the committed cells names a source that is pretrained and a reason it was chosen
    assert {c[0] for c in auto_evidence.CELLS} == set(auto_evidence.PAIRS)
    assert {p.split(":")[0] for p in auto_evidence.PAIRS} <= set(auto_evidence.SOURCES)
    with pytest.raises(SystemExit):
        auto_evidence.parse_args(["--worker", "2", "--workers", "2"])


def test_the_readme_table_is_the_criterion_s_output_on_the_committed_runs(capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    regret.main([os.path.join(root, "docs", "results", "validation"), "--readme"])
    table = capsys.readouterr().out.strip()
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    assert table in readme
