"""docs/loop_contract.md: the custom loop written against that page alone
runs as written, and its two loops take the same steps, as the page says."""

import pathlib
import re

import numpy as np

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "loop_contract.md"


def page_code():
    section = PAGE.read_text(encoding="utf-8").split("## A loop of your own", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_pages_loop_runs_and_both_loops_take_the_same_steps():
    scope = {}
    exec(compile(page_code(), str(PAGE), "exec"), scope)
    explicit, hook = scope["explicit"], scope["hook"]
    assert explicit.num_steps == hook.num_steps == 3 and explicit.skipped_steps == hook.skipped_steps == 0
    (a, b), source = scope["models"], scope["source"]
    for p, q, s in zip(a.parameters(), b.parameters(), source.parameters()):
        assert not np.allclose(p.numpy(), s.numpy())  # they trained
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    # the moving average the rule judges against is the same in both loops
    ema_a, ema_b = explicit.state_dict()["dtnh"]["ema_scaled"], hook.state_dict()["dtnh"]["ema_scaled"]
    assert ema_a.keys() == ema_b.keys() == {"weight", "bias"}
    for name in ema_a:
        np.testing.assert_allclose(ema_a[name].numpy(), ema_b[name].numpy(), rtol=1e-5, atol=1e-7)
    assert hook.last_stats["task_loss"] is not None  # note_task_loss reached the logs


def test_the_pages_hook_loop_is_not_the_sum_convention():
    """With accumulation="sum" the same (loss / 2) loop takes another step:
    the test above can tell the two conventions apart."""
    code = page_code().replace('for accumulation in ("sum", "mean")', 'for accumulation in ("sum", "sum")')
    scope = {}
    exec(compile(code, str(PAGE), "exec"), scope)
    a, b = scope["models"]
    assert not np.allclose(a.weight.numpy(), b.weight.numpy(), rtol=1e-5, atol=1e-6)
