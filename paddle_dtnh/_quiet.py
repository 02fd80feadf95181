"""Import Paddle without its import-time noise (this module must not import
Paddle at module level: the package imports it through here first).

Paddle prints a banner to stderr whenever ``OMP_NUM_THREADS`` > 1 (which this
project recommends on CPU) and warns that ccache is missing (it matters only
when compiling C++ extensions). Everything else Paddle prints still shows.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

_BANNER = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")


def import_paddle_quietly() -> None:
    if "paddle" in sys.modules:
        return
    # Paddle 2.6's libpaddle.so exports its own zlib (deflate, inflate, ...):
    # Python's zlib loaded after it crashes or fails with "inconsistent stream
    # state" (SciPy, aiohttp, npz files). Loaded first, it keeps the system's.
    # Paddle 3.x does not export them. See _paddle_compat's module docstring.
    import zlib  # noqa: F401
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            warnings.filterwarnings("ignore", message="No ccache found")
            import paddle  # noqa: F401
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(_BANNER):
                sys.stderr.write(line)
