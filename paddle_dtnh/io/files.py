"""Every file the library writes or reads goes through here.

* :func:`save` writes atomically: a unique temporary file in the target's
  folder, fsync, rename. A crash leaves the previous file intact, and the
  temporaries that crashed writers left behind are removed on the next save
  or load of the same file. After the pickle it appends a digest record:
  the SHA-256 of the pickle and a CRC-32 per tensor (``paddle.load`` and
  every pickle reader stop at the pickle's end and never see it).
* :func:`load` verifies the digest where there is one (the library's own
  formats require it), so accidental corruption (a flipped byte, a torn
  copy) is refused, naming the tensor where it can; it does not stop a
  forger, who can rewrite the digest: that is what the no-code loader below
  and the recorded download digests of PaddleHub weights are for.
* :func:`load` reads with a restricted unpickler that admits only what a
  state dict holds (dicts, lists, tuples, strings, numbers, NumPy arrays,
  dtypes and scalars): a crafted ``.pdparams`` cannot run code, and it
  allocates nothing the file did not pay for: an array is only built once
  its shape is shown to match the bytes the file holds (``numpy.ndarray(shape,
  dtype)``, a size without data, is refused), data reused through the pickle
  memo is charged each time it is used, and an object the file shares is
  walked once. NumPy arrays come
  back as Paddle tensors, as ``paddle.load`` gives them. ``trusted=True``
  falls back to ``paddle.load`` (full pickle) for files you made yourself.
* Every failure to read a file is a :class:`CheckpointError` or an
  :class:`UnsafeFileError` (both ``ValueError``), the cause chained.
* :func:`check_format` verifies the format tag of the library's own files;
  :func:`read_state_dict` reads a network, a state dict or a weights file in
  every layout the library accepts.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import os
import pickle
import re
import uuid
import zlib
from collections.abc import Mapping

import numpy as np
import paddle

__all__ = ["CheckpointError", "UnsafeFileError", "save", "load", "check_format", "read_state_dict",
           "stale_temporaries", "to_tensors", "MAX_DEPTH"]

#: (module, name) pairs a state-dict pickle may reference
_ALLOWED = {
    ("numpy", "dtype"),
}
#: containers a pickle may call (paddle.save reduces a nested tensor to tuple((name, ndarray)));
#: each call is charged the length of its argument (see _Budget)
_CONTAINERS = {("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "set"),
               ("builtins", "frozenset"), ("collections", "OrderedDict")}
# a paddle.save'd state dict carries this bookkeeping entry; paddle.load drops it
_PADDLE_NAME_MAP = "StructuredToParameterName@@"


#: containers nested deeper than this are refused (a state dict needs a handful)
MAX_DEPTH = 64

_FOOTER = re.compile(rb"\n#paddle_dtnh/digest:(\d{10})\n\Z")
_FOOTER_SIZE = 32


class CheckpointError(ValueError):
    """A file that cannot be read (corrupt, truncated, not a Paddle file, a
    digest that does not match), or a checkpoint that does not fit the model."""


class UnsafeFileError(CheckpointError, pickle.UnpicklingError):
    """A file references a Python object a state dict never holds."""


class _Budget:
    """What a file paid for. Every array, scalar and bytes object the
    unpickler makes, and every element a container call copies, is charged
    here; each kind may total at most the file's size. The pickle memo lets a
    file reuse one object many times for a few bytes each: without the budget
    a 1 MB string reused a thousand times would fill a thousand 1 MB arrays."""

    __slots__ = ("size", "left")

    def __init__(self, size: int):
        self.size = size
        self.left = {"array": size, "bytes": size, "items": size}

    def charge(self, kind: str, n: int, what: str) -> None:
        if n > self.left[kind]:
            raise CheckpointError(f"{what} needs {n} more {'elements' if kind == 'items' else 'bytes'} than "
                                  f"the {self.size}-byte file holds: it reuses its data through the pickle "
                                  "memo, which no saved state dict does")
        self.left[kind] -= n


class _ArrayStub:
    """What the unpickler builds instead of an ndarray: the array is made in
    ``__setstate__`` only once its shape matches the bytes the file holds."""

    __slots__ = ("array", "budget")

    def __init__(self, budget: _Budget):
        self.budget = budget

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CheckpointError(f"an array's state is malformed ({type(state).__name__})")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafeFileError("an array of Python objects is not a tensor")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise CheckpointError(f"an array has the shape {shape!r}")
        if not isinstance(raw, (bytes, bytearray)):
            raise CheckpointError(f"an array's data is a {type(raw).__name__}, not raw bytes")
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(raw):
            raise CheckpointError(f"an array of shape {list(shape)} ({dtype}) needs {needed} bytes, "
                                  f"the file holds {len(raw)}")
        self.budget.charge("array", needed, f"an array of shape {list(shape)} ({dtype})")
        self.array = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _ndarray(*args, **kwargs):
    """What ``numpy.ndarray`` is in a file: a name ``_reconstruct`` accepts,
    never a call, which would allocate a size the file gives without its data."""
    raise UnsafeFileError("it calls numpy.ndarray(shape, dtype), which allocates an array of a size the file "
                          "names without holding its data; paddle.save writes arrays with their bytes, "
                          "so the file is not one it wrote.")


class _StandIns:
    """The callables a state-dict pickle may reference, each charging the
    unpickler's :class:`_Budget` before it allocates."""

    def __init__(self, budget: _Budget):
        self.budget = budget

    def reconstruct(self, cls, shape, typecode):
        """numpy's ``_reconstruct``: no allocation before the data is seen."""
        if cls is not _ndarray:
            raise UnsafeFileError(f"it reconstructs a {getattr(cls, '__name__', cls)!r}, not a NumPy array.")
        return _ArrayStub(self.budget)

    def scalar(self, dtype, data=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
            raise UnsafeFileError("a NumPy scalar of Python objects is not a number")
        if len(data) != dtype.itemsize:
            raise CheckpointError(f"a {dtype} scalar needs {dtype.itemsize} bytes, the file holds {len(data)}")
        self.budget.charge("array", len(data), f"a {dtype} scalar")
        return np.frombuffer(bytes(data), dtype=dtype)[0]

    def encode(self, text, encoding="utf-8", errors="strict"):
        """``_codecs.encode``: bytes in pickles written by protocol 2."""
        if not isinstance(text, str):
            raise CheckpointError(f"it encodes a {type(text).__name__}, not a string")
        self.budget.charge("bytes", len(text), "a bytes object")
        return codecs.encode(text, encoding, errors)

    @staticmethod
    def empty_bytes(*args):
        """``bytes()``: how protocol 2 writes ``b""``. ``bytes(n)`` would allocate a size the file names."""
        if args:
            raise UnsafeFileError(f"it calls bytes() with {len(args)} argument(s); a saved state dict only "
                                  "calls it with none (an empty bytes object).")
        return b""

    def container(self, kind):
        def make(*args):
            size = sum(len(a) for a in args if hasattr(a, "__len__"))
            self.budget.charge("items", size, f"a {kind.__name__}")
            return kind(*args)

        make.__name__ = kind.__name__
        return make


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, size: int):
        super().__init__(file, encoding="latin1")
        self._stand_ins = _StandIns(_Budget(size))

    def find_class(self, module, name):
        stand_ins = self._stand_ins
        if module == "__builtin__":  # protocol 2 writes Python 2's name (pickle's own find_class maps it)
            module = "builtins"
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return stand_ins.reconstruct
            if name == "scalar":
                return stand_ins.scalar
        if (module, name) == ("numpy", "ndarray"):
            return _ndarray
        if (module, name) == ("_codecs", "encode"):
            return stand_ins.encode
        if (module, name) == ("builtins", "bytes"):
            return stand_ins.empty_bytes
        if (module, name) in _CONTAINERS:
            return stand_ins.container(super().find_class(module, name))
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
            >>> from paddle_dtnh.io import files
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
        with open(tmp, "r+b") as f:
            digest = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            record = json.dumps({"sha256": digest.hexdigest(), "crc32": _crcs(obj)}).encode()
            f.write(record + b"\n#paddle_dtnh/digest:%010d\n" % len(record))
            f.flush()
            os.fsync(f.fileno())  # reach the disk before the rename
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_saved_tensor(obj) -> bool:
    """How ``paddle.save`` stores a tensor nested in a container: (name, ndarray)."""
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _shared(walk):
    """``walk(x, depth)`` run once per object: a pickle's memo shares objects,
    and a list holding one list twice, sixty levels deep, is a few hundred
    bytes whose tree has 2**60 nodes. Shared objects stay shared."""
    done = {}

    def once(x, depth):
        if depth > MAX_DEPTH:
            raise CheckpointError(f"it nests containers more than {MAX_DEPTH} levels deep")
        if id(x) not in done:
            done[id(x)] = (x, walk(x, depth, once))  # x kept alive: its id is not reused
        return done[id(x)][1]

    return lambda obj: once(obj, 0)


def _arrays(obj):
    """The unpickler's array stand-ins replaced by their arrays (depth-bounded)."""
    def walk(x, depth, again):
        if isinstance(x, _ArrayStub):
            if not hasattr(x, "array"):
                raise CheckpointError("an array has no data")
            return x.array
        if isinstance(x, Mapping):
            return type(x)((k, again(v, depth + 1)) for k, v in x.items())
        if isinstance(x, (list, tuple, set, frozenset)):
            return type(x)(again(v, depth + 1) for v in x)
        return x

    return _shared(walk)(obj)


def _crc_items(obj, path="", seen=None):
    """(path, array) of every tensor in ``obj``, as saved (Tensor) or loaded
    (ndarray, or ``(name, ndarray)`` the way paddle.save nests them); a
    container reached twice is read once."""
    seen = set() if seen is None else seen
    if isinstance(obj, paddle.Tensor):
        yield path, obj.numpy()
    elif _is_saved_tensor(obj):
        yield path, obj[1]
    elif isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, (Mapping, list, tuple)):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
        for k, v in items:
            if k != _PADDLE_NAME_MAP:
                yield from _crc_items(v, f"{path}/{k}" if path else str(k), seen)


def _crcs(obj) -> dict:
    return {p: zlib.crc32(np.ascontiguousarray(a).tobytes()) for p, a in _crc_items(obj)}


def to_tensors(obj):
    """NumPy arrays (bare, or as ``paddle.save`` nests them: ``(name, ndarray)``)
    -> Paddle tensors, recursively, as ``paddle.load`` gives them; an array
    reached twice becomes one tensor."""
    def walk(x, depth, again):
        if _is_saved_tensor(x):
            return again(x[1], depth)
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise UnsafeFileError("an array of Python objects is not a tensor")
            return paddle.to_tensor(x)
        if isinstance(x, Mapping):
            return type(x)((k, again(v, depth + 1)) for k, v in x.items() if k != _PADDLE_NAME_MAP)
        if isinstance(x, (list, tuple)):
            return type(x)(again(v, depth + 1) for v in x)
        return x

    return _shared(walk)(obj)


def _split_digest(data: bytes):
    """(payload, digest record or None) of a file's bytes."""
    match = _FOOTER.search(data[-_FOOTER_SIZE:])
    if match is None:
        return data, None
    size = int(match.group(1))
    if size > len(data) - _FOOTER_SIZE:
        raise CheckpointError("its digest record is cut off")
    record = data[len(data) - _FOOTER_SIZE - size: len(data) - _FOOTER_SIZE]
    try:
        digest = json.loads(record)
        if not (isinstance(digest, dict) and isinstance(digest.get("sha256"), str)
                and isinstance(digest.get("crc32"), dict)):
            raise ValueError("not a digest record")
    except ValueError as err:
        raise CheckpointError(f"its digest record is corrupt ({err})") from err
    return data[: len(data) - _FOOTER_SIZE - size], digest


def _unpickle(payload: bytes):
    return _arrays(_StateDictUnpickler(io.BytesIO(payload), len(payload)).load())


def _mismatch(payload: bytes, digest: dict) -> str:
    """Which tensors differ from their recorded CRC-32, where the damaged
    payload can still be read."""
    try:
        found = _crcs(_unpickle(payload))
    except Exception:  # the damage may be anywhere: only naming fails here
        return ""
    bad = [p for p, crc in digest["crc32"].items() if found.get(p) != crc]
    return f" (tensor {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})" if bad else ""


def load(path: str, *, what: str = "file", trusted: bool = False, require_digest: bool = False):
    """Read a file written by ``paddle.save`` without running code.

    Args:
        path (str): the file.
        what (str, optional): what the file is, for error messages. Default: "file".
        trusted (bool, optional): use ``paddle.load`` (full pickle, can run
            code) for a file you trust that holds other objects. Default: False.
        require_digest (bool, optional): refuse a file without a digest
            record (the library's own formats). Default: False.

    Raises:
        FileNotFoundError: nothing, or a directory, at ``path``.
        UnsafeFileError: the file references a type a state dict never holds.
        CheckpointError: the file is corrupt, truncated, not a Paddle file,
            or does not match its digest (the tensor named where possible).
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
            data = f.read()
        payload, digest = _split_digest(data)
        if digest is None and require_digest:
            raise CheckpointError("it carries no digest record (written by an older paddle_dtnh, or its "
                                  "end is damaged); load it with verify=False if you trust it")
        if digest is not None and hashlib.sha256(payload).hexdigest() != digest["sha256"]:
            raise CheckpointError("its content does not match its recorded SHA-256: the file is "
                                  f"corrupt{_mismatch(payload, digest)}")
        return to_tensors(_unpickle(payload))
    except UnsafeFileError as err:
        raise UnsafeFileError(f"{_cap(what)} {path}: {err}") from err
    except CheckpointError as err:
        raise CheckpointError(f"{_cap(what)} {path}: {err}.") from err
    except Exception as err:  # a truncated or foreign file fails in many ways
        raise CheckpointError(
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
        path, source = source, load(source, what=what, trusted=trusted)
        if isinstance(source, (list, tuple)) and source and isinstance(source[0], Mapping):
            source = source[0]
        if not isinstance(source, Mapping):
            raise CheckpointError(f"The {what} file {os.fspath(path)} holds a {type(source).__name__}, "
                                  "not a state dict.")
    if not isinstance(source, Mapping):
        raise TypeError(
            f"The {what} must be a paddle.nn.Layer, a state dict (name -> Tensor) or "
            f"a path to a .pdparams file, got {type(source).__name__}."
        )
    return dict(source)

