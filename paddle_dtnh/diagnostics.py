"""The diagnostics of a DTNH step: their declarations, how they are computed
from per-tensor inner products, and the protocol of the loggers that
receive them.

Every consumer (the VisualDL logger, the experiment recorder, the demo, the
benchmarks) reads :data:`STATS` instead of spelling the keys: a stat's key in
the dict :meth:`paddle_dtnh.DTNH.update` returns, its VisualDL tag, and what
it measures. Stats marked ``diagnostic`` are computed only on steps that ask
for them (``track_stats=True`` or a logger's logging steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import paddle

from ._ops import dots, flags, scalar

__all__ = ["Stat", "STATS", "STAT_KEYS", "DIAGNOSTIC_KEYS", "GradientProducts", "direction_stats",
           "collect_step_stats", "StepLogger", "LoggerGroup", "notify_source_fit"]

_RAD_TO_DEG = 180.0 / math.pi


@dataclass(frozen=True)
class Stat:
    """One stat of a step: ``key`` in the stats dict, ``tag`` in VisualDL."""

    key: str
    tag: str
    description: str
    diagnostic: bool = True


#: every stat of a step, in display order
STATS = (
    Stat("task_loss", "loss/empirical", "J on the batch (not J + lam * Omega)", False),
    Stat("reg_loss", "loss/regularizer", "Omega on the batch", False),
    Stat("lam", "dtnh/lam", "the current coefficient lam", False),
    Stat("conflict", "dtnh/conflict", "1 when <r, gO> < 0 over all parameters (r: the reference, gJ by default)", False),
    Stat("angle1", "angles/angle1_d_gJ", "angle(d, gJ), degrees (DTNH paper, Fig. 4)"),
    Stat("angle2", "angles/angle2_d_gO", "angle(d, gO), degrees (Fig. 5)"),
    Stat("angle3", "angles/angle3_vanilla_gJ", "angle(gJ + lam gO, gJ), degrees (Fig. 4)"),
    Stat("angle4", "angles/angle4_vanilla_gO", "angle(gJ + lam gO, gO), degrees (Fig. 5)"),
    Stat("task_grad_norm", "grad_norm/task", "‖gJ‖"),
    Stat("reg_grad_norm", "grad_norm/regularizer", "‖gO‖"),
    Stat("direction_norm", "grad_norm/direction", "‖d‖"),
    Stat("cos_task_reg", "dtnh/cos_task_reg", "cos(gJ, gO)"),
    Stat("conflict_fraction", "dtnh/conflict_fraction", "share of parameter tensors with <gJ_l, gO_l> < 0"),
    Stat("blocks_in_conflict", "dtnh/blocks_in_conflict", "share of the rule's blocks in conflict with its reference"),
    Stat("reg_removed", "dtnh/reg_removed", "share of gO the rule removed, ‖gO − gO'‖ / ‖gO‖"),
)
STAT_KEYS = tuple(s.key for s in STATS)
DIAGNOSTIC_KEYS = tuple(s.key for s in STATS if s.diagnostic)


@dataclass
class GradientProducts:
    """Per-tensor inner products of gJ (j), gO (o) and the reference (r), as
    1-D tensors: everything the diagnostics are derived from.

    ``present`` is 1 where a block can be judged (the regularizer has a
    gradient there); the per-coordinate rule adds ``pj`` = <mask gO, gJ>,
    ``po`` = <mask gO, gO> and ``coordinate_conflicts`` (a 0-d share).
    """

    jj: paddle.Tensor
    oo: paddle.Tensor
    jo: paddle.Tensor
    ro: paddle.Tensor
    rj: paddle.Tensor
    rr: paddle.Tensor
    present: paddle.Tensor
    pj: paddle.Tensor | None = None
    po: paddle.Tensor | None = None
    coordinate_conflicts: paddle.Tensor | None = None

    @classmethod
    def of(cls, task_grads, reg_grads, ref, ro, like, batch_reference) -> GradientProducts:
        """The products of one step; ``ro`` = <r, gO> per tensor, already taken."""
        jj = dots(task_grads, task_grads, like)
        oo = dots(reg_grads, reg_grads, like)
        present = flags([r is not None and o is not None for r, o in zip(ref, reg_grads)], like)
        if batch_reference:
            return cls(jj=jj, oo=oo, jo=ro, ro=ro, rj=jj, rr=jj, present=present)
        return cls(jj=jj, oo=oo, jo=dots(task_grads, reg_grads, like), ro=ro, rj=dots(ref, task_grads, like),
                   rr=dots(ref, ref, like), present=present)

    def add_masked(self, task_grads, reg_grads, masks) -> None:
        """Per tensor <mask gO, gJ>, <mask gO, gO>, and the share of coordinates in conflict."""
        like = self.jj
        pj, po, conflicts, sizes = [], [], [], []
        zero = scalar(0.0, like)
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
        self.pj, self.po = paddle.stack(pj), paddle.stack(po)
        self.coordinate_conflicts = paddle.stack(conflicts).sum() / max(sum(sizes), 1)


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


def _f64(t):
    return None if t is None else t.astype("float64")


def direction_stats(products: GradientProducts, kept, lam: float, *, granularity="global",
                    batch_reference=True) -> dict:
    r"""Diagnostics of one step, from per-tensor inner products.

    With :math:`d = g_J + \lambda g'_\Omega`, every quantity is exact and
    global (over all parameters), derived in float64 from per-tensor inner
    products of :math:`g_J`, :math:`g_\Omega` and the reference, and from
    how much of each block's :math:`g_\Omega` the rule kept, so no extra
    pass over the gradients is needed (the per-coordinate rule needs one).

    Args:
        products (GradientProducts): the step's per-tensor inner products.
        kept (paddle_dtnh.conflict.KeptPull): how the rule formed
            :math:`g'_\Omega` (and the ``cap`` factor); its methods give the
            rule's share (:meth:`~paddle_dtnh.conflict.KeptPull.stat_products`,
            ``plane``, ``blocks_in_conflict``).
        lam (float): the regularization coefficient.
        granularity (str, optional): the blocks. Default: "global".
        batch_reference (bool, optional): whether r is gJ. Default: True.

    Returns:
        dict: 0-d tensors ``task_grad_norm``, ``reg_grad_norm``,
        ``direction_norm``, ``cos_task_reg``, ``conflict_fraction`` (share of
        parameter tensors whose own :math:`\langle g_J, g_\Omega\rangle` is
        negative), ``blocks_in_conflict`` (share of the rule's blocks in
        conflict with its reference), ``reg_removed`` (:math:`\lVert g_\Omega
        - g'_\Omega\rVert / \lVert g_\Omega\rVert`), and the paper's angles
        in degrees: ``angle1`` = ∠(d, gJ), ``angle2`` = ∠(d, gO), ``angle3`` =
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
    p = products
    jj, oo, jo, ro, rj, rr, present = (_f64(t) for t in (p.jj, p.oo, p.jo, p.ro, p.rj, p.rr, p.present))
    # <gO', gJ>, <gO', gO>, ||gO'||^2 per tensor: the rule's share, from how it formed gO'
    pp, po, pj = kept.stat_products(p, oo, ro, rr, jo, rj, cast=_f64)
    s = _f64(kept.cap)  # the cap scales gO' by s
    if s is not None:
        pj, po, pp = s * pj, s * po, s * s * pp
    sum_jj, sum_oo, sum_jo = jj.sum(), oo.sum(), jo.sum()
    sum_pj, sum_po, sum_pp = pj.sum(), po.sum(), pp.sum()
    d_j = sum_jj + lam * sum_pj
    d_o = sum_jo + lam * sum_po
    d_d = sum_jj + 2.0 * lam * sum_pj + lam * lam * sum_pp
    one = scalar(1.0, jj, "float64")
    # d = a gJ + y gO: exact in-plane angles (per-block factors take d out of that plane)
    plane = None
    if granularity == "global" and batch_reference:
        plane = kept.plane(lam * one if s is None else lam * s, one, _f64)
    if plane is not None:
        a, y = plane
        angles12 = {
            "angle1": _angle_in_plane(a, y, sum_jj, sum_oo, sum_jo, to_task=True),
            "angle2": _angle_in_plane(a, y, sum_jj, sum_oo, sum_jo, to_task=False),
        }
    else:  # the vanilla direction never leaves the plane
        angles12 = {"angle1": _angle_deg(d_j, d_d, sum_jj), "angle2": _angle_deg(d_o, d_d, sum_oo)}
    blocks = kept.blocks_in_conflict(p, ro, present, granularity, _f64)
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


def collect_step_stats(projection_stats: dict, *, lam: float, task_loss=None, reg_loss=None) -> dict:
    """The stats dict of an applied step: the projection's, plus ``lam`` and
    the two losses (detached) when known."""
    stats = dict(projection_stats)
    stats["lam"] = lam
    for key, value in (("task_loss", task_loss), ("reg_loss", reg_loss)):
        if value is not None:
            stats[key] = value.detach() if isinstance(value, paddle.Tensor) else value
    return stats


class StepLogger:
    """What :class:`paddle_dtnh.DTNH` and the training loops call on a logger.

    Subclasses override what they need; every method is a no-op here, so
    loggers combine freely (:class:`LoggerGroup`).
    """

    def wants_stats(self, step: int) -> bool:
        """Whether applied step ``step`` (1-based) should compute the diagnostics."""
        return False

    def on_step(self, dtnh, stats: dict) -> None:
        """After each applied step, with that step's stats."""

    def on_skip(self, dtnh) -> None:
        """After a step skipped for a non-finite direction."""

    def on_source_fit(self, report) -> None:
        """Once, when a ``preset="auto"`` DTNH is built: its :class:`~paddle_dtnh.SourceFit`."""

    def log_eval(self, step: int, loss=None, accuracy=None) -> None:
        """An evaluation's loss and accuracy at ``step``."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self) -> None:
        """Release files."""


def notify_source_fit(logger, report) -> None:
    """``logger.on_source_fit(report)``, where the logger has it: a logger
    written before 0.4 (not a :class:`StepLogger`) may lack it, or be None."""
    method = getattr(logger, "on_source_fit", None)
    if method is not None:
        method(report)


class LoggerGroup(StepLogger):
    """Several loggers as one: diagnostics on the steps any of them wants.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.diagnostics import LoggerGroup, StepLogger
            >>> class Every3(StepLogger):
            ...     def wants_stats(self, step):
            ...         return step % 3 == 0
            >>> LoggerGroup([StepLogger(), Every3()]).wants_stats(6)
            True
    """

    def __init__(self, loggers):
        self.loggers = [logger for logger in loggers if logger is not None]

    def wants_stats(self, step):
        return any(logger.wants_stats(step) for logger in self.loggers)

    def on_step(self, dtnh, stats):
        for logger in self.loggers:
            logger.on_step(dtnh, stats)

    def on_skip(self, dtnh):
        for logger in self.loggers:
            logger.on_skip(dtnh)

    def on_source_fit(self, report):
        for logger in self.loggers:
            notify_source_fit(logger, report)

    def log_eval(self, step, loss=None, accuracy=None):
        for logger in self.loggers:
            logger.log_eval(step, loss, accuracy)

    def flush(self):
        for logger in self.loggers:
            logger.flush()

    def close(self):
        for logger in self.loggers:
            logger.close()
