import zlib  # noqa: F401  before Paddle: Paddle 2.6 exports its own zlib (see paddle_dtnh/_quiet.py)

import numpy as np
import paddle
import pytest
from hypothesis import settings

# property tests draw the same examples on every run: a failure reproduces
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.paddle3(reason=...)`` tests on Paddle 2.6, with the reason."""
    from paddle_dtnh._paddle_compat import PADDLE_3

    for item in items:
        marker = item.get_closest_marker("paddle3")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.paddle3 needs reason=")
        if not PADDLE_3:
            _PADDLE3_SKIPPED.append(item.nodeid)
            item.add_marker(pytest.mark.skip(reason=f"needs Paddle >= 3.0 ({paddle.__version__} here): {reason}"))


_PADDLE3_SKIPPED = []


def pytest_terminal_summary(terminalreporter):
    """On Paddle 2.6, say how many tests were skipped for needing Paddle 3 (zero included)."""
    from paddle_dtnh._paddle_compat import PADDLE_3

    if not PADDLE_3:
        terminalreporter.write_line(
            f"Paddle {paddle.__version__}: {len(_PADDLE3_SKIPPED)} collected test(s) skipped as needing "
            "Paddle >= 3.0 (marker paddle3; reasons above with -rs)")


@pytest.fixture(autouse=True)
def _seed():
    paddle.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def float64():
    """Build models in float64 for finite-difference checks."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)
