"""Averaging gradients across data-parallel ranks.

``paddle.DataParallel`` all-reduces the gradients that ``backward()``
accumulates, not those returned by ``paddle.grad``. DTNH's projection is
non-linear, so it must see the global gradients: :func:`all_reduce_mean`
averages a whole gradient list with one collective (the list is flattened
into one buffer, reduced, and split back).
"""

from __future__ import annotations

import paddle
import paddle.distributed as dist

__all__ = ["world_size", "rank", "init_from_launcher", "all_reduce_mean", "synchronised"]


def world_size() -> int:
    """Number of data-parallel ranks (1 outside ``paddle.distributed``)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's data-parallel rank (0 outside ``paddle.distributed``)."""
    return dist.get_rank() if dist.is_initialized() else 0


def init_from_launcher() -> int:
    """Join the process group when started by ``paddle.distributed.launch``
    with more than one process; return the world size."""
    import os

    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return world_size()


_CHECKED_PATTERNS: set = set()


def _check_same_nones(grads, world) -> None:
    """Raise the same named error on every rank if a gradient is None on some
    ranks only (the fused buffers would not line up). Checked once per None
    pattern: one small collective and host read the first time it is seen."""
    pattern = tuple(g is None for g in grads)
    if pattern in _CHECKED_PATTERNS:
        return
    like = next((g for g in grads if g is not None), None)
    mask = paddle.to_tensor([float(p) for p in pattern], dtype="float32",
                            place=like.place if like is not None else None)
    dist.all_reduce(mask)
    counts = mask.numpy()
    differing = [i for i, c in enumerate(counts) if 0 < c < world]
    if differing:
        raise RuntimeError(
            f"Gradient(s) {differing[:10]} are None on {int(counts[differing[0]])} of {world} ranks and "
            "present on the others: every rank must run the same graph (the same layers and losses) "
            "for DTNH to average its gradients."
        )
    _CHECKED_PATTERNS.add(pattern)


def all_reduce_mean(grads: list) -> list:
    """Average ``grads`` (tensors or ``None``) over all ranks, fused.

    ``None`` entries stay ``None``; they must be ``None`` on every rank (the
    same graph runs everywhere): a mismatch raises a ``RuntimeError`` naming
    the gradients, on every rank.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.distributed import all_reduce_mean
            >>> all_reduce_mean([paddle.ones([2]), None])[0].numpy().tolist()  # one rank: unchanged
            [1.0, 1.0]
    """
    world = world_size()
    present = [g for g in grads if g is not None]
    if world == 1:
        return list(grads)
    _check_same_nones(grads, world)
    if not present:
        return list(grads)
    flat = paddle.concat([g.reshape([-1]) for g in present])
    dist.all_reduce(flat)
    flat = flat / world
    pieces = paddle.split(flat, [g.size for g in present])
    averaged = iter(p.reshape(g.shape) for p, g in zip(pieces, present))
    return [None if g is None else next(averaged) for g in grads]


def _agree(grads) -> bool:
    """Whether ``grads`` hold the same values on every rank, by a fingerprint
    (a position-weighted sum and the sum of squares) compared as max == min:
    one collective of 4 numbers and one host read."""
    sums = [g.astype("float32").sum() for g in grads]
    squares = [(g.astype("float32") ** 2).sum() for g in grads]
    weights = paddle.arange(1, len(sums) + 1, dtype="float32")
    local = paddle.stack([(paddle.stack(sums) * weights).sum(), paddle.stack(squares).sum()])
    both = paddle.concat([local, -local])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)  # [max, -min]
    return bool((both[:2] == -both[2:]).all())


def synchronised(grads: list) -> list:
    """The ranks' mean of gradients that ``backward()`` accumulated: as they
    are where they already agree on every rank (``paddle.DataParallel``'s
    reducer averaged them, e.g. under ``paddle.Model``), averaged here where
    they do not (a loop that calls ``backward()`` on the wrapped layer without
    ``DataParallel.forward``, as PaddleHub's Trainer does with more than one
    device: the reducer never runs). One process: ``grads`` unchanged.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.distributed import synchronised
            >>> synchronised([paddle.ones([2]), None])[0].numpy().tolist()  # one rank: unchanged
            [1.0, 1.0]
    """
    if world_size() == 1:
        return list(grads)
    _check_same_nones(grads, world_size())
    present = [g for g in grads if g is not None]
    if not present or _agree(present):
        return list(grads)
    return all_reduce_mean(grads)
