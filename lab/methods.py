"""The methods a benchmark can name: a regularizer, with or without DTNH and
which rule (``finetune``, ``l2sp``, ``dtnh_l2sp``, ``dtnh_l2sp@never_hurt``).

The rules a method can name after ``@`` are :data:`CANDIDATES`: the
library's presets and the variants screened by the benchmarks, each a
:class:`paddle_dtnh.Rule` derived from a preset; and ``auto``: the rule the
source-fit test chooses for the run's training images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from paddle_dtnh import PRESETS, Rule
from paddle_dtnh.auto import AUTO_PRESETS, DEFAULT_POLICY
from paddle_dtnh.models.architectures import head_of
from paddle_dtnh.regularizers import DELTA, L2, L2SP, KnowDist

__all__ = ["REGULARIZERS", "CANDIDATES", "MethodSpec", "method_spec", "METHODS", "check_methods",
           "build_regularizer"]

#: regularizers a method can use, with their display names
REGULARIZERS = {"l2": "Fine-tuning", "l2sp": "L2-SP", "knowdist": "KnowDist", "delta": "DELTA"}

_PAPER = PRESETS["paper"]
_LAYER_DROP_EMA = _PAPER.replace(granularity="layer", on_conflict="drop", reference="ema")
_LAYER_DROP_HOLDOUT = _PAPER.replace(granularity="layer", on_conflict="drop", reference="holdout")

#: rule name -> Rule: the presets, and the candidates screened by benchmarks/lam_sweep.py
CANDIDATES = {
    **PRESETS,
    "global_drop": _PAPER.replace(on_conflict="drop"),
    "layer_project": _PAPER.replace(granularity="layer"),
    "layer_drop": _PAPER.replace(granularity="layer", on_conflict="drop"),
    "coordinate": _PAPER.replace(granularity="coordinate"),
    "layer_drop_ema": _LAYER_DROP_EMA,
    "coordinate_ema": _PAPER.replace(granularity="coordinate", reference="ema"),
    # the kept pull capped at ||gJ|| after the paper's rule or after layer_drop_ema
    "paper_cap": _PAPER.replace(max_reg_ratio=1.0),
    "layer_drop_ema_cap": _LAYER_DROP_EMA.replace(max_reg_ratio=1.0),
    # judged against the gradient of the loss on held-out target images
    "layer_drop_holdout": _LAYER_DROP_HOLDOUT,
    "layer_drop_holdout_cap": _LAYER_DROP_HOLDOUT.replace(max_reg_ratio=1.0),
    "coordinate_holdout": _PAPER.replace(granularity="coordinate", reference="holdout"),
    "global_drop_holdout": _PAPER.replace(on_conflict="drop", reference="holdout"),
}


@dataclass(frozen=True)
class MethodSpec:
    regularizer: str  # a key of REGULARIZERS
    rule_name: str | None  # a key of CANDIDATES; None: the regularizer without DTNH
    label: str

    @property
    def project(self) -> bool:
        return self.rule_name is not None

    @property
    def is_auto(self) -> bool:
        """Whether a source-fit test chooses the rule (``auto``, ``auto_stages``)."""
        return self.rule_name in AUTO_PRESETS

    @property
    def rule(self) -> Rule:
        """The rule (for ``auto``: the paper's, until the run's test chooses)."""
        if self.is_auto:
            return PRESETS["paper"]
        return CANDIDATES[self.rule_name] if self.project else PRESETS["vanilla"]

    @property
    def resolved_options(self) -> dict:
        """What a stored run is keyed by: the rule spelled out, so redefining
        a preset never reuses its stale runs."""
        if self.is_auto:  # the policy spelled out: a changed threshold never reuses stale runs
            return {"preset": self.rule_name, "policy": dataclasses.asdict(DEFAULT_POLICY),
                    "paper": PRESETS["paper"].as_dict(), "never_hurt": PRESETS["never_hurt"].as_dict(),
                    "off": "the fine-tuning run"}
        return self.rule.as_dict()


def method_spec(name: str) -> MethodSpec:
    """Parse a method name: ``finetune``, ``<reg>`` (the regularizer without
    projection), or ``dtnh_<reg>[@<rule>]`` (DTNH with a rule of
    :data:`CANDIDATES`; default: the paper's).

    Examples:
        .. code-block:: python

            >>> from lab.methods import method_spec
            >>> method_spec("dtnh_l2sp@never_hurt").label
            'DTNH never_hurt (L2-SP)'
    """
    if name == "finetune":
        return MethodSpec("l2", None, REGULARIZERS["l2"])
    base, _, rule = name.partition("@")
    project = base.startswith("dtnh_")
    reg = base[len("dtnh_"):] if project else base
    valid_reg = reg in REGULARIZERS and reg != "l2"
    if not valid_reg or (rule and not project) or (rule and rule not in CANDIDATES and rule not in AUTO_PRESETS):
        raise ValueError(
            f"Unknown method {name!r}; expected finetune, <reg> or dtnh_<reg>[@<rule>] with <reg> "
            f"in {[r for r in REGULARIZERS if r != 'l2']} and <rule> in {list(CANDIDATES) + list(AUTO_PRESETS)}."
        )
    if not project:
        return MethodSpec(reg, None, REGULARIZERS[reg])
    rule = rule or "paper"
    label = f"DTNH ({REGULARIZERS[reg]})" if rule == "paper" else f"DTNH {rule} ({REGULARIZERS[reg]})"
    return MethodSpec(reg, rule, label)


#: the methods shown by default: each regularizer, without DTNH, with the
#: paper's DTNH and with the never_hurt preset
METHODS = {name: method_spec(name) for name in [
    "finetune", "l2sp", "dtnh_l2sp", "dtnh_l2sp@never_hurt", "knowdist", "dtnh_knowdist",
    "dtnh_knowdist@never_hurt", "delta", "dtnh_delta", "dtnh_delta@never_hurt"]}


def check_methods(names) -> list:
    """The names, each validated by :func:`method_spec` (ValueError otherwise)."""
    for name in names:
        method_spec(name)
    return list(names)


def build_regularizer(kind: str, model, source, cfg, attention=None):
    """The regularizer ``kind`` (a key of :data:`REGULARIZERS`) with ``cfg``'s
    coefficients, for ``model`` (whose architecture names the head) and ``source``.
    DELTA uses ``attention`` (None: uniform channel weights)."""
    head = [head_of(model)]
    if kind == "l2":
        return L2(model, alpha=cfg.alpha["l2"], beta=cfg.beta, head=head)
    if kind == "l2sp":
        return L2SP(model, source, alpha=cfg.alpha["l2sp"], beta=cfg.beta, head=head, strict=False)
    if kind == "knowdist":
        return KnowDist(model, source, head=head)
    if kind == "delta":
        return DELTA(model, source, alpha=cfg.alpha["delta"], beta=cfg.beta, head=head, attention=attention)
    raise ValueError(f"Unknown regularizer {kind!r}; expected one of {list(REGULARIZERS)}.")
