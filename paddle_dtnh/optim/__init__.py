"""DTNH and its parts, one module each.

* :mod:`~paddle_dtnh.optim.dtnh`: :class:`DTNH`, the public entry points;
* :mod:`~paddle_dtnh.optim.options`: what it takes, grouped by concept
  (:class:`LamSchedule`, :class:`NonFinitePolicy`, :class:`Observation`,
  :class:`LoopOptions`);
* :mod:`~paddle_dtnh.optim.state`: :class:`StepState`, its mutable state;
* :mod:`~paddle_dtnh.optim.step`: :func:`take_step` (the step as a function)
  and the ``Stepper`` both loops call;
* :mod:`~paddle_dtnh.optim.explicit_loop`, :mod:`~paddle_dtnh.optim.hook_loop`:
  the two loops; :mod:`~paddle_dtnh.optim.reg_gradient`: gO;
* :mod:`~paddle_dtnh.optim.construction`: the rule it runs, the checks, the
  assembly; :mod:`~paddle_dtnh.optim.checkpoint` and
  :mod:`~paddle_dtnh.optim.inner_state`: its checkpoint;
  :mod:`~paddle_dtnh.optim.amp`: mixed precision.
"""

from .dtnh import ACCUMULATIONS, DTNH, NONFINITE_POLICIES
from .options import LamSchedule, LoopOptions, NonFinitePolicy, Observation
from .state import StepState
from .step import take_step

__all__ = ["DTNH", "ACCUMULATIONS", "NONFINITE_POLICIES", "LamSchedule", "LoopOptions", "NonFinitePolicy",
           "Observation", "StepState", "take_step"]
