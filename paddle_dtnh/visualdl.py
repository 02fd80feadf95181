"""VisualDL logging of DTNH's diagnostics.

Pass a :class:`DTNHLogger` to :class:`paddle_dtnh.DTNH` (``logger=``): every
``interval`` applied steps it turns the diagnostics on for that one step and
writes them; between logging steps nothing is computed and nothing leaves
the device, except a running count of conflicting steps kept as a tensor.

Tags, grouped so VisualDL draws each group side by side:

=====================================  ============================================
``train/empirical_loss``               J on the batch (not J + lam * Omega)
``train/regularizer``                  Omega on the batch
``train/lam_x_regularizer``            lam * Omega
``train/total_loss``                   J + lam * Omega
``angles/angle1_d_gJ``                 angle(d, gJ), degrees (DTNH paper, Fig. 4)
``angles/angle2_d_gO``                 angle(d, gO) (Fig. 5)
``angles/angle3_vanilla_gJ``           angle(gJ + lam gO, gJ) (Fig. 4)
``angles/angle4_vanilla_gO``           angle(gJ + lam gO, gO) (Fig. 5)
``grad_norm/task``                     ||gJ||
``grad_norm/regularizer``              ||gO||
``grad_norm/direction``                ||d||
``dtnh/conflict_rate``                 share of steps since the last log with <gJ, gO> < 0
``dtnh/cos_task_reg``                  cos(gJ, gO) at the logged step
``dtnh/lam``                           the current coefficient
``dtnh/lr``                            the inner optimizer's learning rate
``dtnh/skipped_steps``                 steps skipped for non-finite gradients (so far)
``eval/loss``, ``eval/accuracy``       per evaluation (:meth:`DTNHLogger.log_eval`)
=====================================  ============================================
"""

from __future__ import annotations

__all__ = ["DTNHLogger", "TAGS"]

_ANGLES = {
    "angle1": "angles/angle1_d_gJ",
    "angle2": "angles/angle2_d_gO",
    "angle3": "angles/angle3_vanilla_gJ",
    "angle4": "angles/angle4_vanilla_gO",
}
_NORMS = {
    "task_grad_norm": "grad_norm/task",
    "reg_grad_norm": "grad_norm/regularizer",
    "direction_norm": "grad_norm/direction",
}
#: every tag a training run writes (eval tags come from log_eval)
TAGS = (
    ["train/empirical_loss", "train/regularizer", "train/lam_x_regularizer", "train/total_loss"]
    + list(_ANGLES.values())
    + list(_NORMS.values())
    + ["dtnh/conflict_rate", "dtnh/cos_task_reg", "dtnh/lam", "dtnh/lr", "dtnh/skipped_steps"]
)


class DTNHLogger:
    """Write DTNH's diagnostics to VisualDL every ``interval`` steps.

    Args:
        logdir (str): VisualDL log directory.
        interval (int, optional): log every this many applied steps. Default: 10.
        writer (visualdl.LogWriter, optional): an existing writer to share.
            Default: a new ``LogWriter(logdir)``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> import paddle.nn.functional as F
            >>> from paddle_dtnh import DTNH
            >>> from paddle_dtnh.visualdl import DTNHLogger
            >>> net = paddle.nn.Linear(4, 3)
            >>> logger = DTNHLogger("/tmp/dtnh_vdl_example", interval=1)
            >>> opt = DTNH(paddle.optimizer.SGD(0.1, parameters=net.parameters()), lam=1.0, logger=logger)
            >>> _ = opt.update(F.cross_entropy(net(paddle.randn([2, 4])), paddle.to_tensor([0, 2])))
            >>> logger.close()
    """

    def __init__(self, logdir: str, interval: int = 10, writer=None):
        if not (isinstance(interval, int) and interval > 0):
            raise ValueError(f"Invalid interval: {interval!r}; expected a positive int.")
        if writer is None:
            from visualdl import LogWriter

            writer = LogWriter(logdir)
        self.writer = writer
        self.interval = interval
        self._conflicts = None  # running tensor sum, read only at logging steps
        self._since_log = 0

    def wants_stats(self, step: int) -> bool:
        """Whether ``step`` (1-based count of applied steps) is a logging step."""
        return step % self.interval == 0

    def on_step(self, dtnh, stats: dict) -> None:
        """Called by DTNH after each applied step with that step's stats."""
        if "inner" in stats:  # absent only on the vanilla baseline's one-backward path
            conflict = (stats["inner"] < 0).astype("float32")
            self._conflicts = conflict if self._conflicts is None else self._conflicts + conflict
            self._since_log += 1
        step = dtnh.num_steps
        if not self.wants_stats(step):
            return
        scalars = {"dtnh/lam": stats["lam"], "dtnh/lr": dtnh.get_lr(),
                   "dtnh/skipped_steps": dtnh.skipped_steps}
        if self._since_log:
            scalars["dtnh/conflict_rate"] = float(self._conflicts) / self._since_log
        self._conflicts, self._since_log = None, 0
        if "task_loss" in stats:
            scalars["train/empirical_loss"] = float(stats["task_loss"])
        if "reg_loss" in stats:
            omega = float(stats["reg_loss"])
            scalars["train/regularizer"] = omega
            scalars["train/lam_x_regularizer"] = stats["lam"] * omega
            if "task_loss" in stats:
                scalars["train/total_loss"] = scalars["train/empirical_loss"] + stats["lam"] * omega
        for key, tag in list(_ANGLES.items()) + list(_NORMS.items()) + [("cos_task_reg", "dtnh/cos_task_reg")]:
            if key in stats:
                scalars[tag] = float(stats[key])
        for tag, value in scalars.items():
            self.writer.add_scalar(tag=tag, step=step, value=float(value))

    def on_skip(self, dtnh) -> None:
        """Called by DTNH when it skips a non-finite step."""
        self.writer.add_scalar(tag="dtnh/skipped_steps", step=dtnh.num_steps + dtnh.skipped_steps,
                               value=float(dtnh.skipped_steps))

    def log_eval(self, step: int, loss: float | None = None, accuracy: float | None = None) -> None:
        """Write an evaluation's loss and accuracy at ``step``."""
        if loss is not None:
            self.writer.add_scalar(tag="eval/loss", step=step, value=float(loss))
        if accuracy is not None:
            self.writer.add_scalar(tag="eval/accuracy", step=step, value=float(accuracy))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
