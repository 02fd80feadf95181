"""Named sets of DTNH's conflict-rule options, for ``DTNH(..., preset=NAME)``.

``"paper"`` is the published algorithm (Wan et al., Algorithm 1): one
projection over all parameters, judged against this batch's gradient of the
empirical loss. ``"never_hurt"`` goes beyond the paper in two ways. Per
parameter tensor, the regularizer's gradient is dropped when it points
against a moving average of the data's gradient (a steadier estimate of the
data's direction than one few-shot batch); and what is kept is scaled down,
when needed, to at most the data gradient's norm (``max_reg_ratio=1``): a
pull that is not in conflict may still not outweigh the data. Chosen by the
evidence in the README ("Making it never hurt"). On L2-SP it drops nearly
all of the pull (the average of gJ opposes w - w0 by construction), so there
it behaves like fine-tuning.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["PRESETS", "resolve_preset"]

#: preset name -> keyword arguments of :class:`paddle_dtnh.DTNH`
PRESETS = MappingProxyType({
    "paper": MappingProxyType(dict(granularity="global", rule="project", reference="batch")),
    "never_hurt": MappingProxyType(dict(granularity="layer", rule="drop", reference="ema", max_reg_ratio=1.0)),
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
