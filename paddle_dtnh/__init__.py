"""paddle_dtnh: regularized deep transfer learning that never hurts.

DTNH (Wan et al., "Towards Making Deep Transfer Learning Never Hurt") for
PaddlePaddle. The layers, each in its own module:

* :mod:`paddle_dtnh.rules`: :class:`Rule` and the named :data:`PRESETS`;
* :mod:`paddle_dtnh.transferability`: :func:`source_fit`, the test before
  training that chooses the rule of ``preset="auto"``;
* :mod:`paddle_dtnh.projection`: the direction, pure functions on tensor lists;
* :mod:`paddle_dtnh.references`: what conflicts are judged against;
* :mod:`paddle_dtnh.diagnostics`: the step's stats and the logger protocol;
* :class:`DTNH` (:mod:`paddle_dtnh.optim`, with its parts): wires them to any Paddle optimizer;
* :mod:`paddle_dtnh.regularizers`: L2-SP, KnowDist, DELTA and relatives;
* :mod:`paddle_dtnh.models`, :mod:`paddle_dtnh.io`, :mod:`paddle_dtnh.integrations`
  (PaddleHub, paddle.Model, VisualDL), :mod:`paddle_dtnh.data`.
"""

from ._quiet import import_paddle_quietly

import_paddle_quietly()

from ._paddle_compat import PaddleVersionError, check_paddle_version  # noqa: E402

check_paddle_version()

from . import attention, diagnostics, features, projection, references, regularizers, rules  # noqa: E402
from .optim import ACCUMULATIONS, DTNH, NONFINITE_POLICIES  # noqa: E402
from .projection import dtnh_direction  # noqa: E402
from .transferability import SourceFit, source_fit  # noqa: E402
from .rules import GRANULARITIES, ON_CONFLICT, PRESETS, REFERENCES, Rule, resolve_rule  # noqa: E402

from ._version import __version__  # noqa: E402

__all__ = [
    "DTNH",
    "PaddleVersionError",
    "Rule",
    "PRESETS",
    "resolve_rule",
    "SourceFit",
    "source_fit",
    "NONFINITE_POLICIES",
    "ACCUMULATIONS",
    "GRANULARITIES",
    "ON_CONFLICT",
    "REFERENCES",
    "dtnh_direction",
    "attention",
    "diagnostics",
    "features",
    "projection",
    "references",
    "regularizers",
    "rules",
]
