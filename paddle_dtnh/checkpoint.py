"""Crash-safe training checkpoints: model, optimizer (DTNH included), extras.

:func:`save_checkpoint` writes to a temporary file in the same folder and
renames it over the target, so a crash while saving leaves the previous
checkpoint intact. :func:`load_checkpoint` checks the whole file against the
model before changing anything.
"""

from __future__ import annotations

import os

import paddle

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_FORMAT = "paddle_dtnh.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def save_checkpoint(path: str, model: paddle.nn.Layer, optimizer=None, **extra) -> None:
    """Atomically write ``model`` (and ``optimizer``, and ``extra`` values) to ``path``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.checkpoint import save_checkpoint, load_checkpoint
            >>> net = paddle.nn.Linear(2, 2)
            >>> save_checkpoint("/tmp/example.ckpt", net, step=3)
            >>> load_checkpoint("/tmp/example.ckpt", net)["step"]
            3
    """
    blob = {"format": _FORMAT, "model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        paddle.save(blob, tmp)
        with open(tmp, "rb") as f:  # reach the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, model: paddle.nn.Layer, optimizer=None) -> dict:
    """Restore ``model`` (and ``optimizer``) from ``path``; return the extras.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupt, not a paddle_dtnh checkpoint, or
            its tensors do not match the model (missing, unexpected, or
            differently shaped names are listed); nothing is changed then.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        blob = paddle.load(path)
    except Exception as err:  # a truncated or foreign file fails in many ways
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or not a Paddle file ({type(err).__name__}: {err}). "
            "Resume from an earlier checkpoint."
        ) from err
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by paddle_dtnh.save_checkpoint.")
    own, saved = model.state_dict(), blob["model"]
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    mismatched = [f"{k} (model {list(own[k].shape)}, checkpoint {list(saved[k].shape)})"
                  for k in own if k in saved and list(own[k].shape) != list(saved[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this model: missing {missing[:8]}, unexpected "
            f"{unexpected[:8]}, shape mismatch {mismatched[:8]}. Build the same model as when it was saved."
        )
    if optimizer is not None and "optimizer" not in blob:
        raise CheckpointError(f"Checkpoint {path} holds no optimizer state.")
    model.set_state_dict(saved)
    if optimizer is not None:
        optimizer.set_state_dict(blob["optimizer"])
    return dict(blob.get("extra", {}))
