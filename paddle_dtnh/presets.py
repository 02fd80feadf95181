"""Named sets of DTNH's conflict-rule options, for ``DTNH(..., preset=NAME)``.

``"paper"`` is the published algorithm (Wan et al., Algorithm 1): one
projection over all parameters, judged against this batch's gradient of the
empirical loss. ``"never_hurt"`` goes beyond the paper: when the
regularizer's gradient conflicts with the data's over all parameters, the
step drops it entirely (d = gJ), otherwise d = gJ + lam * gO. Chosen by the
evidence in the README ("Making it never hurt"): where L2-SP hurt it
recovered 92% of the gap to fine-tuning, where KnowDist helped it kept all
of the gain, and it is the cheapest of the rules that did both.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["PRESETS", "resolve_preset"]

#: preset name -> keyword arguments of :class:`paddle_dtnh.DTNH`
PRESETS = MappingProxyType({
    "paper": MappingProxyType(dict(granularity="global", rule="project", reference="batch")),
    "never_hurt": MappingProxyType(dict(granularity="global", rule="drop", reference="batch")),
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
