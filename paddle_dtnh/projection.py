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
The branch-free form above needs no host synchronisation, so the same code
runs on CPU and GPU without a device-to-host copy per step.

Nothing here knows about optimizers; :class:`paddle_dtnh.DTNH` wires these
functions to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import paddle

from ._checks import check_choice, check_nonnegative

__all__ = ["GRANULARITIES", "dtnh_direction", "direction_stats"]

#: ``"global"``: one inner product over all parameters (the paper).
#: ``"layer"``: one projection per parameter tensor.
GRANULARITIES = ("global", "layer")

_RAD_TO_DEG = 180.0 / math.pi


def _check_granularity(granularity: str) -> None:
    check_choice("granularity", granularity, GRANULARITIES)


def _dot(a: paddle.Tensor | None, b: paddle.Tensor | None, like: paddle.Tensor):
    """Inner product as a 0-d tensor; a ``None`` side counts as zero."""
    if a is None or b is None:
        return paddle.zeros([], dtype=like.dtype)
    return paddle.sum(a * b)


def _reference(task_grads, reg_grads) -> paddle.Tensor:
    """Any non-None gradient, used for dtype and placement of zeros."""
    for g in list(task_grads) + list(reg_grads):
        if g is not None:
            return g
    raise ValueError(
        "Every gradient is None: nothing to project. Check that the loss and "
        "the regularizer depend on the parameters passed."
    )


def _inner_products(task_grads, reg_grads):
    """Per-tensor <gJ,gJ>, <gO,gO>, <gJ,gO>, each a 1-D tensor."""
    like = _reference(task_grads, reg_grads)
    jj = paddle.stack([_dot(j, j, like) for j in task_grads])
    oo = paddle.stack([_dot(o, o, like) for o in reg_grads])
    jo = paddle.stack([_dot(j, o, like) for j, o in zip(task_grads, reg_grads)])
    return jj, oo, jo


def _combine(gj, go, scale, lam):
    """scale * gJ + lam * gO, with None for a zero gradient or no scale."""
    if gj is None:
        return lam * go
    scaled = gj if scale is None else scale * gj
    return scaled if go is None else scaled + lam * go


def _combine_inplace(gj, go, scale, lam):
    """:func:`_combine`, written into ``gj`` (``go`` is scaled in place)."""
    if gj is None:
        return go.scale_(lam)
    if scale is not None:
        gj.multiply_(scale)
    if go is not None:
        gj.add_(go if lam == 1.0 else go.scale_(lam))
    return gj


def dtnh_direction(
    task_grads: Sequence[paddle.Tensor | None],
    reg_grads: Sequence[paddle.Tensor | None],
    lam: float,
    granularity: str = "global",
    eps: float = 1e-20,
    project: bool = True,
    with_stats: bool = False,
    inplace: bool = False,
):
    r"""Combine the empirical-loss and regularizer gradients the DTNH way.

    For each parameter, returns :math:`d = g_J + \lambda g_\Omega^y` where
    :math:`g_\Omega^y` is :math:`g_\Omega` minus its component along
    :math:`g_J` when :math:`\langle g_J, g_\Omega\rangle < 0`, and
    :math:`g_\Omega` otherwise (DTNH paper, Algorithm 1 and Eqs. 6-7).

    Args:
        task_grads (list[Tensor|None]): gradient of the empirical loss J,
            one entry per parameter. ``None`` counts as zero.
        reg_grads (list[Tensor|None]): gradient of the regularizer Omega
            (without ``lam``), aligned with ``task_grads``. ``None`` (a
            parameter outside the regularizer's graph, such as a new head
            under a feature-map regularizer) counts as zero.
        lam (float): the regularization coefficient :math:`\lambda \ge 0`.
        granularity (str, optional): ``"global"`` projects once with inner
            products over all parameters, as in the paper; ``"layer"``
            projects each parameter tensor on its own. Default: "global".
        eps (float, optional): lower bound of :math:`\lVert g_J\rVert^2` in
            the denominator, so a zero task gradient gives
            :math:`d = \lambda g_\Omega` instead of NaN. Default: 1e-20.
        project (bool, optional): ``False`` returns the plain regularized
            gradient :math:`g_J + \lambda g_\Omega` (the vanilla baseline),
            so baselines and DTNH share one code path. Default: True.
        with_stats (bool, optional): also compute the diagnostics of
            :func:`direction_stats`. Default: False.
        inplace (bool, optional): write the directions into the
            ``task_grads`` tensors (and scale ``reg_grads`` in place) instead
            of allocating new ones: about 3x cheaper on large models. The
            inputs are overwritten. Default: False.

    Returns:
        tuple: ``(directions, stats)``. ``directions`` is a list aligned
        with the inputs (``None`` where both gradients are ``None``);
        ``stats`` is a dict of 0-d tensors: always ``task_sq_norm``,
        ``reg_sq_norm`` and ``inner`` (computed by the projection anyway),
        plus the diagnostics of :func:`direction_stats` with ``with_stats``.

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
    """
    _check_granularity(granularity)
    check_nonnegative("lam", lam)
    if len(task_grads) != len(reg_grads):
        raise ValueError(
            f"task_grads has {len(task_grads)} entries but reg_grads has "
            f"{len(reg_grads)}; they must be aligned parameter by parameter."
        )

    jj, oo, jo = _inner_products(task_grads, reg_grads)
    if granularity == "global":
        jj_p, jo_p = jj.sum(), jo.sum()
    else:
        jj_p, jo_p = jj, jo
    if project:
        # coefficient of gJ removed from gO; zero when there is no conflict
        coef = paddle.minimum(jo_p, paddle.zeros_like(jo_p)) / paddle.clip(
            jj_p, min=eps
        )
    else:
        coef = paddle.zeros_like(jo_p)
    task_scale = 1.0 - lam * coef  # d = task_scale * gJ + lam * gO

    combine = _combine_inplace if inplace else _combine
    directions = []
    for i, (gj, go) in enumerate(zip(task_grads, reg_grads)):
        if gj is None and go is None:
            directions.append(None)
            continue
        # gO = None is zero, but a global projection still removes coef * gJ
        # from that part of the regularizer's direction: scale gJ all the same
        scale = None if not project else task_scale if granularity == "global" else task_scale[i]
        directions.append(combine(gj, go, scale, lam))

    # byproducts of the projection, free to return (the finiteness check uses them)
    stats = {"task_sq_norm": jj.sum(), "reg_sq_norm": oo.sum(), "inner": jo.sum()}
    if with_stats:
        stats.update(direction_stats(jj, oo, jo, task_scale, lam, granularity))
    return directions, stats


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


def direction_stats(jj, oo, jo, task_scale, lam, granularity="global"):
    r"""Diagnostics of one DTNH step, from per-tensor inner products.

    Every quantity is exact and global (over all parameters), derived in
    closed form from :math:`\langle g_J,g_J\rangle`,
    :math:`\langle g_\Omega,g_\Omega\rangle`, :math:`\langle g_J,g_\Omega\rangle`
    and the per-tensor scale :math:`a` of :math:`d = a g_J + \lambda g_\Omega`,
    so no extra pass over the gradients is needed.

    Args:
        jj (Tensor): per-tensor :math:`\lVert g_J\rVert^2`, shape ``[n]``.
        oo (Tensor): per-tensor :math:`\lVert g_\Omega\rVert^2`, shape ``[n]``.
        jo (Tensor): per-tensor :math:`\langle g_J,g_\Omega\rangle`, shape ``[n]``.
        task_scale (Tensor): :math:`a`, 0-d (global) or shape ``[n]`` (layer).
        lam (float): the regularization coefficient.
        granularity (str, optional): how ``task_scale`` was computed.
            Default: "global".

    Returns:
        dict: 0-d tensors ``task_grad_norm``, ``reg_grad_norm``,
        ``direction_norm``, ``cos_task_reg``, ``conflict`` (1.0 when
        :math:`\langle g_J,g_\Omega\rangle<0` over all parameters, else
        0.0), ``conflict_fraction`` (share of parameter tensors whose own
        inner product is negative), and the paper's
        angles in degrees: ``angle1`` = ∠(d, gJ), ``angle2`` = ∠(d, gO),
        ``angle3`` = ∠(gJ + λgO, gJ), ``angle4`` = ∠(gJ + λgO, gO).

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
    _check_granularity(granularity)
    # a handful of scalars: float64 costs nothing and keeps small angles exact
    jj, oo, jo = jj.astype("float64"), oo.astype("float64"), jo.astype("float64")
    a = task_scale.astype("float64")
    sum_jj, sum_oo, sum_jo = jj.sum(), oo.sum(), jo.sum()
    # d = a*gJ + lam*gO (a per tensor for "layer")
    d_j = (a * jj).sum() + lam * sum_jo
    d_o = (a * jo).sum() + lam * sum_oo
    d_d = (a * a * jj).sum() + 2.0 * lam * (a * jo).sum() + lam * lam * sum_oo
    # v = gJ + lam*gO, the unprojected direction
    v_j = sum_jj + lam * sum_jo
    v_o = sum_jo + lam * sum_oo
    v_v = sum_jj + 2.0 * lam * sum_jo + lam * lam * sum_oo
    if granularity == "global":
        # d and v both lie in span{gJ, gO}: exact in-plane angles
        one = paddle.ones([], dtype="float64")
        angles = {
            "angle1": _angle_in_plane(a, lam, sum_jj, sum_oo, sum_jo, to_task=True),
            "angle2": _angle_in_plane(a, lam, sum_jj, sum_oo, sum_jo, to_task=False),
            "angle3": _angle_in_plane(one, lam, sum_jj, sum_oo, sum_jo, to_task=True),
            "angle4": _angle_in_plane(one, lam, sum_jj, sum_oo, sum_jo, to_task=False),
        }
    else:  # per-tensor scales take d out of that plane
        angles = {
            "angle1": _angle_deg(d_j, d_d, sum_jj),
            "angle2": _angle_deg(d_o, d_d, sum_oo),
            "angle3": _angle_deg(v_j, v_v, sum_jj),
            "angle4": _angle_deg(v_o, v_v, sum_oo),
        }
    return {
        "task_grad_norm": paddle.sqrt(sum_jj),
        "reg_grad_norm": paddle.sqrt(sum_oo),
        "direction_norm": paddle.sqrt(paddle.clip(d_d, min=0.0)),
        "cos_task_reg": _cosine(sum_jo, sum_jj, sum_oo),
        "conflict": (sum_jo < 0).astype("float64"),
        "conflict_fraction": (jo < 0).astype("float64").mean(),
        **angles,
    }
