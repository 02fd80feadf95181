import math

import numpy as np
import paddle
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from paddle_dtnh import Rule
from paddle_dtnh.projection import dtnh_direction


def direction(task, reg, lam, *, granularity="global", on_conflict="project", max_reg_ratio=None,
              reference=None, **kw):
    """dtnh_direction with the rule's fields as keywords (the tests' grid)."""
    spec = Rule(granularity=granularity, on_conflict=on_conflict, max_reg_ratio=max_reg_ratio)
    return dtnh_direction(task, reg, lam, spec, reference=reference, **kw)


def T(values):
    return paddle.to_tensor(np.asarray(values, dtype="float64"))


def directions_np(task, reg, **kw):
    d, _ = direction([T(t) for t in task], [T(r) for r in reg], **kw)
    return [x.numpy() for x in d]


def test_no_conflict_is_plain_sum():
    # <gJ, gO> = 1 > 0: d = gJ + lam * gO
    d = directions_np([[1.0, 0.0]], [[1.0, 1.0]], lam=0.5)
    np.testing.assert_allclose(d[0], [1.5, 0.5])


def test_conflict_drops_opposing_component():
    # gO = (-1, 1) against gJ = (1, 0): gO_x = (-1, 0), gO_y = (0, 1)
    d = directions_np([[1.0, 0.0]], [[-1.0, 1.0]], lam=2.0)
    np.testing.assert_allclose(d[0], [1.0, 2.0])


def test_conflict_oblique_case_by_hand():
    # gJ = (3, 4), gO = (-2, 1): <.,.> = -2, ||gJ||^2 = 25
    # gO_y = (-2, 1) + 2/25 * (3, 4) = (-1.76, 1.32); d = gJ + 0.5 gO_y
    d = directions_np([[3.0, 4.0]], [[-2.0, 1.0]], lam=0.5)
    np.testing.assert_allclose(d[0], [3.0 - 0.88, 4.0 + 0.66])


def test_project_false_is_vanilla_even_in_conflict():
    d = directions_np([[1.0, 0.0]], [[-1.0, 1.0]], lam=2.0, on_conflict="ignore")
    np.testing.assert_allclose(d[0], [-1.0, 2.0])


def test_global_vs_layer_differ_when_one_tensor_conflicts():
    task = [[1.0, 0.0], [1.0, 0.0]]
    reg = [[-1.0, 0.0], [3.0, 0.0]]  # tensor 0 conflicts, the total does not
    glob = directions_np(task, reg, lam=1.0, granularity="global")
    layer = directions_np(task, reg, lam=1.0, granularity="layer")
    np.testing.assert_allclose(glob[0], [0.0, 0.0])  # no global conflict: plain sum
    np.testing.assert_allclose(layer[0], [1.0, 0.0])  # tensor 0 projected on its own
    np.testing.assert_allclose(layer[1], [4.0, 0.0])


def test_none_gradients_count_as_zero():
    # the head has gJ but no gO; the trunk conflicts globally
    d, _ = direction([T([1.0, 0.0]), T([2.0])], [T([-1.0, 1.0]), None], lam=1.0)
    # <gJ,gO> = -1, ||gJ||^2 = 5, coef = -0.2: gO_y = gO + 0.2 gJ
    # trunk: (1, 0) + (-0.8, 1); head: 2 + 0.2 * 2
    np.testing.assert_allclose(d[0].numpy(), [0.2, 1.0])
    np.testing.assert_allclose(d[1].numpy(), [2.4])
    d, _ = direction([None, T([1.0])], [T([3.0]), None], lam=0.5)
    np.testing.assert_allclose(d[0].numpy(), [1.5])
    np.testing.assert_allclose(d[1].numpy(), [1.0])


def test_both_none_stays_none():
    d, _ = direction([None, T([1.0])], [None, T([1.0])], lam=1.0)
    assert d[0] is None


def test_zero_task_gradient_gives_no_nan():
    d, stats = direction([T([0.0, 0.0])], [T([1.0, -1.0])], lam=0.3, with_stats=True)
    np.testing.assert_allclose(d[0].numpy(), [0.3, -0.3])
    for name, value in stats.items():
        assert math.isfinite(float(value)), name


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1"])
def test_invalid_lam(bad):
    with pytest.raises(ValueError, match="Invalid lam"):
        direction([T([1.0])], [T([1.0])], lam=bad)


def test_invalid_granularity_names_choices():
    with pytest.raises(ValueError, match="'global', 'layer'"):
        direction([T([1.0])], [T([1.0])], lam=1.0, granularity="tensor")


def test_misaligned_lists():
    with pytest.raises(ValueError, match="aligned"):
        direction([T([1.0])], [T([1.0]), T([1.0])], lam=1.0)


def test_all_none_raises():
    with pytest.raises(ValueError, match="Every gradient is None"):
        direction([None], [None], lam=1.0)


def _angle(a, b):
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# -- properties ---------------------------------------------------------------

vectors = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.tuples(
        arrays("float64", n, elements=st.floats(-10, 10)),
        arrays("float64", n, elements=st.floats(-10, 10)),
        arrays("float64", n, elements=st.floats(-10, 10)),
        arrays("float64", n, elements=st.floats(-10, 10)),
    )
)
lams = st.floats(0.0, 10.0)


def _split(a, b):
    return [T(a), T(b)]


@settings(max_examples=150, deadline=None)
@given(vectors, lams, st.sampled_from(["global", "layer"]))
def test_never_slows_the_empirical_loss(vs, lam, granularity):
    """<d, gJ> >= ||gJ||^2 (up to rounding), globally and per tensor for 'layer'."""
    j1, j2, o1, o2 = vs
    d, _ = direction(_split(j1, j2), _split(o1, o2), lam=lam, granularity=granularity)
    d = [x.numpy() for x in d]
    tol = 1e-9 * (1 + lam) * (1 + np.sum(np.square([*j1, *j2, *o1, *o2])))
    gj = np.concatenate([j1, j2])
    assert np.dot(np.concatenate(d), gj) >= np.dot(gj, gj) - tol
    if granularity == "layer":
        for di, ji in zip(d, (j1, j2)):
            assert np.dot(di, ji) >= np.dot(ji, ji) - tol


@settings(max_examples=100, deadline=None)
@given(vectors, lams)
def test_no_change_without_conflict(vs, lam):
    j1, j2, o1, o2 = vs
    gj, go = np.concatenate([j1, j2]), np.concatenate([o1, o2])
    if np.dot(gj, go) < 0:
        go = -go
        o1, o2 = -o1, -o2
    d, _ = direction(_split(j1, j2), _split(o1, o2), lam=lam)
    np.testing.assert_allclose(np.concatenate([x.numpy() for x in d]), gj + lam * go, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(vectors, lams)
def test_global_equals_layer_for_a_single_tensor(vs, lam):
    j1, _, o1, _ = vs
    g, _ = direction([T(j1)], [T(o1)], lam=lam, granularity="global")
    l, _ = direction([T(j1)], [T(o1)], lam=lam, granularity="layer")
    np.testing.assert_allclose(g[0].numpy(), l[0].numpy(), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(vectors, st.floats(0.0, 10.0))
def test_dtnh_never_turns_further_from_the_task_gradient(vs, lam):
    """Angle 1 <= Angle 3, also for tiny angles (where acos loses precision)."""
    j1, j2, o1, o2 = vs
    _, stats = direction(_split(j1, j2), _split(1e-3 * o1, 1e-3 * o2), lam=lam, with_stats=True)
    assert float(stats["angle1"]) <= float(stats["angle3"]) + 1e-9


def test_small_angles_are_precise():
    # gO = 1e-5 * e2, conflict-free: angle = atan(1e-5) in degrees
    _, stats = direction([T([1.0, 0.0])], [T([0.0, 1e-5])], lam=1.0, with_stats=True)
    np.testing.assert_allclose(float(stats["angle1"]), np.degrees(np.arctan(1e-5)), rtol=1e-6)


# -- the conflict rules beyond the paper ------------------------------------------

def test_layer_drop_by_hand():
    # tensor 0 conflicts (<gJ,gO> = -1): its whole gO goes; tensor 1 keeps it
    d = directions_np([[1.0, 0.0], [1.0, 0.0]], [[-1.0, 1.0], [3.0, 0.0]], lam=1.0,
                      granularity="layer", on_conflict="drop")
    np.testing.assert_allclose(d[0], [1.0, 0.0])
    np.testing.assert_allclose(d[1], [4.0, 0.0])


def test_global_drop_by_hand():
    task = [[1.0, 0.0], [1.0, 0.0]]
    # total <gJ, gO> = -1 + 3 = 2 >= 0: nothing dropped
    d = directions_np(task, [[-1.0, 1.0], [3.0, 0.0]], lam=1.0, granularity="global", on_conflict="drop")
    np.testing.assert_allclose(d[0], [0.0, 1.0])
    # total -1 + 0.5 < 0: every gO dropped, d = gJ
    d = directions_np(task, [[-1.0, 1.0], [0.5, 0.0]], lam=1.0, granularity="global", on_conflict="drop")
    np.testing.assert_allclose(np.concatenate(d), [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("rule", ["project", "drop"])
def test_coordinate_by_hand(rule):
    # r_i * gO_i: -1 (removed), 2, 0 (kept: no conflict), -6 (removed)
    d = directions_np([[1.0, -2.0, 0.0, 3.0]], [[-1.0, -1.0, 5.0, -2.0]], lam=2.0,
                      granularity="coordinate", on_conflict=rule)
    np.testing.assert_allclose(d[0], [1.0, -4.0, 10.0, 3.0])


def test_reference_other_than_the_batch_gradient_by_hand():
    gJ, gO, r = [T([1.0, 0.0])], [T([1.0, -1.0])], [T([0.0, 1.0])]
    # <r, gO> = -1: project removes -1 * r from gO -> (1, 0); d = gJ + gO'
    d, stats = direction(gJ, gO, lam=1.0, reference=r, with_stats=True)
    np.testing.assert_allclose(d[0].numpy(), [2.0, 0.0])
    assert float(stats["conflict"]) == 1.0  # judged against r, though <gJ, gO> > 0
    d, _ = direction(gJ, gO, lam=1.0, reference=r, on_conflict="drop", granularity="layer")
    np.testing.assert_allclose(d[0].numpy(), [1.0, 0.0])


def test_bad_inputs_name_the_index():
    with pytest.raises(ValueError, match=r"Gradient 1: task_grads has shape \[2\].*reg_grads has shape \[1\]"):
        direction([T([1.0]), T([1.0, 2.0])], [T([1.0]), T([1.0])], lam=1.0)
    with pytest.raises(ValueError, match=r"Gradient 0: .*float64.*float32"):
        direction([T([1.0])], [paddle.to_tensor([1.0], dtype="float32")], lam=1.0)
    with pytest.raises(ValueError, match="different lengths"):
        direction([T([1.0])], [T([1.0])], lam=1.0, reference=[])
    with pytest.raises(ValueError, match="Invalid on_conflict: 'mask'"):
        direction([T([1.0])], [T([1.0])], lam=1.0, on_conflict="mask")
    with pytest.raises(ValueError, match="Invalid rule: 'mask'; expected a paddle_dtnh.Rule or a preset"):
        dtnh_direction([T([1.0])], [T([1.0])], 1.0, "mask")
    for eps in (0.0, -1.0):
        with pytest.raises(ValueError, match="Invalid eps"):
            direction([T([1.0])], [T([1.0])], lam=1.0, eps=eps)
    d, _ = direction([T([1.0])], [T([1.0])], lam=np.float32(0.5))  # NumPy scalars are numbers
    np.testing.assert_allclose(d[0].numpy(), [1.5])


RULE_GRID = [(g, r) for g in ("global", "layer", "coordinate") for r in ("project", "drop")]


def _blocks(arrays_, granularity):
    """The blocks of a rule as flat arrays: all, per tensor, or per coordinate."""
    flat = [np.ravel(a) for a in arrays_]
    if granularity == "global":
        return [np.concatenate(flat)]
    if granularity == "layer":
        return flat
    return [np.array([v]) for v in np.concatenate(flat)]


@settings(max_examples=60, deadline=None)
@given(vectors, st.floats(0.01, 10.0), st.sampled_from(RULE_GRID), st.booleans(), st.integers(0, 2**31 - 1))
def test_every_rule_keeps_each_block_from_fighting_its_reference(vs, lam, grid, batch_ref, seed):
    """<gO'_b, r_b> >= 0 for every block, hence <d, r> >= <gJ, r>."""
    granularity, rule = grid
    j1, j2, o1, o2 = vs
    rng = np.random.default_rng(seed)
    ref = None if batch_ref else [rng.normal(size=j1.shape) * 3, rng.normal(size=j2.shape) * 3]
    d, _ = direction(_split(j1, j2), _split(o1, o2), lam=lam, granularity=granularity, on_conflict=rule,
                          reference=None if ref is None else [T(x) for x in ref])
    r = [j1, j2] if ref is None else ref
    reg_kept = [(di.numpy() - ji) / lam for di, ji in zip(d, (j1, j2))]
    tol = 1e-7 * (1 + np.sum(np.square([*j1, *j2, *o1, *o2]))) * (1 + np.abs(np.concatenate(r)).max())
    for kept_b, r_b in zip(_blocks(reg_kept, granularity), _blocks(r, granularity)):
        assert np.dot(kept_b, r_b) >= -tol
    gj, rr, dd = np.concatenate([j1, j2]), np.concatenate(r), np.concatenate([x.numpy() for x in d])
    assert np.dot(dd, rr) >= np.dot(gj, rr) - lam * tol


@settings(max_examples=60, deadline=None)
@given(vectors, lams, st.sampled_from(RULE_GRID))
def test_no_rule_changes_a_regularizer_gradient_without_conflict(vs, lam, grid):
    granularity, rule = grid
    j1, j2, o1, o2 = vs
    # gO_i with the sign of gJ_i: no coordinate, tensor or total conflicts
    o1, o2 = np.abs(o1) * np.sign(j1), np.abs(o2) * np.sign(j2)
    d, _ = direction(_split(j1, j2), _split(o1, o2), lam=lam, granularity=granularity, on_conflict=rule)
    np.testing.assert_allclose(np.concatenate([x.numpy() for x in d]),
                               np.concatenate([j1, j2]) + lam * np.concatenate([o1, o2]), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(vectors, st.floats(0.01, 10.0), st.sampled_from(RULE_GRID))
def test_every_rule_is_idempotent(vs, lam, grid):
    granularity, rule = grid
    j1, j2, o1, o2 = vs
    blocks = [np.concatenate([j1, j2])] if granularity == "global" else [j1, j2]
    assume(all(np.dot(b, b) == 0 or np.dot(b, b) > 1e-12 for b in blocks))
    task = _split(j1, j2)
    d, _ = direction(task, _split(o1, o2), lam=lam, granularity=granularity, on_conflict=rule)
    kept = [(di - ti) / lam for di, ti in zip(d, task)]
    d2, _ = direction(task, kept, lam=lam, granularity=granularity, on_conflict=rule)
    scale = 1 + np.abs(np.concatenate([j1, j2, o1, o2])).max()
    for a, b in zip(d, d2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9 * scale * (1 + lam))


@settings(max_examples=60, deadline=None)
@given(vectors, lams, st.sampled_from(RULE_GRID + [("global", "ignore"), ("layer", "ignore")]), st.booleans())
def test_every_rule_inplace_equals_out_of_place(vs, lam, grid, batch_ref):
    """The vanilla step ("ignore") included; the result is written into the task gradient."""
    granularity, rule = grid
    j1, j2, o1, o2 = vs
    ref = None if batch_ref else [T(o1 - j1), T(j2 + 1.0)]
    kw = dict(lam=lam, granularity=granularity, on_conflict=rule, reference=ref)
    expected, _ = direction(_split(j1, j2), [None, T(o2)], **kw)
    task = _split(j1, j2)
    got, _ = direction(task, [None, T(o2)], inplace=True, **kw)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-12, atol=1e-12)
    assert got[0] is task[0]


@pytest.mark.parametrize("granularity, rule", RULE_GRID)
@pytest.mark.parametrize("batch_ref", [True, False])
@pytest.mark.parametrize("cap", [None, 0.1])
def test_stats_match_numpy_for_every_rule(granularity, rule, batch_ref, cap):
    rng = np.random.default_rng(3)
    task = [rng.normal(size=(3, 2)), rng.normal(size=4), rng.normal(size=2)]
    reg = [rng.normal(size=(3, 2)) - task[0], rng.normal(size=4), None]
    ref = None if batch_ref else [rng.normal(size=(3, 2)), rng.normal(size=4), rng.normal(size=2)]
    lam = 0.7
    d, stats = direction([T(t) for t in task], [None if r is None else T(r) for r in reg], lam=lam,
                              granularity=granularity, on_conflict=rule, with_stats=True, max_reg_ratio=cap,
                              reference=None if ref is None else [T(x) for x in ref])
    flat = lambda xs: np.concatenate([np.ravel(x) for x in xs])
    reg_full = [np.zeros(2) if r is None else r for r in reg]
    gj, go, dd = flat(task), flat(reg_full), flat([x.numpy() for x in d])
    kept = (dd - gj) / lam
    r = gj if ref is None else flat(ref)
    if granularity == "coordinate":
        judged = [r_i * o_i < 0 for r_i, o_i in zip(flat((ref or task)[:2]), flat(reg[:2]))]
    elif granularity == "layer":
        judged = [np.vdot(a, b) < 0 for a, b in zip((ref or task)[:2], reg[:2])]
    else:
        judged = [np.dot(r, go) < 0]
    if cap is not None:  # the pull is capped where the rule kept one
        free, _ = direction([T(t) for t in task], [None if r is None else T(r) for r in reg], lam=lam,
                                 granularity=granularity, on_conflict=rule,
                                 reference=None if ref is None else [T(x) for x in ref])
        free_pull = np.linalg.norm(flat([x.numpy() for x in free]) - gj)
        np.testing.assert_allclose(np.linalg.norm(dd - gj), min(free_pull, cap * np.linalg.norm(gj)), rtol=1e-9)
    v = gj + lam * go
    expected = {
        "task_grad_norm": np.linalg.norm(gj),
        "reg_grad_norm": np.linalg.norm(go),
        "cos_task_reg": np.dot(gj, go) / np.linalg.norm(gj) / np.linalg.norm(go),
        "direction_norm": np.linalg.norm(dd),
        "conflict": float(np.dot(r, go) < 0),
        "conflict_fraction": np.mean([np.vdot(t, o) < 0 for t, o in zip(task[:2], reg[:2])]),
        "blocks_in_conflict": np.mean(judged),
        "reg_removed": np.linalg.norm(go - kept) / np.linalg.norm(go),
        "angle1": _angle(dd, gj),
        "angle2": _angle(dd, go),
        "angle3": _angle(v, gj),
        "angle4": _angle(v, go),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(float(stats[name]), value, rtol=1e-6, atol=1e-6, err_msg=name)


# -- the cap on the regularizer's pull (max_reg_ratio) ------------------------------

def test_cap_by_hand():
    # no conflict; ||lam gO|| = 10 > 0.5 ||gJ||: gO scaled by s = 0.5 / 10
    d = directions_np([[1.0, 0.0]], [[0.0, 10.0]], lam=1.0, max_reg_ratio=0.5)
    np.testing.assert_allclose(d[0], [1.0, 0.5])
    # the paper's projection first (gO' = (0, 10)), then the same cap
    d = directions_np([[1.0, 0.0]], [[-3.0, 10.0]], lam=1.0, max_reg_ratio=0.5)
    np.testing.assert_allclose(d[0], [1.0, 0.5])
    # a pull below the cap is left alone
    d = directions_np([[1.0, 0.0]], [[0.0, 0.2]], lam=1.0, max_reg_ratio=0.5)
    np.testing.assert_allclose(d[0], [1.0, 0.2])
    with pytest.raises(ValueError, match="Invalid max_reg_ratio"):
        directions_np([[1.0]], [[1.0]], lam=1.0, max_reg_ratio=0.0)


@settings(max_examples=60, deadline=None)
@given(vectors, st.floats(0.01, 10.0), st.sampled_from(RULE_GRID), st.booleans(), st.floats(0.05, 5.0))
def test_cap_scales_the_kept_pull_down_to_the_ratio(vs, lam, grid, batch_ref, ratio):
    """d - gJ = s * (the rule's lam gO') with s = min(1, ratio ||gJ|| / ||lam gO'||)."""
    granularity, rule = grid
    j1, j2, o1, o2 = vs
    ref = None if batch_ref else [T(o1 - j1), T(j2 + 1.0)]
    kw = dict(lam=lam, granularity=granularity, on_conflict=rule, reference=ref)
    free, _ = direction(_split(j1, j2), _split(o1, o2), **kw)
    capped, _ = direction(_split(j1, j2), _split(o1, o2), max_reg_ratio=ratio, inplace=True, **kw)
    gj = np.concatenate([j1, j2])
    pull = np.concatenate([x.numpy() for x in free]) - gj
    s = min(1.0, ratio * np.linalg.norm(gj) / max(np.linalg.norm(pull), 1e-30))
    got = np.concatenate([x.numpy() for x in capped]) - gj
    scale = 1 + np.abs(np.concatenate([j1, j2, o1, o2])).max()
    np.testing.assert_allclose(got, s * pull, atol=1e-9 * scale * (1 + lam))
    assert np.linalg.norm(got) <= ratio * np.linalg.norm(gj) * (1 + 1e-9) + 1e-12


def test_the_0_1_keywords_are_gone():
    gJ, gO = [T([1.0, -2.0])], [T([-1.0, 1.0])]
    for old in (dict(granularity="layer"), dict(project=False), dict(reference_grads=gJ)):
        with pytest.raises(TypeError, match="unexpected keyword"):
            dtnh_direction(gJ, gO, 1.5, **old)
    with pytest.raises(ValueError, match="Invalid rule: 'drop'"):
        dtnh_direction(gJ, gO, 1.5, "drop")
    assert dtnh_direction(gJ, gO, 1.5, "vanilla")[0][0].numpy().tolist() == [1.0 - 1.5, -2.0 + 1.5]


def test_a_preset_name_is_a_rule():
    gJ, gO = [T([1.0, 0.0])], [T([-1.0, 1.0])]
    by_name, _ = dtnh_direction(gJ, gO, 1.0, "never_hurt")
    by_rule, _ = dtnh_direction(gJ, gO, 1.0, Rule(granularity="layer", on_conflict="drop", reference="ema",
                                                     max_reg_ratio=1.0))
    np.testing.assert_array_equal(by_name[0].numpy(), by_rule[0].numpy())


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_gradients_are_named_before_paddles_type_promotion(dtype):
    ints = [paddle.to_tensor([1, 0], dtype=dtype)]
    floats = [paddle.to_tensor([1.0, -1.0])]
    for gj, go in ((ints, ints), (floats, ints), (ints, [None])):
        with pytest.raises(TypeError, match=f"dtype paddle.{dtype}; gradients must be floating point"):
            dtnh_direction(gj, go, lam=1.0)
