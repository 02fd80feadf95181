"""What every transfer regularizer shares: the interface DTNH talks to, and
matching a target network's parameters against the source network's."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import paddle

import numpy as np

from .._checks import as_array, check_not_empty_batch
from ..io.files import read_state_dict

__all__ = [
    "TransferRegularizer",
    "SourceMismatchError",
    "ParamMatch",
    "match_source",
    "check_source",
    "check_head",
    "weight_digests",
]


class SourceMismatchError(ValueError):
    """The target network's parameters do not line up with the source's."""


class TransferRegularizer(paddle.nn.Layer):
    """Base class of the regularizers :math:`\\Omega(w, w_s)`: losses, one contract for all.

    * ``forward`` returns :math:`\\Omega` (a scalar Tensor with a graph to
      the target's parameters);
    * :meth:`run` ``(x) -> (output, omega)``: the model's output on ``x`` and
      :math:`\\Omega` from the same forward pass;
    * :meth:`regularized_parameters`: the parameters :math:`\\Omega` depends on;
    * weight regularizers set :attr:`has_closed_form` and give
      ``closed_form_grads()``, so DTNH needs no backward pass for them.

    Taking :math:`g_\\Omega` (``paddle.grad`` or the closed form), averaging
    it across data-parallel ranks and pairing it with the loop's backward
    are the optimizer's business (:class:`paddle_dtnh.DTNH`), not the loss's.

    Subclasses set the target network with :meth:`_set_model` (kept outside
    the Layer tree: the model is the user's, neither a sublayer of the loss
    nor saved with it) and implement ``forward`` and
    :meth:`regularized_parameters`. Source constants are buffers that are not
    persistable: ``reg.to(...)`` moves them with the loss, and
    ``reg.state_dict()`` stays empty (the source is an input, given again
    when the loss is built).

    What ``forward`` takes depends on what :math:`\\Omega` reads, so the two
    families' signatures differ, and :meth:`run` is the one call every loop
    makes: a weight loss's ``forward()`` takes nothing (:math:`\\Omega` reads
    the weights only; the base :meth:`run` is ``self._model(x), self()``); a
    feature-map loss's ``forward(x, target_features)`` takes the batch and the
    features the target's forward produced (its :meth:`run` captures them
    during that forward). So a custom loss that needs its input (the batch,
    the output, captured features) overrides :meth:`run` to compute
    ``output`` once and pass what ``forward`` needs; the base :meth:`run`
    would call ``forward()`` with no argument.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import TransferRegularizer
            >>> class OutputPull(TransferRegularizer):  # Omega = mean(output ** 2): it needs the input
            ...     def __init__(self, model):
            ...         super().__init__()
            ...         self._set_model(model)
            ...     def regularized_parameters(self):
            ...         return [p for p in self.model.parameters() if not p.stop_gradient]
            ...     def forward(self, output):
            ...         return (output ** 2).mean()
            ...     def run(self, x):
            ...         output = self.model(x)
            ...         return output, self(output)
            >>> reg = OutputPull(paddle.nn.Linear(4, 3))
            >>> output, omega = reg.run(paddle.ones([2, 4]))
            >>> list(output.shape), list(omega.shape)
            ([2, 3], [])
    """

    #: whether ``closed_form_grads()`` gives :math:`g_\\Omega` without ``omega`` (weight regularizers)
    has_closed_form = False

    def _set_model(self, model: paddle.nn.Layer) -> None:
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> paddle.nn.Layer | None:
        """The target network this regularizer was built on (None if a
        subclass set none)."""
        return self.__dict__.get("_model")

    def _register_constants(self, prefix: str, tensors) -> None:
        """Register ``tensors`` as buffers that are not persistable, so
        ``.to()`` casts and moves them in place and ``state_dict()`` leaves them out."""
        for i, tensor in enumerate(tensors):
            if tensor is not None:
                self.register_buffer(f"{prefix}_{i}", tensor, persistable=False)

    def regularized_parameters(self) -> list:
        """The target parameters :math:`\\Omega` depends on (not copies)."""
        raise NotImplementedError

    def run(self, x: paddle.Tensor):
        """Forward the model on ``x``; return ``(output, omega)``. An empty
        batch is a ValueError (read from ``x.shape``: no device sync)."""
        check_not_empty_batch(x, f"{type(self).__name__}.run(x)")
        return self._model(x), self()

    def source_digests(self) -> dict:
        """``name -> digest`` of the source weights this loss pulls toward
        (:func:`weight_digests`; empty for a loss without a source): what a
        :class:`paddle_dtnh.SourceFit` is checked against."""
        return {}

    def extra_repr(self) -> str:
        return f"regularized={len(self.regularized_parameters())}"


def _shape(value) -> tuple:
    return tuple(value.shape)


def _in_head(name: str, head: Sequence[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in head)


@dataclass
class ParamMatch:
    """Target parameters split into those shared with the source and new ones.

    Attributes:
        shared (list[tuple[str, Tensor, Tensor]]): name, target parameter and
            source value (a constant on the parameter's place and dtype).
        new (list[tuple[str, Tensor]]): name and parameter of the new head.
    """

    shared: list
    new: list


def weight_digests(named, head: Sequence[str] = ()) -> dict:
    """``name -> SHA-1`` (16 hex digits) of every tensor of 2 or more
    dimensions (conv and linear weights) outside ``head``, taken on its
    float32 values: what identifies a source network's weights, whatever
    dtype or place a loss keeps them in. ``named`` is ``(name, tensor or
    array)`` pairs. One host copy per tensor: for construction-time checks,
    never a training step."""
    head = [head] if isinstance(head, str) else list(head)
    digests = {}
    for name, value in named:
        if value is None or len(_shape(value)) < 2 or _in_head(name, head):
            continue
        array = np.ascontiguousarray(as_array(value), dtype=np.float32)
        digests[name] = hashlib.sha1(array.tobytes()).hexdigest()[:16]
    return digests


def check_head(model: paddle.nn.Layer, head) -> list:
    """``head`` (a name prefix or a list of them) as a list, each prefix
    matching some parameter of ``model``; ValueError naming the classifier
    otherwise (the regularizers' and the source-fit test's one check)."""
    if isinstance(head, str):
        head = [head]
    elif isinstance(head, (list, tuple)) and all(isinstance(h, str) for h in head):
        head = list(head)
    else:
        raise TypeError(f"head must be a name prefix or a list of them (e.g. 'fc' or ['fc']), got {head!r}.")
    all_names = [n for n, _ in model.named_parameters()]
    unknown_head = [h for h in head if not any(_in_head(n, [h]) for n in all_names)]
    if unknown_head:
        from ..models.architectures import head_of

        raise ValueError(
            f"head prefix(es) {unknown_head} match no parameter of the model (its classifier: "
            f"{head_of(model)!r}). Parameter names start with: {sorted({n.split('.')[0] for n in all_names})}"
        )
    return head


def _format_names(title: str, names: list, limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"  {title} ({len(names)}): {shown}{more}"


def match_source(
    model: paddle.nn.Layer,
    source=None,
    *,
    head: Sequence[str] = (),
    strict: bool = True,
) -> ParamMatch:
    """Pair each trainable parameter of ``model`` with its source value.

    Parameters whose name starts with one of ``head`` are the new head (no
    source value). Every other trainable parameter must exist in ``source``
    with the same name and shape; otherwise a :class:`SourceMismatchError`
    lists the missing, mismatched and (with ``strict``) extra names.

    Args:
        model (paddle.nn.Layer): the target network.
        source (Layer|dict|str|None): source network, state dict or
            ``.pdparams`` path. ``None``: no source, every non-head parameter
            is paired with nothing (plain L2). Default: None.
        head (Sequence[str], optional): name prefixes of the new parameters,
            for example ``["fc"]`` for paddle.vision's ResNet. Default: ().
        strict (bool, optional): also reject source entries that match no
            target tensor (outside the head). Default: True.

    Returns:
        ParamMatch: the shared and the new parameters.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers.base import match_source
            >>> src = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 3))
            >>> tgt = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 2))
            >>> m = match_source(tgt, src, head=["1"])
            >>> [n for n, _, _ in m.shared], [n for n, _ in m.new]
            (['0.weight', '0.bias'], ['1.weight', '1.bias'])
    """
    head = check_head(model, head)
    trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]

    if source is None:
        return ParamMatch(
            shared=[(n, p, None) for n, p in trainable if not _in_head(n, head)],
            new=[(n, p) for n, p in trainable if _in_head(n, head)],
        )

    state = read_state_dict(source)
    check_source(model, state, head=head, strict=strict)
    shared, new = [], []
    for name, param in trainable:
        if _in_head(name, head):
            new.append((name, param))
            continue
        ref = paddle.to_tensor(as_array(state[name]), dtype=param.dtype, place=param.place)
        ref.stop_gradient = True
        shared.append((name, param, ref))
    warn_if_far_from_source([(p, r) for _, p, r in shared])
    return ParamMatch(shared=shared, new=new)


#: relative distance ||w - w0|| / ||w0|| above which a target is said to start far from its source
FAR_FROM_SOURCE = 0.5


def warn_if_far_from_source(pairs) -> float:
    """Warn when the target's shared weights do not start at the source's:
    usually a model built with random weights instead of the source's
    (L2-SP then starts at a large Omega and pulls toward weights the model never had).
    Returns the relative distance."""
    if not pairs:
        return 0.0
    with paddle.no_grad():
        diff = float(paddle.add_n([paddle.sum((p.astype("float64") - r.astype("float64")) ** 2) for p, r in pairs]))
        base = float(paddle.add_n([paddle.sum(r.astype("float64") ** 2) for _, r in pairs]))
    distance = (diff / base) ** 0.5 if base > 0 else 0.0
    if distance > FAR_FROM_SOURCE:
        warnings.warn(
            f"The target's shared weights start far from the source's (relative distance "
            f"{distance:.2f}): was the model loaded with the source's weights? Build it with "
            "paddle_dtnh.models.architectures.target_from(source, num_classes) or paddle_dtnh.integrations.hub.load_source.",
            stacklevel=3,
        )
    return distance


def check_source(model: paddle.nn.Layer, state: dict, *, head: Sequence[str] = (), strict: bool = True,
                 whole_network: bool = False) -> None:
    """The one check of source weights against a target, for every regularizer.

    Every trainable non-head tensor of ``model`` (with ``whole_network``, every
    non-head entry of its state dict, buffers included) must be in ``state``
    with the same shape and finite values; with ``strict``, ``state`` may hold
    nothing else outside the head. Dtypes may differ (values are cast).

    Raises:
        SourceMismatchError: listing the missing, mismatched, extra and
            non-finite names, and the fix.
    """
    head = [head] if isinstance(head, str) else list(head)
    from ..models.architectures import architecture_mismatch, head_of

    other = architecture_mismatch(model, state)
    if other:
        raise SourceMismatchError(other)
    own = model.state_dict()
    if whole_network:
        needed = [(n, t) for n, t in own.items() if not _in_head(n, head)]
    else:
        needed = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient and not _in_head(n, head)]
    missing = [n for n, _ in needed if n not in state]
    mismatched = [f"{n} (target {list(t.shape)}, source {list(_shape(state[n]))})"
                  for n, t in needed if n in state and _shape(state[n]) != tuple(t.shape)]
    nonfinite = [n for n, t in needed if n in state and _shape(state[n]) == tuple(t.shape)
                 and not np.isfinite(as_array(state[n])).all()]
    extra = [] if not strict else sorted(k for k in state if k not in own and not _in_head(k, head))
    if missing or mismatched or extra or nonfinite:
        lines = ["The target network does not match the source weights:"]
        for title, names in (("missing in the source", missing), ("shape mismatch", mismatched),
                             ("extra in the source", extra), ("NaN or Inf in the source", nonfinite)):
            if names:
                lines.append(_format_names(title, names))
        fixes = []
        if missing or mismatched or extra:
            fixes.append(f"declare the new layers with head=[...] (this model's classifier: "
                         f"head=[{head_of(model)!r}]), load weights of the same architecture, or pass "
                         "strict=False to ignore extra source entries")
        if nonfinite:
            fixes.append("the source weights are corrupt (NaN/Inf): load a sound copy")
        lines.append("Fix: " + "; ".join(fixes) + ".")
        raise SourceMismatchError("\n".join(lines))
