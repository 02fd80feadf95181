"""DTNH's mutable state, one object: what a step reads and changes, and what
a checkpoint saves beside the inner optimizer's state."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..references import Reference

__all__ = ["StepState"]


@dataclass(frozen=True)
class StepState:
    """The counters, the skip streak, the reference and the last stats.

    A step returns a new ``StepState`` (:func:`paddle_dtnh.optim.step.take_step`);
    the counters are replaced, never mutated. The reference is the one
    object shared from state to state: its buffers (a moving average, a
    held-out gradient) are gradient-sized, so it updates them in place
    (and :meth:`skipped` restarts it).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.optim.state import StepState
            >>> from paddle_dtnh.references import BatchReference
            >>> state = StepState(BatchReference())
            >>> state.applied({"lam": 1.0}).num_steps, state.num_steps
            (1, 0)
    """

    reference: Reference
    num_steps: int = 0  # steps applied
    skipped_steps: int = 0  # steps skipped for a non-finite direction
    epochs_marked: int = 0  # DTNH.next_epoch() calls
    consecutive_skips: int = 0
    last_stats: dict = field(default_factory=dict)

    def applied(self, stats: dict) -> "StepState":
        """The state after an applied step with ``stats``."""
        return replace(self, num_steps=self.num_steps + 1, consecutive_skips=0, last_stats=stats)

    def skipped(self) -> "StepState":
        """The state after a skipped step (the reference restarts: this batch's gJ is in it)."""
        self.reference.reset()
        return replace(self, skipped_steps=self.skipped_steps + 1, consecutive_skips=self.consecutive_skips + 1,
                       last_stats={"skipped": True})

    def next_epoch(self) -> "StepState":
        return replace(self, epochs_marked=self.epochs_marked + 1)

    def restored(self, num_steps: int, skipped_steps: int, epochs_marked: int) -> "StepState":
        """The state with a checkpoint's counters (the reference loads its own part)."""
        return replace(self, num_steps=num_steps, skipped_steps=skipped_steps, epochs_marked=epochs_marked)
