"""0.4's module path of :class:`paddle_dtnh.DTNH`, kept for imports written
against it; DTNH and its parts live in :mod:`paddle_dtnh.optim`."""

from .optim import ACCUMULATIONS, DTNH, NONFINITE_POLICIES
from .rules import REFERENCES

__all__ = ["DTNH", "ACCUMULATIONS", "NONFINITE_POLICIES", "REFERENCES"]
