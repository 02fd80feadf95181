"""paddle_dtnh: regularized deep transfer learning that never hurts.

DTNH (Wan et al., "Towards Making Deep Transfer Learning Never Hurt") for
PaddlePaddle: the projection (:mod:`paddle_dtnh.projection`), an optimizer
wrapper (:class:`DTNH`) and transfer regularizers
(:mod:`paddle_dtnh.regularizers`).
"""

from ._quiet import import_paddle_quietly

import_paddle_quietly()

from . import attention, features, projection, regularizers, stats  # noqa: E402
from .optimizer import DTNH, NONFINITE_POLICIES, REFERENCES  # noqa: E402
from .presets import PRESETS  # noqa: E402
from .projection import GRANULARITIES, RULES, dtnh_direction  # noqa: E402

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
