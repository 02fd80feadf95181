"""The stats of a DTNH step, declared once, and the protocol of the loggers
that receive them.

Every consumer (the VisualDL logger, the experiment recorder, the demo, the
benchmarks) reads :data:`STATS` instead of spelling the keys: a stat's key in
the dict :meth:`paddle_dtnh.DTNH.update` returns, its VisualDL tag, and what
it measures. Stats marked ``diagnostic`` are computed only on steps that ask
for them (``track_stats=True`` or a logger's logging steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle

__all__ = ["Stat", "STATS", "STAT_KEYS", "DIAGNOSTIC_KEYS", "collect_step_stats", "StepLogger", "LoggerGroup"]


@dataclass(frozen=True)
class Stat:
    """One stat of a step: ``key`` in the stats dict, ``tag`` in VisualDL."""

    key: str
    tag: str
    description: str
    diagnostic: bool = True


#: every stat of a step, in display order
STATS = (
    Stat("task_loss", "loss/empirical", "J on the batch (not J + lam * Omega)", False),
    Stat("reg_loss", "loss/regularizer", "Omega on the batch", False),
    Stat("lam", "dtnh/lam", "the current coefficient lam", False),
    Stat("conflict", "dtnh/conflict", "1 when <r, gO> < 0 over all parameters (r: the reference, gJ by default)", False),
    Stat("angle1", "angles/angle1_d_gJ", "angle(d, gJ), degrees (DTNH paper, Fig. 4)"),
    Stat("angle2", "angles/angle2_d_gO", "angle(d, gO), degrees (Fig. 5)"),
    Stat("angle3", "angles/angle3_vanilla_gJ", "angle(gJ + lam gO, gJ), degrees (Fig. 4)"),
    Stat("angle4", "angles/angle4_vanilla_gO", "angle(gJ + lam gO, gO), degrees (Fig. 5)"),
    Stat("task_grad_norm", "grad_norm/task", "‖gJ‖"),
    Stat("reg_grad_norm", "grad_norm/regularizer", "‖gO‖"),
    Stat("direction_norm", "grad_norm/direction", "‖d‖"),
    Stat("cos_task_reg", "dtnh/cos_task_reg", "cos(gJ, gO)"),
    Stat("conflict_fraction", "dtnh/conflict_fraction", "share of parameter tensors with <gJ_l, gO_l> < 0"),
    Stat("blocks_in_conflict", "dtnh/blocks_in_conflict", "share of the rule's blocks in conflict with its reference"),
    Stat("reg_removed", "dtnh/reg_removed", "share of gO the rule removed, ‖gO − gO'‖ / ‖gO‖"),
)
STAT_KEYS = tuple(s.key for s in STATS)
DIAGNOSTIC_KEYS = tuple(s.key for s in STATS if s.diagnostic)


def collect_step_stats(projection_stats: dict, *, lam: float, task_loss=None, reg_loss=None) -> dict:
    """The stats dict of an applied step: the projection's, plus ``lam`` and
    the two losses (detached) when known."""
    stats = dict(projection_stats)
    stats["lam"] = lam
    for key, value in (("task_loss", task_loss), ("reg_loss", reg_loss)):
        if value is not None:
            stats[key] = value.detach() if isinstance(value, paddle.Tensor) else value
    return stats


class StepLogger:
    """What :class:`paddle_dtnh.DTNH` and the training loops call on a logger.

    Subclasses override what they need; every method is a no-op here, so
    loggers combine freely (:class:`LoggerGroup`).
    """

    def wants_stats(self, step: int) -> bool:
        """Whether applied step ``step`` (1-based) should compute the diagnostics."""
        return False

    def on_step(self, dtnh, stats: dict) -> None:
        """After each applied step, with that step's stats."""

    def on_skip(self, dtnh) -> None:
        """After a step skipped for a non-finite direction."""

    def log_eval(self, step: int, loss=None, accuracy=None) -> None:
        """An evaluation's loss and accuracy at ``step``."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self) -> None:
        """Release files."""


class LoggerGroup(StepLogger):
    """Several loggers as one: diagnostics on the steps any of them wants.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.stats import LoggerGroup, StepLogger
            >>> class Every3(StepLogger):
            ...     def wants_stats(self, step):
            ...         return step % 3 == 0
            >>> LoggerGroup([StepLogger(), Every3()]).wants_stats(6)
            True
    """

    def __init__(self, loggers):
        self.loggers = [logger for logger in loggers if logger is not None]

    def wants_stats(self, step):
        return any(logger.wants_stats(step) for logger in self.loggers)

    def on_step(self, dtnh, stats):
        for logger in self.loggers:
            logger.on_step(dtnh, stats)

    def on_skip(self, dtnh):
        for logger in self.loggers:
            logger.on_skip(dtnh)

    def log_eval(self, step, loss=None, accuracy=None):
        for logger in self.loggers:
            logger.log_eval(step, loss, accuracy)

    def flush(self):
        for logger in self.loggers:
            logger.flush()

    def close(self):
        for logger in self.loggers:
            logger.close()
