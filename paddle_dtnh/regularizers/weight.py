r"""Weight-space transfer regularizers with closed-form gradients.

Each penalises the shared parameters :math:`w_S` (same name and shape as in
the source) with ``alpha`` and the new head :math:`w_N` with
:math:`\frac{\beta}{2}\lVert w_N\rVert^2`. Their gradient is computed in
closed form (:meth:`~WeightRegularizer.closed_form_grads`), so DTNH needs no
backward pass for :math:`g_\Omega`.

Which tensors are penalised: by default (``weights_only=True``) only
convolution and linear weights (tensors with two or more dimensions), as in
the official L2-SP code; BatchNorm scale/shift and biases are left free.
``weights_only=False`` penalises every trainable tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import paddle

from .._checks import as_array, check_nonnegative, check_positive
from .base import SourceMismatchError, TransferRegularizer, match_source, weight_digests

__all__ = ["WeightRegularizer", "L2", "L2SP", "L1SP", "GroupLassoSP", "L2SPFisher"]


class WeightRegularizer(TransferRegularizer):
    """Shared machinery of the weight-space regularizers.

    Subclasses define the penalty of one shared tensor (:meth:`_penalty`)
    and its gradient (:meth:`_penalty_grad`), both without ``alpha``.

    Args:
        model (paddle.nn.Layer): the target network being fine-tuned.
        source (Layer|dict|str): source network, its state dict, or a
            ``.pdparams`` path; gives :math:`w_S^0`.
        alpha (float): weight of the penalty on shared parameters.
        beta (float): weight of :math:`\\frac{1}{2}\\lVert w_N\\rVert^2` on the head.
        head (Sequence[str], optional): name prefixes of the new parameters,
            e.g. ``["fc"]``. Default: ().
        weights_only (bool, optional): penalise only conv/linear weights
            (tensors of 2+ dims), as the official L2-SP code does. Default: True.
        strict (bool, optional): reject source entries that match no target
            tensor. Default: True.
    """

    has_closed_form = True

    _needs_source = True

    def __init__(
        self,
        model: paddle.nn.Layer,
        source=None,
        *,
        alpha: float,
        beta: float,
        head: Sequence[str] = (),
        weights_only: bool = True,
        strict: bool = True,
    ):
        super().__init__()
        self._set_model(model)
        self.alpha = check_nonnegative("alpha", alpha)
        self.beta = check_nonnegative("beta", beta)
        self.weights_only = weights_only
        if self._needs_source and source is None:
            raise ValueError(
                f"{type(self).__name__} needs the source weights: pass source= a "
                "paddle.nn.Layer, a state dict or a .pdparams path."
            )
        match = match_source(model, source, head=head, strict=strict)
        keep = (lambda p: p.ndim >= 2) if weights_only else (lambda p: True)
        # plain lists: the target's parameters must not be registered as
        # this Layer's own, and the source constants must not be saved with it
        self._shared = [(n, p, r) for n, p, r in match.shared if keep(p)]
        self._new = [(n, p) for n, p in match.new if keep(p)]
        # source constants as buffers, not persistable: reg.to() casts and
        # moves them in place (the tuples above stay valid); never saved
        self._register_constants("source", [r for _, _, r in self._shared])

    def regularized_parameters(self) -> list:
        return [p for _, p, _ in self._shared] + [p for _, p in self._new]

    def source_digests(self) -> dict:
        return weight_digests((n, r) for n, _, r in self._shared)

    def regularized_names(self) -> list:
        """Names of :meth:`regularized_parameters`, in the same order."""
        return [n for n, _, _ in self._shared] + [n for n, _ in self._new]

    def _times_alpha(self, grad, param):
        """alpha * grad, in place where grad is a fresh tensor (one pass, no second allocation)."""
        return self.alpha * grad if grad is param else grad.scale_(self.alpha)

    def _penalty(self, index: int, w, w0):
        raise NotImplementedError

    def _penalty_grad(self, index: int, w, w0):
        raise NotImplementedError

    def forward(self) -> paddle.Tensor:
        terms = [self.alpha * self._penalty(i, p, r) for i, (_, p, r) in enumerate(self._shared)]
        terms += [0.5 * self.beta * paddle.sum(p * p) for _, p in self._new]
        if not terms:  # nothing to regularize: a constant zero
            return paddle.zeros([])
        return paddle.add_n(terms)

    @paddle.no_grad()
    def closed_form_grads(self) -> list:
        """:math:`g_\\Omega` in closed form, aligned with :meth:`regularized_parameters`."""
        grads = [self._times_alpha(self._penalty_grad(i, p, r), p) for i, (_, p, r) in enumerate(self._shared)]
        grads += [self.beta * p for _, p in self._new]
        return grads

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, shared={len(self._shared)}, "
            f"new={len(self._new)}, weights_only={self.weights_only}"
        )


class L2(WeightRegularizer):
    r"""Plain weight decay, the "fine-tuning" baseline of the L2-SP paper.

    .. math::

        \Omega(w) = \frac{\alpha}{2}\lVert w_S\rVert^2 + \frac{\beta}{2}\lVert w_N\rVert^2

    ``source`` is optional: it is only used to check the shared parameters.
    See :class:`WeightRegularizer` for the arguments.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import L2
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 2))
            >>> reg = L2(net, alpha=0.1, beta=0.01, head=["1"])
            >>> float(reg()) > 0
            True
    """

    _needs_source = False

    def _penalty(self, index, w, w0):
        return 0.5 * paddle.sum(w * w)

    def _penalty_grad(self, index, w, w0):
        return w


class L2SP(WeightRegularizer):
    r"""L2-SP: squared distance to the source weights (Li et al., ICML 2018,
    https://arxiv.org/abs/1802.01483, Eq. 3).

    .. math::

        \Omega(w) = \frac{\alpha}{2}\lVert w_S - w_S^0\rVert^2
                  + \frac{\beta}{2}\lVert w_N\rVert^2

    See :class:`WeightRegularizer` for the arguments. The paper's defaults
    are alpha=0.1, beta=0.01.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import L2SP
            >>> src = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 5))
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 2))
            >>> _ = net[0].set_state_dict(src[0].state_dict())
            >>> reg = L2SP(net, src, alpha=0.1, beta=0.0, head=["1"])
            >>> float(reg())
            0.0
    """

    def _penalty(self, index, w, w0):
        d = w - w0
        return 0.5 * paddle.sum(d * d)

    def _penalty_grad(self, index, w, w0):
        return w - w0


class _Smoothed(WeightRegularizer):
    """A weight regularizer whose norm is smoothed by ``eps`` at zero."""

    def __init__(self, model, source=None, *, eps: float = 1e-8, **kwargs):
        eps = check_positive("eps", eps)
        super().__init__(model, source, **kwargs)
        self.eps = eps


class L1SP(_Smoothed):
    r"""L1-SP: absolute distance to the source weights (L2-SP paper, Sec. 3),
    smoothed so the gradient is defined at :math:`w = w^0`.

    .. math::

        \Omega(w) = \alpha \sum_j \big(\sqrt{(w_j - w_j^0)^2 + \epsilon} - \sqrt{\epsilon}\big)
                  + \frac{\beta}{2}\lVert w_N\rVert^2

    Args:
        eps (float, optional): smoothing of :math:`|x|`. Default: 1e-8.
        **kwargs: see :class:`WeightRegularizer`.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import L1SP
            >>> src = paddle.nn.Linear(2, 2)
            >>> net = paddle.nn.Linear(2, 2)
            >>> reg = L1SP(net, src, alpha=1.0, beta=0.0)
            >>> len(reg.closed_form_grads())
            1
    """

    def _penalty(self, index, w, w0):
        d = w - w0
        return paddle.sum(paddle.sqrt(d * d + self.eps)) - d.size * math.sqrt(self.eps)

    def _penalty_grad(self, index, w, w0):
        d = w - w0
        return d / paddle.sqrt(d * d + self.eps)


def _group_axis(model: paddle.nn.Layer) -> dict:
    """Axis of the output units of each parameter, by name: paddle's Linear
    stores its weight as [in, out] (axis 1); conv weights are [out, ...]."""
    axes = {}
    for prefix, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Linear):
            axes[f"{prefix}.weight" if prefix else "weight"] = 1
    return axes


class GroupLassoSP(_Smoothed):
    r"""Group-Lasso-SP (L2-SP paper, Sec. 3): one group per output channel of
    each convolution and per output unit of each linear layer, weighted by
    the square root of the group size :math:`p_g`, smoothed like L1-SP.

    .. math::

        \Omega(w) = \alpha \sum_g \sqrt{p_g}\,\big(\sqrt{\lVert w_g - w_g^0\rVert^2
                    + \epsilon} - \sqrt{\epsilon}\big) + \frac{\beta}{2}\lVert w_N\rVert^2

    With ``weights_only=False``, each entry of a 1-D tensor (bias, BN) is a
    group of its own.

    Args:
        eps (float, optional): smoothing of the group norm. Default: 1e-8.
        **kwargs: see :class:`WeightRegularizer`.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import GroupLassoSP
            >>> src = paddle.nn.Conv2D(2, 4, 3)
            >>> net = paddle.nn.Conv2D(2, 4, 3)
            >>> reg = GroupLassoSP(net, src, alpha=1.0, beta=0.0)
            >>> list(reg.closed_form_grads()[0].shape)
            [4, 2, 3, 3]
    """

    def __init__(self, model, source=None, *, eps: float = 1e-8, **kwargs):
        super().__init__(model, source, eps=eps, **kwargs)
        axes = _group_axis(model)
        self._axes = [axes.get(n, 0) for n, _, _ in self._shared]

    def _group_sq_norm(self, index, d):
        axis = self._axes[index]
        others = [a for a in range(d.ndim) if a != axis]
        if not others:  # 1-D tensor: every entry is a group
            return d * d, 1
        group_size = d.size // d.shape[axis]
        return paddle.sum(d * d, axis=others, keepdim=True), group_size

    def _penalty(self, index, w, w0):
        sq, p_g = self._group_sq_norm(index, w - w0)
        norms = paddle.sqrt(sq + self.eps) - math.sqrt(self.eps)
        return math.sqrt(p_g) * paddle.sum(norms)

    def _penalty_grad(self, index, w, w0):
        d = w - w0
        sq, p_g = self._group_sq_norm(index, d)
        return (math.sqrt(p_g) * d) / paddle.sqrt(sq + self.eps)


class L2SPFisher(WeightRegularizer):
    r"""L2-SP-Fisher (L2-SP paper, Sec. 3): L2-SP weighted per parameter by
    the diagonal Fisher information of the source model.

    .. math::

        \Omega(w) = \frac{\alpha}{2}\sum_j \hat F_{jj} (w_j - w_j^0)^2
                  + \frac{\beta}{2}\lVert w_N\rVert^2

    Args:
        fisher (dict|str): parameter name -> diagonal Fisher tensor, as
            returned by :func:`paddle_dtnh.regularizers.estimate_fisher`, or
            a path written by :func:`~paddle_dtnh.regularizers.save_fisher`.
        **kwargs: see :class:`WeightRegularizer`.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import L2SPFisher
            >>> src = paddle.nn.Linear(2, 2)
            >>> net = paddle.nn.Linear(2, 2)
            >>> _ = net.set_state_dict(src.state_dict())  # start at the source
            >>> fisher = {"weight": paddle.ones([2, 2]), "bias": paddle.ones([2])}
            >>> reg = L2SPFisher(net, src, fisher=fisher, alpha=1.0, beta=0.0)
            >>> float(reg())
            0.0
    """

    def __init__(self, model, source=None, *, fisher, **kwargs):
        super().__init__(model, source, **kwargs)
        if not isinstance(fisher, Mapping):
            from .fisher import load_fisher

            fisher = load_fisher(fisher)
        missing = [n for n, _, _ in self._shared if n not in fisher]
        mismatched = [
            f"{n} (parameter {list(p.shape)}, fisher {list(fisher[n].shape)})"
            for n, p, _ in self._shared
            if n in fisher and list(fisher[n].shape) != list(p.shape)
        ]
        if missing or mismatched:
            raise SourceMismatchError(
                "The Fisher information does not cover the shared parameters:\n"
                f"  missing ({len(missing)}): {', '.join(missing[:12])}\n"
                f"  shape mismatch ({len(mismatched)}): {', '.join(mismatched[:12])}\n"
                "Fix: estimate it with estimate_fisher() on the same source architecture."
            )
        self._fisher = [paddle.to_tensor(as_array(fisher[n]), dtype=p.dtype, place=p.place) for n, p, _ in self._shared]
        self._register_constants("fisher", self._fisher)

    def _penalty(self, index, w, w0):
        d = w - w0
        return 0.5 * paddle.sum(self._fisher[index] * d * d)

    def _penalty_grad(self, index, w, w0):
        return self._fisher[index] * (w - w0)
