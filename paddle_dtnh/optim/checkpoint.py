"""DTNH's checkpoint: what :meth:`paddle_dtnh.DTNH.state_dict` writes and
:meth:`~paddle_dtnh.DTNH.set_state_dict` reads back: the inner optimizer's
state and the :class:`~paddle_dtnh.optim.state.StepState`.

Layout (a dict, so ``paddle.save`` and ``paddle.Model.save`` store it)::

    {"optimizer": the inner optimizer's state, accumulators keyed by the
                  model's structured parameter names (inner_state.py),
     "dtnh": {"num_steps", "skipped_steps", "epoch",
              the reference's state (moving average or held-out gradient),
              the configuration: lam, lam_decay, preset, the rule's fields,
              source_fit (preset "auto")}}

A checkpoint of the bare inner optimizer (no ``"dtnh"``) also loads, where
its generated parameter names still match. Loading is all or nothing: the
whole dict is checked (names, shapes, dtypes) before anything is written.
"""

from __future__ import annotations

import warnings

from ..io import files

__all__ = ["DTNHCheckpoint", "STATE_KEY", "INNER_KEY", "configuration"]

STATE_KEY = "dtnh"
INNER_KEY = "optimizer"
_COUNTERS = ("num_steps", "skipped_steps", "epoch")


class DTNHCheckpoint:
    """Saves and restores one DTNH's state: the inner optimizer's (by
    structured names) and the :class:`~paddle_dtnh.optim.state.StepState`
    the stepper holds.

    Args:
        inner (paddle.optimizer.Optimizer): the wrapped optimizer.
        inner_state (StructuredState): its state by structured names.
        stepper (Stepper): holds the StepState (replaced on load).
        names (list): the parameters' structured names.
        params (list): the parameters.
        config (dict): the configuration saved beside the counters and
            compared on load (lam, lam_decay, preset, the rule, source_fit).
    """

    def __init__(self, inner, inner_state, stepper, names, params, config: dict):
        self.inner, self.inner_state, self.stepper = inner, inner_state, stepper
        self.names, self.params, self.config = names, params, config

    def state_dict(self) -> dict:
        state = self.stepper.state
        return {
            INNER_KEY: self.inner_state.state(),
            STATE_KEY: {
                "num_steps": state.num_steps,
                "skipped_steps": state.skipped_steps,
                "epoch": state.epochs_marked,
                **state.reference.state_dict(self.names, self.params),
                **self.config,
            },
        }

    def validated(self, state_dict) -> dict:
        """``state_dict`` with its arrays as tensors, once checked to fit;
        TypeError/ValueError naming the item and the fix otherwise."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}.")
        state_dict = files.to_tensors(state_dict)  # paddle.Model.load leaves (name, ndarray) pairs
        if STATE_KEY not in state_dict:
            self.inner_state.check_bare(state_dict)
            return state_dict
        ours, inner = state_dict[STATE_KEY], state_dict.get(INNER_KEY)
        missing = set(_COUNTERS) - set(ours if isinstance(ours, dict) else {})
        if missing or not isinstance(inner, dict):
            raise ValueError(f"Corrupt DTNH state_dict: missing {sorted(missing) or [INNER_KEY]}.")
        reference = self.stepper.state.reference
        problems = self.inner_state.problems(inner) + reference.problems(ours, self.names, self.params)
        if problems:
            raise ValueError(
                "The saved optimizer state does not fit this model and optimizer:\n  "
                + "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "")
                + "\nBuild the same model, optimizer and model= as when it was saved."
            )
        return state_dict

    def load(self, state_dict) -> None:
        state_dict = self.validated(state_dict)
        if STATE_KEY not in state_dict:
            self.inner.set_state_dict(state_dict)  # DTNH starts its counters fresh
            return
        ours, inner = state_dict[STATE_KEY], state_dict[INNER_KEY]
        self._warn_if_configured_otherwise(ours)
        self.inner_state.load(inner)
        state = self.stepper.state
        state.reference.set_state_dict(ours, self.names, self.params)
        self.stepper.state = state.restored(int(ours["num_steps"]), int(ours["skipped_steps"]), int(ours["epoch"]))

    def _warn_if_configured_otherwise(self, saved: dict) -> None:
        # 0.1 saved the on_conflict choice as "rule": its checkpoints still load
        saved = {"on_conflict" if k == "rule" else k: v for k, v in saved.items()}
        # a preset's name is compared only where both sides have one: the same
        # rule passed as a Rule object is the same configuration
        changed = [_changed(k, saved[k], v) for k, v in self.config.items()
                   if k in saved and saved[k] != v and not (k == "preset" and None in (v, saved[k]))]
        if changed:
            warnings.warn(
                "Resuming with a different DTNH configuration than saved (the current one is used): "
                + "; ".join(changed),
                stacklevel=4,
            )


def _changed(key, saved, now) -> str:
    """One item of the changed-configuration warning; a source-fit report in
    words (its digests would fill a screen)."""
    if key != "source_fit" or not isinstance(saved, dict):
        return f"{key}: saved {saved!r}, now {now!r}"
    if saved.get("source_digests") and now.get("source_digests") and saved["source_digests"] != now["source_digests"]:
        return "source_fit: the saved report was measured on another source (its weight digests differ)"
    return (f"source_fit: saved advantage {saved.get('advantage', float('nan')):+.3f} -> preset "
            f"{saved.get('preset')!r}, now {now.get('advantage', float('nan')):+.3f} -> {now.get('preset')!r}")


def configuration(*, lam: float, lam_decay: float, preset, rule, source_fit=None) -> dict:
    """The configuration saved beside the counters (compared on load)."""
    config = {"lam": lam, "lam_decay": lam_decay, "preset": preset, **rule.as_dict()}
    if source_fit is not None:  # the decision is saved: a resume never re-decides silently
        config["source_fit"] = source_fit.as_dict()
    return config
