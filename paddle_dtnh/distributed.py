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

__all__ = ["world_size", "rank", "init_from_launcher", "all_reduce_mean"]


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


def all_reduce_mean(grads: list) -> list:
    """Average ``grads`` (tensors or ``None``) over all ranks, fused.

    ``None`` entries stay ``None``; they must be ``None`` on every rank (the
    same graph runs everywhere).

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.distributed import all_reduce_mean
            >>> all_reduce_mean([paddle.ones([2]), None])[0].numpy().tolist()  # one rank: unchanged
            [1.0, 1.0]
    """
    world = world_size()
    present = [g for g in grads if g is not None]
    if world == 1 or not present:
        return list(grads)
    flat = paddle.concat([g.reshape([-1]) for g in present])
    dist.all_reduce(flat)
    flat = flat / world
    pieces = paddle.split(flat, [g.size for g in present])
    averaged = iter(p.reshape(g.shape) for p, g in zip(pieces, present))
    return [None if g is None else next(averaged) for g in grads]
