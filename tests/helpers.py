"""Helpers shared by the tests."""

import paddle.nn.functional as F


def dtnh_step(opt, x, y, mode):
    """One step of the user's loop, the same for every regularizer:
    explicit (``opt.update``) or hook mode (``backward(); step()``)."""
    out, omega = opt.regularizer.run(x)
    loss = F.cross_entropy(out, y)
    if mode == "explicit":
        return opt.update(loss, omega)
    opt.regularize(omega)
    loss.backward()
    opt.step()
    opt.clear_grad()
    return opt.last_stats
