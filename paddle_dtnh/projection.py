"""The DTNH descent direction, as pure functions on lists of tensors.

DTNH (Wan et al., "Towards Making Deep Transfer Learning Never Hurt",
Algorithm 1) combines the gradient of the empirical loss ``gJ`` with the
gradient of the transfer regularizer ``gO``. When the two conflict
(``<gJ, gO> < 0``), the component of ``gO`` along ``gJ`` is dropped:

.. math::

    d = g_J + \\lambda \\Big(g_\\Omega
        - \\frac{\\min(\\langle g_J, g_\\Omega\\rangle, 0)}
               {\\max(\\lVert g_J\\rVert^2, \\epsilon)} g_J\\Big)

which guarantees :math:`\\langle d, g_J\\rangle \\ge \\lVert g_J\\rVert^2`.

Beyond the paper, one family of conflict rules (``d = gJ + lam * gO'``):

* ``granularity``: the block a conflict is judged on: ``"global"`` (all
  parameters, the paper), ``"layer"`` (one tensor), ``"coordinate"`` (one
  scalar);
* ``rule``: ``"project"`` removes the part of a conflicting block's ``gO``
  along the reference (the paper), ``"drop"`` removes the block's whole
  ``gO``; per coordinate the two coincide;
* the reference ``r`` conflicts are judged against: this batch's ``gJ``
  (the paper), or any other list of tensors (``reference_grads``, e.g. the
  moving average of ``gJ`` that :class:`paddle_dtnh.DTNH` keeps);
* ``max_reg_ratio``: optionally, the kept pull is scaled down so that
  ``||lam * gO'|| <= max_reg_ratio * ||gJ||`` (over all parameters), for
  when a pull that is not in conflict still outweighs the data.

Every rule guarantees, per block, :math:`\\langle g'_{\\Omega,b}, r_b\\rangle \\ge 0`,
hence :math:`\\langle d, r\\rangle \\ge \\langle g_J, r\\rangle`; with the batch
reference, :math:`\\langle d, g_J\\rangle \\ge \\lVert g_J\\rVert^2` as in the paper.

Everything is branch-free on tensor values, so there is no host
synchronisation: the same code runs on CPU and GPU. Nothing here knows about
optimizers; :class:`paddle_dtnh.DTNH` wires these functions to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import paddle

from ._checks import check_choice, check_nonnegative, check_positive

__all__ = ["GRANULARITIES", "RULES", "dtnh_direction", "direction_stats"]

#: ``"global"``: one block of all parameters (the paper). ``"layer"``: one
#: block per parameter tensor. ``"coordinate"``: one block per scalar.
GRANULARITIES = ("global", "layer", "coordinate")

#: ``"project"``: remove the conflicting component (the paper). ``"drop"``:
#: remove a conflicting block's whole regularizer gradient.
RULES = ("project", "drop")

_RAD_TO_DEG = 180.0 / math.pi


def _scalar(value: float, like: paddle.Tensor, dtype=None) -> paddle.Tensor:
    """A 0-d constant on ``like``'s place (a GPU step never mixes places)."""
    return paddle.to_tensor(value, dtype=dtype or like.dtype, place=like.place)


def _dot(a: paddle.Tensor | None, b: paddle.Tensor | None, like: paddle.Tensor):
    """Inner product as a 0-d tensor; a ``None`` side counts as zero.

    A [1, n] x [n, 1] matmul (BLAS) reads each side once with no temporary:
    about twice as fast on CPU as ``paddle.sum(a * b)``.
    """
    if a is None or b is None:
        return _scalar(0.0, like)
    return paddle.matmul(a.reshape([1, -1]), b.reshape([-1, 1])).reshape([])


def _dots(xs, ys, like) -> paddle.Tensor:
    """Per-tensor inner products as a 1-D tensor."""
    return paddle.stack([_dot(x, y, like) for x, y in zip(xs, ys)])


def _check_aligned(task_grads, reg_grads, reference_grads) -> paddle.Tensor:
    """Lists of equal length whose tensors agree in shape, dtype and place,
    index by index (metadata only: no host sync); returns one non-None tensor."""
    lists = {"task_grads": task_grads, "reg_grads": reg_grads}
    if reference_grads is not None:
        lists["reference_grads"] = reference_grads
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"The gradient lists have different lengths ({lengths}); they must be "
            "aligned parameter by parameter."
        )
    like = None
    for i, entries in enumerate(zip(*lists.values())):
        present = [(name, g) for name, g in zip(lists, entries) if g is not None]
        if not present:
            continue
        first_name, first = present[0]
        for name, g in present[1:]:
            if list(g.shape) != list(first.shape) or g.dtype != first.dtype or not g.place._equals(first.place):
                raise ValueError(
                    f"Gradient {i}: {first_name} has shape {list(first.shape)}, dtype {first.dtype} "
                    f"and place {first.place}, {name} has shape {list(g.shape)}, dtype {g.dtype} and "
                    f"place {g.place}; each index must hold the gradients of one parameter."
                )
        like = first if like is None else like
    if like is None:
        raise ValueError(
            "Every gradient is None: nothing to project. Check that the loss and "
            "the regularizer depend on the parameters passed."
        )
    return like


def _per_tensor(value, n: int) -> list:
    """``value`` (a float, a 0-d tensor, or one entry per tensor) as a list of
    n factors; one unbind instead of n indexing ops."""
    if not isinstance(value, paddle.Tensor) or value.ndim == 0:
        return [value] * n
    return paddle.unbind(value)


def _scaled(t, scale, inplace):
    """``scale * t`` (written into ``t`` with ``inplace``); ``None`` or 1.0 is no scale."""
    if scale is None or (isinstance(scale, float) and scale == 1.0):
        return t
    if isinstance(scale, float):
        return t.scale_(scale) if inplace else scale * t
    return t.multiply_(scale) if inplace else scale * t


def _combine(gj, go, reg_scale, task_scale=None, extra=None, inplace=False):
    """``task_scale * gJ + reg_scale * gO + extra``, each ``None`` term zero.

    With ``inplace``, the result is written into ``gj`` (or ``go``), which
    the caller owns; ``None`` when every term is ``None``.
    """
    out = None if gj is None else _scaled(gj, task_scale, inplace)
    for term in (None if go is None else _scaled(go, reg_scale, inplace), extra):
        if term is not None:
            out = term if out is None else (out.add_(term) if inplace else out + term)
    return out


def dtnh_direction(
    task_grads: Sequence[paddle.Tensor | None],
    reg_grads: Sequence[paddle.Tensor | None],
    lam: float,
    granularity: str = "global",
    eps: float = 1e-20,
    project: bool = True,
    with_stats: bool = False,
    inplace: bool = False,
    *,
    rule: str = "project",
    reference_grads: Sequence[paddle.Tensor | None] | None = None,
    max_reg_ratio: float | None = None,
):
    r"""Combine the empirical-loss and regularizer gradients the DTNH way.

    Returns :math:`d = g_J + \lambda g'_\Omega`. With the defaults this is
    the paper's Algorithm 1: :math:`g'_\Omega` is :math:`g_\Omega` minus its
    component along :math:`g_J` when :math:`\langle g_J, g_\Omega\rangle < 0`.
    In general, for every block :math:`b` of the ``granularity`` and the
    reference :math:`r` (``reference_grads``, default :math:`g_J`):

    * ``rule="project"``: :math:`g'_{\Omega,b} = g_{\Omega,b} -
      \frac{\min(\langle r_b, g_{\Omega,b}\rangle, 0)}{\max(\lVert r_b\rVert^2,\epsilon)} r_b`;
    * ``rule="drop"``: :math:`g'_{\Omega,b} = g_{\Omega,b}\,
      [\langle r_b, g_{\Omega,b}\rangle \ge 0]`;
    * ``granularity="coordinate"`` (either rule):
      :math:`g'_{\Omega,i} = g_{\Omega,i}\,[r_i g_{\Omega,i} \ge 0]`.

    Guarantee, every block: :math:`\langle g'_{\Omega,b}, r_b\rangle \ge 0`,
    so :math:`\langle d, r\rangle \ge \langle g_J, r\rangle`; with the batch
    reference, :math:`\langle d, g_J\rangle \ge \lVert g_J\rVert^2`.

    With ``max_reg_ratio`` :math:`\rho`, :math:`g'_\Omega` is then scaled by
    :math:`s = \min\big(1, \rho\lVert g_J\rVert / (\lambda\lVert g'_\Omega\rVert)\big)`
    (norms over all parameters), so also
    :math:`\lVert d - g_J\rVert \le \rho\lVert g_J\rVert`; the guarantee
    above still holds (:math:`s \ge 0`).

    Args:
        task_grads (list[Tensor|None]): gradient of the empirical loss J,
            one entry per parameter. ``None`` counts as zero.
        reg_grads (list[Tensor|None]): gradient of the regularizer Omega
            (without ``lam``), aligned with ``task_grads``. ``None`` (a
            parameter outside the regularizer's graph, such as a new head
            under a feature-map regularizer) counts as zero.
        lam (float): the regularization coefficient :math:`\lambda \ge 0`.
        granularity (str, optional): ``"global"``, ``"layer"`` or
            ``"coordinate"``. Default: "global" (the paper).
        eps (float, optional): lower bound of :math:`\lVert r_b\rVert^2` in
            the projection's denominator, so a zero reference gives no NaN.
            Must be > 0. Default: 1e-20.
        project (bool, optional): ``False`` returns the plain regularized
            gradient :math:`g_J + \lambda g_\Omega` (the vanilla baseline),
            so baselines and DTNH share one code path. Default: True.
        with_stats (bool, optional): also compute the diagnostics of
            :func:`direction_stats`. Default: False.
        inplace (bool, optional): write the directions into the
            ``task_grads`` tensors (and scale ``reg_grads`` in place) instead
            of allocating new ones. The inputs are overwritten. Default: False.
        rule (str, optional): ``"project"`` or ``"drop"``. Default: "project".
        reference_grads (list[Tensor|None], optional): the reference
            :math:`r` conflicts are judged against, aligned with the other
            lists. Default: None, i.e. ``task_grads`` (the paper).
        max_reg_ratio (float, optional): :math:`\rho > 0`, the largest
            :math:`\lVert\lambda g'_\Omega\rVert / \lVert g_J\rVert`
            allowed. Costs two more reductions over the gradients (one with
            ``with_stats``). Ignored with ``project=False``. Default: None
            (no cap, the paper).

    Returns:
        tuple: ``(directions, stats)``. ``directions`` is a list aligned
        with the inputs (``None`` where no term is present); ``stats`` is a
        dict of 0-d tensors: always ``conflict`` (1.0 when
        :math:`\langle r, g_\Omega\rangle < 0` over all parameters), plus the
        diagnostics of :func:`direction_stats` with ``with_stats``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.projection import dtnh_direction
            >>> gJ = [paddle.to_tensor([1.0, 0.0])]
            >>> gO = [paddle.to_tensor([-1.0, 1.0])]
            >>> d, stats = dtnh_direction(gJ, gO, lam=1.0, with_stats=True)
            >>> d[0].numpy().tolist()
            [1.0, 1.0]
            >>> bool(stats["conflict"])
            True
            >>> d, _ = dtnh_direction(gJ, gO, lam=1.0, granularity="layer", rule="drop")
            >>> d[0].numpy().tolist()
            [1.0, 0.0]
    """
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("rule", rule, RULES)
    lam = check_nonnegative("lam", lam)
    eps = check_positive("eps", eps)
    if max_reg_ratio is not None:
        max_reg_ratio = check_positive("max_reg_ratio", max_reg_ratio)
    like = _check_aligned(task_grads, reg_grads, reference_grads)
    batch_reference = reference_grads is None
    ref = task_grads if batch_reference else reference_grads

    # <r_b, gO_b> per tensor: the conflict test of every rule
    ro = _dots(ref, reg_grads, like)
    stats = {"conflict": (ro.sum() < 0).astype(like.dtype)}
    # the diagnostics read the inputs, so they are taken before any in-place write
    inner = _stats_inputs(task_grads, reg_grads, ref, ro, like, batch_reference) if with_stats else None
    masks, rr = None, None
    if not project:
        gO_kept = {"keep": _scalar(1.0, like)}
    elif granularity == "coordinate":
        masks = [None if r is None or o is None else (r * o >= 0).astype(o.dtype)
                 for r, o in zip(ref, reg_grads)]
        gO_kept = {"masks": masks}
        if with_stats:
            inner.update(_masked_stats(task_grads, reg_grads, masks, like))
        # gO' = mask * gO, formed once (the cap measures it)
        reg_grads = [go if go is None or m is None else (go.multiply_(m) if inplace else go * m)
                     for go, m in zip(reg_grads, masks)]
    elif rule == "drop":
        block_ro = ro.sum() if granularity == "global" else ro
        gO_kept = {"keep": (block_ro >= 0).astype(like.dtype)}
    else:  # project
        rr = inner["rr"] if with_stats else _dots(ref, ref, like)
        block_ro, block_rr = (ro.sum(), rr.sum()) if granularity == "global" else (ro, rr)
        # coefficient of r removed from gO; zero when there is no conflict
        coef = paddle.minimum(block_ro, paddle.zeros_like(block_ro)) / paddle.clip(block_rr, min=eps)
        gO_kept = {"coef": coef}

    # lam, times the cap's factor s (a 0-d tensor) with max_reg_ratio
    scale = lam
    if max_reg_ratio is not None and project:
        gO_kept["cap"] = _cap_factor(task_grads, reg_grads, ref, ro, rr, gO_kept, inner, lam, max_reg_ratio,
                                     granularity, batch_reference, like)
        scale = lam * gO_kept["cap"]

    n = len(task_grads)
    directions = []
    if "keep" in gO_kept:  # vanilla or drop: d = gJ + lam * keep_b * gO
        scales = [lam] * n if not project else _per_tensor(scale * gO_kept["keep"], n)
        for gj, go, block_scale in zip(task_grads, reg_grads, scales):
            directions.append(_combine(gj, go, block_scale, inplace=inplace))
    elif masks is not None:  # d = gJ + lam * gO' (gO' = mask * gO, formed above)
        for gj, go in zip(task_grads, reg_grads):
            directions.append(_combine(gj, go, scale, inplace=inplace))
    elif batch_reference:
        # the paper: d = (1 - lam c) gJ + lam gO; a tensor with gO = None
        # still loses c * gJ under the global projection
        for gj, go, task_scale in zip(task_grads, reg_grads, _per_tensor(1.0 - scale * gO_kept["coef"], n)):
            directions.append(None if gj is None and go is None
                              else _combine(gj, go, scale, task_scale=task_scale, inplace=inplace))
    else:  # d = gJ + lam (gO - c r)
        for gj, go, r, ref_scale in zip(task_grads, reg_grads, ref, _per_tensor(-scale * gO_kept["coef"], n)):
            extra = None if r is None else ref_scale * r
            directions.append(_combine(gj, go, scale, extra=extra, inplace=inplace))
    if with_stats:
        stats.update(direction_stats(inner, gO_kept, lam, granularity=granularity,
                                     batch_reference=batch_reference))
    return directions, stats


def _cap_factor(task_grads, reg_kept, ref, ro, rr, gO_kept, inner, lam, ratio, granularity,
                batch_reference, like) -> paddle.Tensor:
    """s = min(1, ratio * ||gJ|| / (lam * ||gO'||)) as a 0-d tensor; ``reg_kept``
    is gO' for the coordinate rule, gO otherwise; ``rr`` the per-tensor
    ||r||^2 when the rule computed it, else None."""
    if inner is not None:
        jj = inner["jj"]
    elif rr is not None and batch_reference:
        jj = rr
    else:
        jj = _dots(task_grads, task_grads, like)
    if "masks" in gO_kept:
        kept_sq = _dots(reg_kept, reg_kept, like).sum()
    else:
        oo = inner["oo"] if inner is not None else _dots(reg_kept, reg_kept, like)
        if "keep" in gO_kept:
            kept_sq = (gO_kept["keep"] * oo).sum()
        else:  # ||gO_b - c_b r_b||^2 = oo - 2 c ro + c^2 rr, per block
            c = gO_kept["coef"]  # the project rule computed rr
            if granularity == "global":
                oo, ro, rr = oo.sum(), ro.sum(), rr.sum()
            kept_sq = paddle.clip(oo - 2.0 * c * ro + c * c * rr, min=0.0).sum()
    pull = lam * paddle.sqrt(kept_sq)
    return paddle.clip(ratio * paddle.sqrt(jj.sum()) / paddle.clip(pull, min=1e-30), max=1.0)


def _stats_inputs(task_grads, reg_grads, ref, ro, like, batch_reference) -> dict:
    """Per-tensor inner products the diagnostics are derived from."""
    jj = _dots(task_grads, task_grads, like)
    inner = {"jj": jj, "oo": _dots(reg_grads, reg_grads, like), "ro": ro}
    if batch_reference:
        inner.update(jo=ro, rj=jj, rr=jj)
    else:
        inner.update(jo=_dots(task_grads, reg_grads, like), rj=_dots(ref, task_grads, like),
                     rr=_dots(ref, ref, like))
    # blocks where the regularizer has a gradient: the ones a rule can judge
    present = [float(r is not None and o is not None) for r, o in zip(ref, reg_grads)]
    inner["present"] = paddle.to_tensor(present, dtype=like.dtype, place=like.place)
    return inner


def _masked_stats(task_grads, reg_grads, masks, like) -> dict:
    """Per tensor <mask*gO, gJ>, ||mask*gO||^2, conflicting and judged coordinates."""
    pj, po, conflicts, sizes = [], [], [], []
    zero = _scalar(0.0, like)
    for gj, go, mask in zip(task_grads, reg_grads, masks):
        if go is None or mask is None:
            pj.append(zero if go is None or gj is None else paddle.sum(go * gj))
            po.append(zero if go is None else paddle.sum(go * go))
            conflicts.append(zero)
            sizes.append(0)
            continue
        kept = go * mask
        pj.append(zero if gj is None else paddle.sum(kept * gj))
        po.append(paddle.sum(kept * go))
        conflicts.append(mask.size - paddle.sum(mask))
        sizes.append(mask.size)
    return {"pj": paddle.stack(pj), "po": paddle.stack(po),
            "coordinate_conflicts": paddle.stack(conflicts).sum() / max(sum(sizes), 1)}


def _cosine(dot, sq_a, sq_b):
    """Cosine from an inner product and two squared norms (0 if one is 0)."""
    denom = paddle.sqrt(paddle.clip(sq_a * sq_b, min=1e-300))
    return paddle.clip(dot / denom, min=-1.0, max=1.0)


def _angle_deg(dot, sq_a, sq_b):
    """Angle in degrees from an inner product and two squared norms."""
    return paddle.acos(_cosine(dot, sq_a, sq_b)) * _RAD_TO_DEG


def _angle_in_plane(x, y, jj, oo, jo, to_task):
    """Angle in degrees between x*gJ + y*gO and gJ (``to_task``) or gO.

    atan2 of the parts perpendicular and parallel to the reference, with the
    perpendicular part taken directly (|y| * ||gO - proj_gJ gO||), so small
    angles keep full precision where acos(cos) near 1 would not.
    """
    tiny = 1e-300
    if to_task:
        ref, other, cross, w_ref, w_other = jj, oo, jo, x, y
    else:
        ref, other, cross, w_ref, w_other = oo, jj, jo, y, x
    ref_norm = paddle.sqrt(paddle.clip(ref, min=tiny))
    w_other = paddle.abs(w_other) if isinstance(w_other, paddle.Tensor) else abs(w_other)
    perp = w_other * paddle.sqrt(paddle.clip(other - cross * cross / paddle.clip(ref, min=tiny), min=0.0))
    par = (w_ref * ref + w_other * cross) / ref_norm
    return paddle.atan2(perp, par) * _RAD_TO_DEG


def direction_stats(inner: dict, gO_kept: dict, lam: float, *, granularity="global",
                    batch_reference=True) -> dict:
    r"""Diagnostics of one step, from per-tensor inner products.

    With :math:`d = g_J + \lambda g'_\Omega`, every quantity is exact and
    global (over all parameters), derived in float64 from per-tensor inner
    products of :math:`g_J`, :math:`g_\Omega` and the reference, and from
    how much of each block's :math:`g_\Omega` the rule kept, so no extra
    pass over the gradients is needed (the per-coordinate rule needs one).

    Args:
        inner (dict): per-tensor 1-D tensors ``jj``, ``oo``, ``jo``, ``ro``,
            ``rj``, ``rr`` (inner products of gJ, gO and the reference r),
            ``present`` (1 where the block can be judged), and for the
            per-coordinate rule ``pj``, ``po`` and ``coordinate_conflicts``.
        gO_kept (dict): how gO' was formed: ``keep`` (0-d or per tensor, the
            share of gO kept by "drop", or 1 without projection), ``coef``
            (the coefficient of r removed by "project") or ``masks``; and
            ``cap``, the factor of ``max_reg_ratio``, if any.
        lam (float): the regularization coefficient.
        granularity (str, optional): the blocks. Default: "global".
        batch_reference (bool, optional): whether r is gJ. Default: True.

    Returns:
        dict: 0-d tensors ``task_grad_norm``, ``reg_grad_norm``,
        ``direction_norm``, ``cos_task_reg``, ``conflict_fraction`` (share of
        parameter tensors whose own :math:`\langle g_J, g_\Omega
angle` is
        negative), ``blocks_in_conflict`` (share of the rule's blocks in
        conflict with its reference), ``reg_removed`` (:math:`\lVert g_\Omega
        - g'_\Omega
Vert / \lVert g_\Omega
Vert`), and the paper's angles in
        degrees: ``angle1`` = ∠(d, gJ), ``angle2`` = ∠(d, gO), ``angle3`` =
        ∠(gJ + λgO, gJ), ``angle4`` = ∠(gJ + λgO, gO).

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.projection import dtnh_direction
            >>> gJ = [paddle.to_tensor([1.0, 0.0])]
            >>> gO = [paddle.to_tensor([0.0, 1.0])]
            >>> _, s = dtnh_direction(gJ, gO, lam=1.0, with_stats=True)
            >>> round(float(s["angle1"]), 3), round(float(s["angle3"]), 3)
            (45.0, 45.0)
    """
    f64 = {k: v.astype("float64") for k, v in inner.items() if isinstance(v, paddle.Tensor)}
    jj, oo, jo, ro, rj, rr = (f64[k] for k in ("jj", "oo", "jo", "ro", "rj", "rr"))
    present = f64["present"]
    # <gO', gJ>, <gO', gO>, ||gO'||^2 per tensor
    if "masks" in gO_kept:
        pj, po = f64["pj"], f64["po"]
        pp = po
    elif "keep" in gO_kept:
        k = gO_kept["keep"].astype("float64")
        pj, po, pp = k * jo, k * oo, k * oo
    else:
        c = gO_kept["coef"].astype("float64")
        pj, po, pp = jo - c * rj, oo - c * ro, oo - 2.0 * c * ro + c * c * rr
    # the cap scales gO' by s
    s = gO_kept["cap"].astype("float64") if "cap" in gO_kept else None
    if s is not None:
        pj, po, pp = s * pj, s * po, s * s * pp
    sum_jj, sum_oo, sum_jo = jj.sum(), oo.sum(), jo.sum()
    sum_pj, sum_po, sum_pp = pj.sum(), po.sum(), pp.sum()
    d_j = sum_jj + lam * sum_pj
    d_o = sum_jo + lam * sum_po
    d_d = sum_jj + 2.0 * lam * sum_pj + lam * lam * sum_pp
    one = _scalar(1.0, jj, "float64")
    in_plane = granularity == "global" and batch_reference and "masks" not in gO_kept
    if in_plane:  # d = a gJ + y gO: exact in-plane angles
        y = lam * one if s is None else lam * s  # d = a gJ + y gO
        if "coef" in gO_kept:
            a = one - y * gO_kept["coef"].astype("float64")
        else:
            a, y = one, y * gO_kept["keep"].astype("float64")
        angles12 = {
            "angle1": _angle_in_plane(a, y, sum_jj, sum_oo, sum_jo, to_task=True),
            "angle2": _angle_in_plane(a, y, sum_jj, sum_oo, sum_jo, to_task=False),
        }
    else:  # per-block factors take d out of that plane (the vanilla direction never leaves it)
        angles12 = {"angle1": _angle_deg(d_j, d_d, sum_jj), "angle2": _angle_deg(d_o, d_d, sum_oo)}
    if "masks" in gO_kept:
        blocks = f64["coordinate_conflicts"]
    elif granularity == "global":
        blocks = (ro.sum() < 0).astype("float64")
    else:
        blocks = ((ro < 0).astype("float64") * present).sum() / paddle.clip(present.sum(), min=1.0)
    removed_sq = paddle.clip(sum_oo - 2.0 * sum_po + sum_pp, min=0.0)
    return {
        "task_grad_norm": paddle.sqrt(sum_jj),
        "reg_grad_norm": paddle.sqrt(sum_oo),
        "direction_norm": paddle.sqrt(paddle.clip(d_d, min=0.0)),
        "cos_task_reg": _cosine(sum_jo, sum_jj, sum_oo),
        "conflict_fraction": ((jo < 0).astype("float64") * present).sum() / paddle.clip(present.sum(), min=1.0),
        "blocks_in_conflict": blocks,
        "reg_removed": paddle.sqrt(removed_sq / paddle.clip(sum_oo, min=1e-300)),
        **angles12,
        "angle3": _angle_in_plane(one, lam * one, sum_jj, sum_oo, sum_jo, to_task=True),
        "angle4": _angle_in_plane(one, lam * one, sum_jj, sum_oo, sum_jo, to_task=False),
    }
