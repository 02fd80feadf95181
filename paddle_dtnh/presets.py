"""Named sets of DTNH's conflict-rule options, for ``DTNH(..., preset=NAME)``.

``"paper"`` is the published algorithm (Wan et al., Algorithm 1): one
projection over all parameters, judged against this batch's gradient of the
empirical loss. ``"never_hurt"`` goes beyond the paper: per parameter
tensor, the regularizer's gradient is dropped when it points against a
moving average of the data's gradient (a steadier estimate of the data's
direction than one few-shot batch). Chosen by the evidence in the README
("Making it never hurt"): of the rules tried, the only one that recovered at
least half of the gap wherever L2-SP or KnowDist hurt (except KnowDist at
lam 1, where none did) while keeping KnowDist's gain where it helped. On
L2-SP it drops nearly all of the pull (the average of gJ opposes w - w0 by
construction), so there it behaves like fine-tuning.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["PRESETS", "resolve_preset"]

#: preset name -> keyword arguments of :class:`paddle_dtnh.DTNH`
PRESETS = MappingProxyType({
    "paper": MappingProxyType(dict(granularity="global", rule="project", reference="batch")),
    "never_hurt": MappingProxyType(dict(granularity="layer", rule="drop", reference="ema")),
})


def resolve_preset(name: str, **overrides) -> dict:
    """The options of preset ``name``, with the non-None ``overrides`` applied.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.presets import resolve_preset
            >>> resolve_preset("paper", granularity="layer")["granularity"]
            'layer'
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {', '.join(map(repr, PRESETS))}.")
    options = dict(PRESETS[name])
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options
