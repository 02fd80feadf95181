r"""Diagonal Fisher information of a source model, for :class:`L2SPFisher`.

.. math::

    \hat F_{jj} = \frac{1}{m}\sum_{i=1}^{m}\sum_{k} f_k(x_i)
                  \Big(\frac{\partial \log f_k(x_i)}{\partial w_j}\Big)^2

where :math:`f_k(x)` is the source model's softmax output for class
:math:`k`. ``mode="exact"`` sums over every class (one backward pass per
class and sample); ``mode="sampled"`` draws one class :math:`k\sim f(x_i)`
per sample, an unbiased estimate that costs one backward pass per sample
and is the practical choice for sources with many classes (ImageNet).
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..io import files
from .._checks import check_choice, check_positive_int
from .._layers import evaluating

__all__ = ["estimate_fisher", "save_fisher", "load_fisher"]

_FORMAT = "paddle_dtnh.fisher/1"


def _inputs_of(batch):
    """The image tensor of a batch given as ``x`` or ``(x, label, ...)``."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x)


def estimate_fisher(
    model: paddle.nn.Layer,
    data,
    *,
    mode: str = "exact",
    max_samples: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Estimate the diagonal Fisher of ``model`` on the inputs of ``data``.

    The model is run in eval mode (BatchNorm uses its running statistics)
    and restored to its previous mode afterwards; its weights and gradients
    are not touched.

    Args:
        model (paddle.nn.Layer): the source network, with its own source head.
        data (Iterable): batches ``x`` or ``(x, label, ...)``; labels are
            ignored (the Fisher is taken under the model's own predictive
            distribution). Source data if you have it, else target data.
        mode (str, optional): ``"exact"`` or ``"sampled"``. Default: "exact".
        max_samples (int, optional): stop after this many inputs. Default: all.
        seed (int, optional): seed of the class sampling. Default: 0.
        progress (bool, optional): show a progress bar. Default: True.

    Returns:
        dict: trainable parameter name -> Tensor of the parameter's shape.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.regularizers import estimate_fisher
            >>> net = paddle.nn.Linear(4, 3)
            >>> fisher = estimate_fisher(net, [paddle.randn([5, 4])], progress=False)
            >>> sorted(fisher), list(fisher["weight"].shape)
            (['bias', 'weight'], [4, 3])
    """
    check_choice("mode", mode, ("exact", "sampled"))
    check_positive_int("max_samples", max_samples, allow_none=True)
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    if not named:
        raise ValueError("The model has no trainable parameters to estimate a Fisher for.")
    names, params = zip(*named)
    fisher = [paddle.zeros_like(p) for p in params]
    rng_state = paddle.get_rng_state()
    paddle.seed(seed)
    count = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_samples, desc="Fisher", unit="img", disable=None)  # terminal only
    try:
        with evaluating(model):
            for batch in data:
                x = _inputs_of(batch)
                for i in range(x.shape[0]):
                    if max_samples is not None and count >= max_samples:
                        break
                    log_p = F.log_softmax(model(x[i : i + 1]), axis=-1)[0]
                    if mode == "sampled":
                        k = paddle.multinomial(paddle.exp(log_p.detach()), 1)
                        classes, weights = [int(k.item())], [1.0]
                    else:
                        classes = range(log_p.shape[0])
                        weights = paddle.exp(log_p.detach()).numpy().tolist()
                    for j, (k, w) in enumerate(zip(classes, weights)):
                        last = j == len(weights) - 1
                        grads = paddle.grad(log_p[k], list(params), retain_graph=not last, allow_unused=True)
                        for acc, g in zip(fisher, grads):
                            if g is not None:
                                acc.add_(w * g * g)
                    count += 1
                    if bar is not None:
                        bar.update(1)
                if max_samples is not None and count >= max_samples:
                    break
    finally:
        if bar is not None:
            bar.close()
        paddle.set_rng_state(rng_state)
    if count == 0:
        raise ValueError("estimate_fisher got no inputs: the data iterable is empty.")
    return {n: f / count for n, f in zip(names, fisher)}


def save_fisher(fisher: dict, path: str) -> None:
    """Save a Fisher dict (from :func:`estimate_fisher`) to ``path`` (atomically)."""
    files.save({"format": _FORMAT, "fisher": dict(fisher)}, path)


def load_fisher(path: str, *, trusted: bool = False) -> dict:
    """Load a Fisher dict written by :func:`save_fisher` (no code runs: see
    :func:`paddle_dtnh.io.files.load`)."""
    blob = files.load(path, what="Fisher file", trusted=trusted, require_digest=not trusted)
    return files.check_format(blob, _FORMAT, path, "Fisher file")["fisher"]
