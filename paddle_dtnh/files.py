"""Every file the library writes or reads goes through here.

* :func:`save` writes atomically: a unique temporary file in the target's
  folder, fsync, rename. A crash leaves the previous file intact, and the
  temporaries that crashed writers left behind are removed on the next save
  or load of the same file.
* :func:`load` reads with a restricted unpickler that admits only what a
  state dict holds (dicts, lists, tuples, strings, numbers, NumPy arrays,
  dtypes and scalars): a crafted ``.pdparams`` cannot run code. NumPy arrays
  come back as Paddle tensors, as ``paddle.load`` gives them. ``trusted=True``
  falls back to ``paddle.load`` (full pickle) for files you made yourself.
* :func:`check_format` verifies the format tag of the library's own files;
  :func:`read_state_dict` reads a network, a state dict or a weights file in
  every layout the library accepts.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Mapping

import numpy as np
import paddle

__all__ = ["UnsafeFileError", "save", "load", "check_format", "read_state_dict", "stale_temporaries", "to_tensors"]

#: (module, name) pairs a state-dict pickle may reference
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),  # paddle.save reduces a nested tensor to tuple((name, ndarray))
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in pickles written by protocol 2
}
# a paddle.save'd state dict carries this bookkeeping entry; paddle.load drops it
_PADDLE_NAME_MAP = "StructuredToParameterName@@"


class UnsafeFileError(ValueError, pickle.UnpicklingError):
    """A file references a Python object a state dict never holds."""


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"it references {module}.{name}, which a weights or checkpoint file never holds: "
            "it was refused, as it could run code. If you made this file yourself and trust "
            "it, load it with trusted=True."
        )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _temporary_prefix(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-")


def stale_temporaries(path: str) -> list:
    """Temporary files of ``path`` left by writers that no longer run."""
    prefix = _temporary_prefix(path)
    folder = os.path.dirname(prefix)
    if not os.path.isdir(folder):
        return []
    stale = []
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if not full.startswith(prefix):
            continue
        pid = name[len(os.path.basename(prefix)):].split("-")[0]
        try:
            os.kill(int(pid), 0)  # the writer still runs: not stale
        except (ValueError, ProcessLookupError):
            stale.append(full)
        except PermissionError:  # another user's live process
            continue
    return stale


def _remove_stale(path: str) -> None:
    for tmp in stale_temporaries(path):
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass


def save(obj, path: str) -> None:
    """Write ``obj`` to ``path`` with ``paddle.save``, atomically.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import files
            >>> files.save({"format": "example/1", "w": paddle.ones([2])}, "/tmp/example.pdparams")
            >>> files.load("/tmp/example.pdparams")["w"].numpy().tolist()
            [1.0, 1.0]
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale(path)
    tmp = f"{_temporary_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        paddle.save(obj, tmp)
        with open(tmp, "rb") as f:  # reach the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_saved_tensor(obj) -> bool:
    """How ``paddle.save`` stores a tensor nested in a container: (name, ndarray)."""
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def to_tensors(obj):
    """NumPy arrays (bare, or as ``paddle.save`` nests them: ``(name, ndarray)``)
    -> Paddle tensors, recursively, as ``paddle.load`` gives them."""
    if _is_saved_tensor(obj):
        obj = obj[1]
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise UnsafeFileError("an array of Python objects is not a tensor")
        return paddle.to_tensor(obj)
    if isinstance(obj, Mapping):
        return type(obj)((k, to_tensors(v)) for k, v in obj.items() if k != _PADDLE_NAME_MAP)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_tensors(v) for v in obj)
    return obj


def load(path: str, *, what: str = "file", trusted: bool = False):
    """Read a file written by ``paddle.save`` without running code.

    Args:
        path (str): the file.
        what (str, optional): what the file is, for error messages. Default: "file".
        trusted (bool, optional): use ``paddle.load`` (full pickle, can run
            code) for a file you trust that holds other objects. Default: False.

    Raises:
        FileNotFoundError: nothing, or a directory, at ``path``.
        UnsafeFileError: the file references a type a state dict never holds.
        ValueError: the file is corrupt or not a Paddle file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileNotFoundError(f"{_cap(what)} {path} is a directory, not a file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_cap(what)} not found: {path}")
    _remove_stale(path)
    if trusted:
        return paddle.load(path)
    try:
        with open(path, "rb") as f:
            return to_tensors(_StateDictUnpickler(f).load())
    except UnsafeFileError as err:
        raise UnsafeFileError(f"{_cap(what)} {path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError) as err:  # a truncated or foreign file
        raise ValueError(
            f"{_cap(what)} {path} is corrupt or not a Paddle file ({type(err).__name__}: {err})."
        ) from err


def check_format(blob, fmt: str, path: str, what: str) -> dict:
    """``blob`` if it is a dict tagged ``{"format": fmt}``, else ValueError naming the file."""
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(
            f"{path} is not a {what} written by paddle_dtnh (expected format {fmt!r}, found {found!r})."
        )
    return blob


def read_state_dict(source, *, what: str = "source weights", trusted: bool = False) -> dict:
    """A network, a state dict or a weights file as a dict of name -> tensor/array.

    Files may hold a dict or PaddleHub's older ``[state_dict, optimizer_state]`` list.
    """
    if isinstance(source, paddle.nn.Layer):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        source = load(source, what=what, trusted=trusted)
        if isinstance(source, (list, tuple)) and source and isinstance(source[0], Mapping):
            source = source[0]
        if not isinstance(source, Mapping):
            raise TypeError(f"The {what} file holds a {type(source).__name__}, not a state dict.")
    if not isinstance(source, Mapping):
        raise TypeError(
            f"The {what} must be a paddle.nn.Layer, a state dict (name -> Tensor) or "
            f"a path to a .pdparams file, got {type(source).__name__}."
        )
    return dict(source)

