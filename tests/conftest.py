import zlib  # noqa: F401  before Paddle: Paddle 2.6 exports its own zlib (see paddle_dtnh/_quiet.py)

import numpy as np
import paddle
import pytest
from hypothesis import settings

# property tests draw the same examples on every run: a failure reproduces
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


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
