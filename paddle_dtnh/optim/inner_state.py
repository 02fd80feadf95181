"""Any Paddle optimizer's state, keyed by the model's structured parameter
names (``layer1.0.conv1.weight``) instead of Paddle's generated ones
(``conv2d_3.w_0_velocity_0``, which depend on the order layers were created
in): validated whole before anything is written, then loaded.

Paddle keeps no public API for this: the optimizer's accumulators (and,
under ``multi_precision``, its float32 master weights) are read, and
created as its first step would, through :mod:`paddle_dtnh._paddle_compat`.
"""

from __future__ import annotations

import paddle

from .. import _paddle_compat as compat
from .._checks import tensor_problems

__all__ = ["FORMAT", "StructuredState", "optimizer_parameters", "stable_names"]

FORMAT = "paddle_dtnh.optimizer/2"
#: entries of a Paddle optimizer's state dict that are not accumulators
_EXTRAS = ("LR_Scheduler", "master_weights")


def optimizer_parameters(optimizer) -> list:
    """Every parameter an optimizer owns, flattening parameter groups."""
    params = compat.parameter_list(optimizer)
    if not params:
        raise TypeError(
            f"{type(optimizer).__name__} has no parameter list; pass a "
            "paddle.optimizer.Optimizer built with parameters=model.parameters()."
        )
    if isinstance(params[0], dict):
        return [p for group in params for p in group["params"]]
    return list(params)


def stable_names(params, model) -> list:
    """A name per parameter that does not depend on creation order: the
    model's structured name, else the parameter's position ("#3")."""
    named = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    return [named.get(id(p), f"#{i}") for i, p in enumerate(params)]


def _value_for(var, value):
    """``value`` (Tensor or array) in ``var``'s dtype; a Tensor through astype,
    never ``paddle.to_tensor(tensor)``, which warns about copy construction."""
    if isinstance(value, paddle.Tensor):
        return value if value.dtype == var.dtype else value.astype(var.dtype)
    return paddle.to_tensor(value, dtype=var.dtype, place=var.place)


class StructuredState:
    """The state of ``inner`` over ``params``, keyed by ``names``.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.optim.inner_state import StructuredState
            >>> net = paddle.nn.Linear(2, 2)
            >>> opt = paddle.optimizer.Momentum(0.1, parameters=net.parameters())
            >>> (net(paddle.ones([1, 2])) ** 2).sum().backward()
            >>> opt.step()  # the velocities exist from the first step on
            >>> state = StructuredState(opt, net.parameters(), ["weight", "bias"]).state()
            >>> sorted(state["accumulators"])
            ['bias', 'weight']
    """

    def __init__(self, inner, params, names):
        self.inner = inner
        self.params = list(params)
        self.names = list(names)
        self._stable_of = {p.name: n for p, n in zip(self.params, self.names)}  # Paddle name -> stable

    def _variables(self) -> dict:
        """(stable name, accumulator) -> the inner optimizer's tensor, created
        now if it was not yet (as the first step would, with the same values)."""
        trainable = [p for p in self.params if not p.stop_gradient]
        if trainable:
            compat.create_accumulators(self.inner, trainable)
        return {(self._stable_of[param_name], acc): var for acc, per_param in compat.accumulators(self.inner).items()
                for param_name, var in per_param.items()}

    def state(self) -> dict:
        """``{"format", "accumulators": {name: {acc: tensor}}, "other": {...}}``."""
        accumulators, generated = {}, set()
        for acc, per_param in compat.accumulators(self.inner).items():
            for param_name, var in per_param.items():
                accumulators.setdefault(self._stable_of[param_name], {})[acc] = var
                generated.add(var.name)
        other = {k: v for k, v in self.inner.state_dict().items() if k not in generated}
        # multi_precision: the float32 master copy of each low-precision parameter
        masters = other.pop("master_weights", None) or {}
        master_weights = {self._stable_of[name]: var for name, var in masters.items() if name in self._stable_of}
        state = {"format": FORMAT, "accumulators": accumulators, "other": other}
        if master_weights:
            state["master_weights"] = master_weights
        return state

    def problems(self, saved) -> list:
        """What in a saved :meth:`state` does not fit (empty: it fits); nothing changes."""
        if not isinstance(saved, dict):
            return [f"the optimizer part is a {type(saved).__name__}, not a dict"]
        if saved.get("format") != FORMAT:
            raise ValueError(
                f"The optimizer state has format {saved.get('format')!r}, not {FORMAT!r}: it was "
                "saved by an older paddle_dtnh, whose state is keyed by generated names; restart the "
                "optimizer state or load it into the bare inner optimizer."
            )
        params = dict(zip(self.names, self.params))
        accumulators = saved.get("accumulators", {})
        expected = self._variables() if accumulators else {}
        problems, found = [], set()
        for name, per_acc in accumulators.items():
            if name not in params:
                problems.append(f"optimizer: {name} is not a parameter of this optimizer")
                continue
            for acc, tensor in per_acc.items():
                found.add((name, acc))
                var = expected.get((name, acc))
                if var is None:
                    problems.append(f"optimizer: {type(self.inner).__name__} keeps no {acc} for {name} "
                                    "(saved by another kind of optimizer?)")
                else:
                    problems += tensor_problems(f"optimizer: {name} ({acc})", tensor, var)
        problems += [f"optimizer: {acc} of {name} is missing" for name, acc in expected if (name, acc) not in found]
        return problems + self._master_problems(saved.get("master_weights", {}))

    def _masters(self) -> dict:
        """stable name -> the inner optimizer's master weight (multi_precision)."""
        if self.params:
            self._variables()  # the first step creates the master weights with the accumulators
        return {self._stable_of[name]: var for name, var in compat.master_weights(self.inner).items()
                if name in self._stable_of}

    def _master_problems(self, saved: dict) -> list:
        expected = self._masters()
        problems = []
        for name, tensor in saved.items():
            if name not in expected:
                problems.append(f"optimizer: a master weight for {name}, which this optimizer keeps none for "
                                "(saved with multi_precision=True?)")
            else:
                problems += tensor_problems(f"optimizer: master weight of {name}", tensor, expected[name])
        problems += [f"optimizer: the master weight of {name} is missing (saved without multi_precision?)"
                     for name in expected if saved and name not in saved]
        return problems

    def load(self, saved: dict) -> None:
        """Write a validated saved state into the inner optimizer, matched by
        parameter, never by generated name."""
        accumulators = saved.get("accumulators", {})
        if accumulators:
            variables = self._variables()
            for name, per_acc in accumulators.items():
                for acc, value in per_acc.items():
                    var = variables[(name, acc)]
                    var.set_value(_value_for(var, value))
        masters = saved.get("master_weights", {})
        if masters:
            variables = self._masters()
            for name, value in masters.items():
                var = variables[name]
                var.set_value(_value_for(var, value))
        other = saved.get("other", {})
        schedule = compat.learning_rate(self.inner)
        if isinstance(schedule, paddle.optimizer.lr.LRScheduler) and "LR_Scheduler" in other:
            schedule.set_state_dict(other["LR_Scheduler"])

    def check_bare(self, state_dict: dict) -> None:
        """A bare inner optimizer's checkpoint is keyed by generated names: accept
        it only where every accumulator names a parameter of this optimizer."""
        names = sorted((p.name for p in self.params), key=len, reverse=True)
        unmatched = [k for k in state_dict if k not in _EXTRAS
                     and not any(k.startswith(n + "_") for n in names)]
        if unmatched:
            raise ValueError(
                f"This checkpoint of a bare {type(self.inner).__name__} names parameters this process "
                f"does not have ({', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}): Paddle "
                "names them in creation order. Resume in a fresh process that builds the model the same "
                "way, or start the optimizer state afresh; DTNH's own checkpoints do not depend on it."
            )
