"""Mixed precision for DTNH's two loops: the loss scale of a GradScaler, its
unscale (in float32), the finiteness check (the one host read of a step),
and half-precision gradients combined in float32."""

from __future__ import annotations

import paddle

from .. import _paddle_compat as compat

__all__ = ["HALF", "all_finite", "in_float32", "unscaled", "scale_of", "tell_scaler"]

HALF = (paddle.float16, paddle.bfloat16)


def all_finite(tensors, like=None) -> paddle.Tensor:
    """A 0-d bool tensor: every entry of every tensor is finite.

    A tensor's plain sum is NaN or Inf exactly when an entry is, or when its
    entries add up beyond the float range (|entries| ~1e31 on average in
    float32, a step that would wreck the weights anyway); a sum of squares
    would overflow already at ~1e16. One read per tensor, no temporary (half
    the cost of ``isfinite(t).all()`` on CPU)."""
    sums = [paddle.sum(t.astype("float32") if t.dtype in HALF else t)
            for t in tensors if t is not None]
    if sums:
        return paddle.isfinite(paddle.stack(sums)).all()
    return compat.full_on(None if like is None else like.place, True, "bool")


def in_float32(tensors) -> list:
    """Half-precision gradients (float16 parameters under O2 AMP) as float32,
    so the inner products neither overflow nor round away; float32 tensors
    pass through untouched (no copy)."""
    return [t if t is None or t.dtype not in HALF else t.astype("float32") for t in tensors]


def scale_of(scaler):
    """The loss scale of an enabled GradScaler (a 0-d tensor), else None."""
    if scaler is None or not scaler.is_enable():
        return None
    return compat.loss_scale(scaler)


def unscaled(grads, scale) -> list:
    """The gradients divided by the loss scale, in float32: float32 ones in
    place, half-precision ones into float32 copies (no rounding on the way;
    the step casts the direction back to each parameter's dtype)."""
    scale = scale.astype("float32").reshape([])
    return [None if g is None else g.divide_(scale) if g.dtype not in HALF else g.astype("float32") / scale
            for g in grads]


def tell_scaler(scaler, finite: bool) -> None:
    """Explicit mode: let an enabled GradScaler count the step and update its scale."""
    if scaler.is_enable():
        compat.report_found_inf(scaler, not finite)
