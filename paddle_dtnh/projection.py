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

a :class:`paddle_dtnh.rules.Rule` names the block (``granularity``), what
happens to a conflicting block (``on_conflict``: project, drop, ignore
for the vanilla step, or any rule registered with
:func:`paddle_dtnh.rules.register_conflict_rule`, whose kernel lives in
:mod:`paddle_dtnh.conflict`) and an optional cap on the kept pull
(``max_reg_ratio``). The reference ``r`` conflicts are judged against is
this batch's ``gJ`` (the paper) or any list of tensors passed as
``reference`` (the moving average or the held-out gradient that
:class:`paddle_dtnh.DTNH` keeps, see :mod:`paddle_dtnh.references`).

Every rule guarantees, per block, :math:`\\langle g'_{\\Omega,b}, r_b\\rangle \\ge 0`,
hence :math:`\\langle d, r\\rangle \\ge \\langle g_J, r\\rangle`; with the batch
reference, :math:`\\langle d, g_J\\rangle \\ge \\lVert g_J\\rVert^2` as in the paper.

Everything is branch-free on tensor values, so there is no host
synchronisation: the same code runs on CPU and GPU. Nothing here knows about
optimizers; :class:`paddle_dtnh.DTNH` wires these functions to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle

from . import _paddle_compat as compat
from ._checks import check_nonnegative, check_positive
from ._ops import dots
from .conflict import CONFLICT_RULES, ConflictInputs, KeptPull
from .diagnostics import GradientProducts, direction_stats
from .rules import PRESETS, Rule

__all__ = ["KeptPull", "dtnh_direction", "direction_stats"]


def _check_aligned(task_grads, reg_grads, reference) -> paddle.Tensor:
    """Lists of equal length whose tensors are floating point and agree in
    shape, dtype and place, index by index (metadata only: no host sync);
    returns one non-None tensor."""
    lists = {"task_grads": task_grads, "reg_grads": reg_grads}
    if reference is not None:
        lists["reference"] = reference
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
        for name, g in present:
            if not paddle.is_floating_point(g):
                raise TypeError(
                    f"Gradient {i}: {name} has dtype {g.dtype}; gradients must be floating point (float16, "
                    "bfloat16, float32 or float64). Cast it (g.astype('float32')) or take it of a float parameter.")
        for name, g in present[1:]:
            if list(g.shape) != list(first.shape) or g.dtype != first.dtype or not compat.same_place(g.place, first.place):
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


def _cap_factor(ratio, lam, task_sq, kept_sq) -> paddle.Tensor:
    """s = min(1, ratio * ||gJ|| / (lam * ||gO'||)) as a 0-d tensor."""
    pull = lam * paddle.sqrt(kept_sq)
    return paddle.clip(ratio * paddle.sqrt(task_sq) / paddle.clip(pull, min=1e-30), max=1.0)


def _rule_of(rule) -> Rule:
    """``rule`` as a Rule (a preset name, a Rule, or None: the paper's)."""
    if rule is None or isinstance(rule, Rule):
        return rule or PRESETS["paper"]
    if isinstance(rule, str) and rule in PRESETS:
        return PRESETS[rule]
    raise ValueError(f"Invalid rule: {rule!r}; expected a paddle_dtnh.Rule or a preset "
                     f"({', '.join(map(repr, PRESETS))}).")


def dtnh_direction(
    task_grads: Sequence[paddle.Tensor | None],
    reg_grads: Sequence[paddle.Tensor | None],
    lam: float,
    rule: Rule | str | None = None,
    *,
    reference: Sequence[paddle.Tensor | None] | None = None,
    with_stats: bool = False,
    inplace: bool = False,
    eps: float = 1e-20,
):
    r"""Combine the empirical-loss and regularizer gradients the DTNH way.

    Returns :math:`d = g_J + \lambda g'_\Omega`. With the default rule this
    is the paper's Algorithm 1: :math:`g'_\Omega` is :math:`g_\Omega` minus
    its component along :math:`g_J` when :math:`\langle g_J, g_\Omega\rangle < 0`.
    In general, for every block :math:`b` of ``rule.granularity`` and the
    reference :math:`r` (``reference``, default :math:`g_J`):

    * ``on_conflict="project"``: :math:`g'_{\Omega,b} = g_{\Omega,b} -
      \frac{\min(\langle r_b, g_{\Omega,b}\rangle, 0)}{\max(\lVert r_b\rVert^2,\epsilon)} r_b`;
    * ``on_conflict="drop"``: :math:`g'_{\Omega,b} = g_{\Omega,b}\,
      [\langle r_b, g_{\Omega,b}\rangle \ge 0]`;
    * ``granularity="coordinate"`` (project or drop):
      :math:`g'_{\Omega,i} = g_{\Omega,i}\,[r_i g_{\Omega,i} \ge 0]`;
    * ``on_conflict="ignore"``: :math:`g'_\Omega = g_\Omega` (the vanilla step).
    * any other registered name: that :class:`~paddle_dtnh.conflict.ConflictRule`'s kernel.

    Guarantee, every block of a projecting rule: :math:`\langle g'_{\Omega,b},
    r_b\rangle \ge 0`, so :math:`\langle d, r\rangle \ge \langle g_J, r\rangle`;
    with the batch reference, :math:`\langle d, g_J\rangle \ge \lVert g_J\rVert^2`.

    With ``rule.max_reg_ratio`` :math:`\rho`, :math:`g'_\Omega` is then scaled by
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
        rule (Rule|str, optional): a :class:`paddle_dtnh.rules.Rule` or a
            preset name. Its ``reference`` field is DTNH's business; here
            only ``reference`` (the tensors) counts. Default: "paper".
        reference (list[Tensor|None], optional): the reference :math:`r`
            conflicts are judged against, aligned with the other lists.
            Default: None, i.e. ``task_grads`` (the paper).
        with_stats (bool, optional): also compute the diagnostics of
            :func:`paddle_dtnh.diagnostics.direction_stats`. Default: False.
        inplace (bool, optional): write the directions into the
            ``task_grads`` tensors (and scale ``reg_grads`` in place) instead
            of allocating new ones. The inputs are overwritten. Default: False.
        eps (float, optional): lower bound of :math:`\lVert r_b\rVert^2` in
            the projection's denominator, so a zero reference gives no NaN.
            Must be > 0. Default: 1e-20.

    Returns:
        tuple: ``(directions, stats)``. ``directions`` is a list aligned
        with the inputs (``None`` where no term is present); ``stats`` is a
        dict of 0-d tensors: always ``conflict`` (1.0 when
        :math:`\langle r, g_\Omega\rangle < 0` over all parameters), plus the
        diagnostics with ``with_stats``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import Rule
            >>> from paddle_dtnh.projection import dtnh_direction
            >>> gJ = [paddle.to_tensor([1.0, 0.0])]
            >>> gO = [paddle.to_tensor([-1.0, 1.0])]
            >>> d, stats = dtnh_direction(gJ, gO, lam=1.0, with_stats=True)
            >>> d[0].numpy().tolist()
            [1.0, 1.0]
            >>> bool(stats["conflict"])
            True
            >>> d, _ = dtnh_direction(gJ, gO, lam=1.0, rule=Rule(granularity="layer", on_conflict="drop"))
            >>> d[0].numpy().tolist()
            [1.0, 0.0]
    """
    rule = _rule_of(rule)
    lam = check_nonnegative("lam", lam)
    eps = check_positive("eps", eps)
    like = _check_aligned(task_grads, reg_grads, reference)
    batch_reference = reference is None
    ref = task_grads if batch_reference else reference
    granularity = rule.granularity

    # <r_b, gO_b> per tensor: the conflict test of every rule
    ro = dots(ref, reg_grads, like)
    stats = {"conflict": (ro.sum() < 0).astype(like.dtype)}
    # the diagnostics read the inputs, so they are taken before any in-place write
    products = GradientProducts.of(task_grads, reg_grads, ref, ro, like, batch_reference) if with_stats else None
    inputs = ConflictInputs(task_grads, reg_grads, ref, ro, like, granularity, eps, products)
    kept = CONFLICT_RULES[rule.on_conflict].kept_pull(inputs)
    reg_grads = kept.formed(task_grads, reg_grads, products, inplace)

    if rule.max_reg_ratio is not None and rule.projects:
        if products is not None:
            task_sq = products.jj.sum()
        else:  # the project rule's ||r||^2 is ||gJ||^2 with the batch reference
            task_sq = (inputs.rr if inputs.read_rr and batch_reference else dots(task_grads, task_grads, like)).sum()
        kept.cap = _cap_factor(rule.max_reg_ratio, lam, task_sq, kept.norm_sq(inputs, reg_grads))

    directions = kept.assemble(task_grads, reg_grads, ref, lam, batch_reference, inplace)
    if with_stats:
        stats.update(direction_stats(products, kept, lam, granularity=granularity,
                                     batch_reference=batch_reference))
    return directions, stats
