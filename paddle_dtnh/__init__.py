"""paddle_dtnh: regularized deep transfer learning that never hurts.

DTNH (Wan et al., "Towards Making Deep Transfer Learning Never Hurt") for
PaddlePaddle: the projection (:mod:`paddle_dtnh.projection`), an optimizer
wrapper (:class:`DTNH`) and transfer regularizers
(:mod:`paddle_dtnh.regularizers`).
"""

from . import attention, features, projection, regularizers, stats
from .optimizer import DTNH, NONFINITE_POLICIES, REFERENCES
from .presets import PRESETS
from .projection import GRANULARITIES, RULES, dtnh_direction

__version__ = "0.1.0"

__all__ = [
    "DTNH",
    "NONFINITE_POLICIES",
    "PRESETS",
    "GRANULARITIES",
    "RULES",
    "REFERENCES",
    "dtnh_direction",
    "attention",
    "features",
    "projection",
    "regularizers",
    "stats",
]
