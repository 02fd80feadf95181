"""Crash-safe training checkpoints: model, optimizer (DTNH included), extras.

:func:`save_checkpoint` writes through :func:`paddle_dtnh.io.files.save`, so a
crash while saving leaves the previous checkpoint intact. :func:`load_checkpoint`
reads without running code, verifies the file's digest, and checks the whole
file (model tensors: names, shapes, dtypes, finite values; the optimizer
part) before changing anything.
"""

from __future__ import annotations

import numpy as np
import paddle

from . import files
from .files import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_FORMAT = "paddle_dtnh.checkpoint/1"


def save_checkpoint(path: str, model: paddle.nn.Layer, optimizer=None, **extra) -> None:
    """Atomically write ``model`` (and ``optimizer``, and ``extra`` values) to ``path``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.io.checkpoint import save_checkpoint, load_checkpoint
            >>> net = paddle.nn.Linear(2, 2)
            >>> save_checkpoint("/tmp/example.ckpt", net, step=3)
            >>> load_checkpoint("/tmp/example.ckpt", net)["step"]
            3
    """
    blob = {"format": _FORMAT, "model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    files.save(blob, path)


def _model_problems(own: dict, saved) -> list:
    if not isinstance(saved, dict):
        return [f"the model part is a {type(saved).__name__}, not a state dict"]
    problems = [f"missing {k}" for k in own if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in own]
    for k, value in own.items():
        if k not in saved:
            continue
        other = saved[k]
        if not isinstance(other, paddle.Tensor):
            problems.append(f"{k} is a {type(other).__name__}, not a tensor")
        elif list(other.shape) != list(value.shape):
            problems.append(f"{k}: shape {list(other.shape)} in the file, {list(value.shape)} in the model")
        elif other.dtype != value.dtype:
            problems.append(f"{k}: dtype {other.dtype} in the file, {value.dtype} in the model")
    return problems


def _nonfinite(saved: dict) -> list:
    return [k for k, v in saved.items() if isinstance(v, paddle.Tensor) and v.dtype in
            (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)
            and not np.isfinite(v.astype("float32").numpy()).all()]


def load_checkpoint(path: str, model: paddle.nn.Layer, optimizer=None, *, trusted: bool = False,
                    verify: bool = True, allow_nonfinite: bool = False) -> dict:
    """Restore ``model`` (and ``optimizer``) from ``path``; return the extras.

    All or nothing: the whole file is checked before the model or the
    optimizer is written.

    Args:
        path (str): the checkpoint.
        model (paddle.nn.Layer): the model to restore.
        optimizer (optional): the optimizer to restore (DTNH or a Paddle optimizer).
        trusted (bool, optional): read with ``paddle.load`` (full pickle). Default: False.
        verify (bool, optional): require the digest record and check it
            (``False`` reads a 0.1 checkpoint, which has none). Default: True.
        allow_nonfinite (bool, optional): accept NaN/Inf weights. Default: False.

    Raises:
        FileNotFoundError: no file at ``path`` (or a directory).
        CheckpointError: the file is corrupt, unsafe, not a paddle_dtnh
            checkpoint, or does not fit the model or optimizer; the message
            names the file, the item and the fix. Nothing is changed then.
    """
    try:
        blob = files.check_format(files.load(path, what="checkpoint", trusted=trusted,
                                             require_digest=verify and not trusted), _FORMAT, path, "checkpoint")
    except FileNotFoundError:
        raise
    except ValueError as err:  # UnsafeFileError is one too
        raise CheckpointError(f"{err} Resume from another checkpoint.") from err
    problems = _model_problems(model.state_dict(), blob.get("model"))
    if problems:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this model: {'; '.join(problems[:8])}"
            f"{' ...' if len(problems) > 8 else ''}. Build the same model as when it was saved."
        )
    nonfinite = [] if allow_nonfinite else _nonfinite(blob["model"])
    if nonfinite:
        raise CheckpointError(
            f"Checkpoint {path} holds non-finite weights (NaN or Inf) in {', '.join(nonfinite[:6])}"
            f"{' ...' if len(nonfinite) > 6 else ''}: the run that saved it had diverged. Resume from an "
            "earlier checkpoint, or pass allow_nonfinite=True if you mean it.")
    if optimizer is not None:
        if "optimizer" not in blob:
            raise CheckpointError(f"Checkpoint {path} holds no optimizer state; pass optimizer=None "
                                  "to restore the model only.")
        validate = getattr(optimizer, "check_state_dict", None)
        if validate is not None:
            try:
                validate(blob["optimizer"])
            except (ValueError, TypeError) as err:
                raise CheckpointError(f"Checkpoint {path}, optimizer part: {err}") from err
    model.set_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.set_state_dict(blob["optimizer"])
    extra = blob.get("extra", {})
    return dict(extra) if isinstance(extra, dict) else {}
