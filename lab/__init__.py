"""The research harness: what the demo and the benchmarks share. Not part of
the installed library; it imports paddle_dtnh, never the other way round.

* :mod:`lab.methods`: method names (``dtnh_l2sp@never_hurt``), the rule
  candidates, building a regularizer;
* :mod:`lab.sources`: source networks pretrained here, cached and resumable;
* :mod:`lab.runs`: one fine-tuning run, the run store, the goal column.
"""

from .methods import CANDIDATES, METHODS, REGULARIZERS, MethodSpec, build_regularizer, check_methods, method_spec
from .runs import (HOLDOUT_SOURCES, Recorder, RunConfig, RunStore, fit_report, goal_text, load_source, run_transfer,
                   show_library_log, source_distance, summarize_diagnostics)
from .sources import pretrain_source

__all__ = ["CANDIDATES", "METHODS", "REGULARIZERS", "MethodSpec", "build_regularizer", "check_methods",
           "method_spec", "HOLDOUT_SOURCES", "Recorder", "RunConfig", "RunStore", "goal_text", "run_transfer",
           "fit_report", "load_source",
           "show_library_log", "source_distance", "summarize_diagnostics", "pretrain_source"]
