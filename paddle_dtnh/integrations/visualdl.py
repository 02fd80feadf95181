"""VisualDL logging of DTNH's stats.

Pass a :class:`DTNHLogger` to :class:`paddle_dtnh.DTNH` (``logger=``): every
``interval`` applied steps it turns the diagnostics on for that one step and
writes them; between logging steps nothing is computed and nothing leaves
the device, except a running count of conflicting steps kept as a tensor.

The tags are those of :data:`paddle_dtnh.diagnostics.STATS`, plus:

=====================================  ============================================
``loss/lam_x_regularizer``             lam * Omega
``loss/total``                         J + lam * Omega
``loss/eval``, ``accuracy/eval``       per evaluation (:meth:`DTNHLogger.log_eval`)
``dtnh/conflict_rate``                 share of steps since the last log with <r, gO> < 0
``dtnh/lr``                            the inner optimizer's learning rate
``dtnh/skipped_steps``                 steps skipped for a non-finite direction (so far)
``dtnh/source_fit/*``                  ``preset="auto"``: the source-fit test at step 0
                                       (``source_score``, ``random_score``, ``advantage``,
                                       ``source_logme``, ``random_logme``, ``fits``)
=====================================  ============================================

Groups are lower case (``loss/``, ``angles/``, ``grad_norm/``, ``dtnh/``,
``accuracy/``), apart from PaddleHub Trainer's own ``TRAIN/`` and ``EVAL/``.
The step of every tag is DTNH's count of applied steps, which a resumed run
continues from its checkpoint.
"""

from __future__ import annotations

from .._checks import check_positive_int
from ..diagnostics import STATS, StepLogger

__all__ = ["DTNHLogger", "TAGS", "EVAL_TAGS"]

_DERIVED_TAGS = ["loss/lam_x_regularizer", "loss/total", "dtnh/conflict_rate", "dtnh/lr", "dtnh/skipped_steps"]
#: every tag a training run writes on its logging steps
TAGS = [s.tag for s in STATS] + _DERIVED_TAGS
#: the tags of :meth:`DTNHLogger.log_eval`
EVAL_TAGS = ["loss/eval", "accuracy/eval"]


class DTNHLogger(StepLogger):
    """Write DTNH's stats to VisualDL every ``interval`` steps.

    Args:
        logdir (str): VisualDL log directory.
        interval (int, optional): log every this many applied steps. Default: 10.
        writer (visualdl.LogWriter, optional): an existing writer to share.
            Default: a new ``LogWriter(logdir)``.
        display_name (str, optional): the run's name in VisualDL's legend
            (e.g. ``"dtnh_l2sp/seed0"``). Default: the log directory.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> import paddle.nn.functional as F
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.integrations.visualdl import DTNHLogger
            >>> net = paddle.nn.Linear(4, 3)
            >>> logger = DTNHLogger("/tmp/dtnh_vdl_example", interval=1)
            >>> opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, logger=logger)
            >>> _ = opt.update(F.cross_entropy(net(paddle.randn([2, 4])), paddle.to_tensor([0, 2])))
            >>> logger.close()
    """

    def __init__(self, logdir: str, interval: int = 10, writer=None, display_name: str | None = None):
        check_positive_int("interval", interval)
        if writer is None:
            from visualdl import LogWriter

            writer = LogWriter(logdir, display_name=display_name or "")
        self.writer = writer
        self.interval = interval
        self._conflicts = None  # running tensor sum, read only at logging steps
        self._since_log = 0

    def wants_stats(self, step: int) -> bool:
        return step % self.interval == 0

    def on_step(self, dtnh, stats: dict) -> None:
        if "conflict" in stats:  # absent only on the vanilla baseline's one-backward path
            conflict = stats["conflict"].astype("float32")
            self._conflicts = conflict if self._conflicts is None else self._conflicts + conflict
            self._since_log += 1
        step = dtnh.num_steps
        if not self.wants_stats(step):
            return
        scalars = {s.tag: float(stats[s.key]) for s in STATS if s.key in stats}
        scalars["dtnh/lr"] = dtnh.get_lr()
        scalars["dtnh/skipped_steps"] = dtnh.skipped_steps
        if self._since_log:
            scalars["dtnh/conflict_rate"] = float(self._conflicts) / self._since_log
        self._conflicts, self._since_log = None, 0
        if "reg_loss" in stats:
            weighted = stats["lam"] * float(stats["reg_loss"])
            scalars["loss/lam_x_regularizer"] = weighted
            if "task_loss" in stats:
                scalars["loss/total"] = float(stats["task_loss"]) + weighted
        for tag, value in scalars.items():
            self.writer.add_scalar(tag=tag, step=step, value=float(value))

    def on_skip(self, dtnh) -> None:
        self.writer.add_scalar(tag="dtnh/skipped_steps", step=dtnh.num_steps + dtnh.skipped_steps,
                               value=float(dtnh.skipped_steps))

    def on_source_fit(self, report) -> None:
        """``preset="auto"``'s test, at step 0: both networks' scores and the decision."""
        values = report.as_dict()
        for key in ("source_score", "random_score", "advantage", "source_logme", "random_logme", "fits"):
            self.writer.add_scalar(tag=f"dtnh/source_fit/{key}", step=0, value=float(values[key]))

    def log_eval(self, step: int, loss: float | None = None, accuracy: float | None = None) -> None:
        for tag, value in zip(EVAL_TAGS, (loss, accuracy)):
            if value is not None:
                self.writer.add_scalar(tag=tag, step=step, value=float(value))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
