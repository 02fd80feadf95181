"""Transfer regularizers :math:`\\Omega(w, w_s)`, each a ``paddle.nn.Layer``."""

from .base import SourceMismatchError, TransferRegularizer, match_source
from .feature_maps import DELTA, FeatureMapRegularizer, KnowDist
from .fisher import estimate_fisher, load_fisher, save_fisher
from .weight import L1SP, L2, L2SP, GroupLassoSP, L2SPFisher, WeightRegularizer

__all__ = [
    "TransferRegularizer",
    "WeightRegularizer",
    "SourceMismatchError",
    "match_source",
    "L2",
    "L2SP",
    "L1SP",
    "GroupLassoSP",
    "L2SPFisher",
    "FeatureMapRegularizer",
    "KnowDist",
    "DELTA",
    "estimate_fisher",
    "save_fisher",
    "load_fisher",
]
