r"""Does the source fit the target? A test before training that picks the rule.

A transfer regularizer pulls the fine-tuned network toward the source. That
pull helps where the source's features already suit the target and hurts
where they do not, and no per-step signal tells the two apart (see
``docs/rules.md``). This module measures it once, before the first step:
score the features that feed the head on the target's training images,
for the source network and for the same architecture re-initialised at
random. The source *fits* when it beats the random network.

Two scores, both closed form in float64 on the n x d feature matrix:

* ``loo_ridge`` (decides): leave-one-out accuracy of a ridge probe on
  one-hot targets (features standardised, an unpenalised bias, ridge
  :math:`\lambda`). With the hat matrix :math:`H` and predictions
  :math:`P = HY`, the leave-one-out prediction of row :math:`i` is
  :math:`(P_i - H_{ii} Y_i) / (1 - H_{ii})`: no refit.
* ``logme`` (reported): LogME (You et al., ICML 2021), the log evidence per
  image of a Bayesian linear model of each class's one-hot column,
  maximised over its prior and noise precisions by the paper's fixed-point
  iteration, averaged over the classes.

:func:`source_fit` returns a :class:`SourceFit`; ``DTNH(preset="auto",
fit=report)`` runs ``report.rule``: the paper's rule where the source fits,
``never_hurt`` where it does not.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import paddle

from ._checks import check_positive, check_positive_int
from ._layers import evaluating

__all__ = ["SourceFit", "StageFit", "source_fit", "paired_se", "loo_ridge_accuracy", "loo_ridge_predictions", "logme", "random_reinit"]

#: the ridge of the leave-one-out probe (on standardised features)
DEFAULT_RIDGE = 1.0
#: the seed of the random network's initialisation
DEFAULT_SEED = 0


# -- the scores ------------------------------------------------------------
def _checked_features(features, labels):
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels.")
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{bad} of {x.shape[0]} images have non-finite (NaN/Inf) features: check the "
                         "images (NaN pixels) and the network's weights.")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"The source-fit test needs at least 2 classes; the labels hold {len(classes)}.")
    if counts.min() < 2:
        short = classes[counts < 2]
        raise ValueError(f"Class(es) {short.tolist()} have a single image: leave-one-out cannot score a class "
                         "it never saw. Give at least 2 images per class.")
    if not _varying(x).any():
        raise ValueError("Every feature is constant over the images: the network maps them all to the same "
                         "point, so no probe can tell the classes apart.")
    return x, y, classes


def _varying(x):
    return x.std(axis=0) > 1e-12 * max(1.0, float(np.abs(x).max()))


def _standardised(x):
    """Columns centred and scaled to unit variance; constant columns dropped."""
    keep = _varying(x)
    std = x.std(axis=0)
    x = x[:, keep]
    return (x - x.mean(axis=0)) / std[keep]


def loo_ridge_accuracy(features, labels, ridge: float = DEFAULT_RIDGE) -> float:
    r"""Leave-one-out accuracy of a ridge probe on ``features``, in closed form.

    Features are standardised (constant ones dropped); the probe regresses
    one-hot targets on them with an unpenalised bias and ridge
    :math:`\lambda`. As the columns are centred, the hat matrix is
    :math:`H = \tfrac{1}{n}\mathbf{1}\mathbf{1}^\top + U\,\mathrm{diag}
    (s^2/(s^2+\lambda))\,U^\top` from the SVD :math:`F = USV^\top`, which
    also holds when there are more features than images.

    Args:
        features (array): (n, d) features, one row per image.
        labels (array): (n,) integer class labels; at least 2 classes and
            2 images per class.
        ridge (float, optional): :math:`\lambda > 0`. Default: 1.0.

    Returns:
        float: the share of images whose left-out prediction (argmax over
        classes) is their label.

    Examples:
        .. code-block:: python

            >>> import numpy as np
            >>> from paddle_dtnh.transferability import loo_ridge_accuracy
            >>> x = np.array([[0.0], [0.1], [1.0], [1.1]])
            >>> loo_ridge_accuracy(x, [0, 0, 1, 1])
            1.0
    """
    classes, left_out, y = loo_ridge_predictions(features, labels, ridge)
    return float((classes[left_out.argmax(axis=1)] == y).mean())


def loo_ridge_predictions(features, labels, ridge: float = DEFAULT_RIDGE):
    """``(classes, left-out predictions (n, classes), labels)`` of the probe of
    :func:`loo_ridge_accuracy`: row i is the probe fitted without image i,
    evaluated on image i (the features standardised once, on all n)."""
    ridge = check_positive("ridge", ridge)
    x, y, classes = _checked_features(features, labels)
    f = _standardised(x)
    n = f.shape[0]
    targets = (y[:, None] == classes[None, :]).astype(np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    shrink = s**2 / (s**2 + ridge)
    coords = u.T @ targets
    predictions = targets.mean(axis=0, keepdims=True) + u @ (shrink[:, None] * coords)
    leverage = 1.0 / n + (u**2) @ shrink
    left_out = (predictions - leverage[:, None] * targets) / (1.0 - leverage)[:, None]
    return classes, left_out, y


def _logme_column(sigma, proj, y_sq, n, d, tol=1e-6, max_iter=100):
    """LogME evidence per image of one target column: the fixed point of
    (alpha, beta) on the eigenvalues ``sigma`` of F^T F, ``proj`` = U^T y.

    Worked in t = alpha / beta, on which the posterior mean depends alone,
    with floors on t and the residual: features that fit the column exactly
    (more features than images) would drive beta to infinity."""
    alpha, beta = 1.0, 1.0
    floor_t = 1e-12 * max(float(sigma.max()), 1e-300)
    out_of_range = max(y_sq - float((proj**2).sum()), 0.0)
    for _ in range(max_iter):
        t = max(alpha / beta, floor_t)
        gamma = float((sigma / (t + sigma)).sum())
        m_sq = float((sigma * proj**2 / (t + sigma) ** 2).sum())
        residual = max(float(((t / (t + sigma)) ** 2 * proj**2).sum()) + out_of_range, 1e-12 * y_sq, 1e-300)
        new_alpha = gamma / max(m_sq, 1e-300)
        new_beta = max(n - gamma, 1e-12) / residual
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _log_evidence(alpha, beta, sigma, proj, y_sq, n, d) / n


def _log_evidence(alpha, beta, sigma, proj, y_sq, n, d):
    """log p(y | F, alpha, beta) of the Bayesian linear model, from the
    eigenvalues ``sigma`` (padded to d with zeros) and ``proj`` = U^T y."""
    t = alpha / beta
    m_sq = float((sigma * proj**2 / (t + sigma) ** 2).sum())
    residual = float(((t / (t + sigma)) ** 2 * proj**2).sum()) + max(y_sq - float((proj**2).sum()), 0.0)
    # log|alpha I + beta F^T F| = sum log(beta (t + sigma)) over the range, log alpha beyond it
    log_det = float(np.log(beta * (t + sigma)).sum()) + (d - len(sigma)) * math.log(alpha)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * m_sq - log_det / 2)


def logme(features, labels) -> float:
    r"""LogME (You et al., ICML 2021): mean over classes of the maximised log
    evidence per image of a Bayesian linear model of the one-hot column.

    The model: :math:`y = Fw + \epsilon`, :math:`w \sim N(0, \alpha^{-1}I)`,
    :math:`\epsilon \sim N(0, \beta^{-1}I)`; :math:`\alpha, \beta` by the
    paper's fixed-point iteration on the SVD of :math:`F`. The features are
    used as they are (no standardisation), as in the paper. Higher is better.

    Examples:
        .. code-block:: python

            >>> import numpy as np
            >>> from paddle_dtnh.transferability import logme
            >>> rng = np.random.default_rng(0)
            >>> y = np.repeat([0, 1], 20)
            >>> separable = np.c_[y + 0.1 * rng.standard_normal(40), rng.standard_normal(40)]
            >>> noise = rng.standard_normal((40, 2))
            >>> logme(separable, y) > logme(noise, y)
            True
    """
    x, y, classes = _checked_features(features, labels)
    n, d = x.shape
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    sigma = s**2
    values = []
    for c in classes:
        column = (y == c).astype(np.float64)
        values.append(_logme_column(sigma, u.T @ column, float(column @ column), n, d))
    return float(np.mean(values))


# -- the random network ------------------------------------------------------
_NORMS = (paddle.nn.BatchNorm, paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D,
          paddle.nn.SyncBatchNorm, paddle.nn.LayerNorm, paddle.nn.GroupNorm, paddle.nn.InstanceNorm1D,
          paddle.nn.InstanceNorm2D, paddle.nn.InstanceNorm3D)


def random_reinit(model: paddle.nn.Layer, seed: int = DEFAULT_SEED) -> paddle.nn.Layer:
    """A copy of ``model`` with every parameter drawn afresh, reproducibly.

    Works for any Layer, built here or not, by the role of each parameter:
    normalisation layers get scale 1, shift 0, running mean 0 and variance 1;
    every other tensor of 2 or more dimensions gets He (Kaiming) normal
    values with fan-in from its shape (``Linear``: ``[in, out]``, so the first
    dimension; convolutions: ``[out, in, kh, kw]``, so all but the first);
    every other 1-d tensor (biases) is 0. The values come from a NumPy
    generator seeded with ``seed``, so the copy does not depend on (or move)
    Paddle's global random state. ``model`` is not touched.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.transferability import random_reinit
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.BatchNorm1D(3))
            >>> fresh = random_reinit(net, seed=0)
            >>> bool((fresh[0].weight == random_reinit(net, seed=0)[0].weight).all())
            True
            >>> float(fresh[0].bias.abs().sum()), float(fresh[1].weight.mean())
            (0.0, 1.0)
    """
    fresh = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for _, layer in fresh.named_sublayers(include_self=True):
            is_norm = isinstance(layer, _NORMS)
            for name, p in layer.named_parameters(include_sublayers=False):
                shape = list(p.shape)
                if is_norm:
                    value = np.ones(shape) if name.endswith(("weight", "variance")) else np.zeros(shape)
                elif len(shape) >= 2:
                    fan_in = shape[0] if isinstance(layer, paddle.nn.Linear) else int(np.prod(shape[1:]))
                    value = rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))
                else:
                    value = np.zeros(shape)
                p.set_value(paddle.to_tensor(value, dtype=p.dtype, place=p.place))
    return fresh


# -- features of a network -------------------------------------------------------
def _batches(images, labels, batch_size):
    """(x, y) batches from Tensors/arrays, a paddle.io.Dataset, or a
    DataLoader (any iterable of (images, labels) batches)."""
    if isinstance(images, (list, tuple)) and labels is not None and images and \
            isinstance(images[0], (list, tuple)):
        raise ValueError("images is a list of (images, labels) batches and labels= was given too: pass the "
                         "batches alone (source_fit(source, batches, head=...)), or one image array with labels=.")
    is_array = isinstance(images, (paddle.Tensor, np.ndarray)) or (isinstance(images, list) and labels is not None)
    if not is_array and not isinstance(images, paddle.io.Dataset) and hasattr(images, "__iter__"):
        if labels is not None:
            raise ValueError("labels must be None when images is a DataLoader (it yields the labels).")
        for batch in images:
            yield _pair(batch)
        return
    if isinstance(images, paddle.io.Dataset):
        if labels is not None:
            raise ValueError("labels must be None when images is a Dataset (its items hold the labels).")
        loader = paddle.io.DataLoader(images, batch_size=batch_size, shuffle=False, drop_last=False)
        for batch in loader:
            yield _pair(batch)
        return
    if labels is None:
        raise ValueError("labels are required with image Tensors (or pass a paddle.io.Dataset/DataLoader).")
    x = images if isinstance(images, paddle.Tensor) else paddle.to_tensor(np.asarray(images))
    y = labels.numpy() if isinstance(labels, paddle.Tensor) else np.asarray(labels)
    if x.shape[0] != len(y.reshape(-1)):
        raise ValueError(f"{x.shape[0]} images but {len(y.reshape(-1))} labels.")
    for lo in range(0, x.shape[0], batch_size):
        yield x[lo : lo + batch_size], y.reshape(-1)[lo : lo + batch_size]


def _pair(batch):
    if isinstance(batch, dict):
        raise TypeError("Dataset items must be (image, label) pairs, got a dict.")
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise TypeError("Dataset/DataLoader items must be (image, label) pairs.")
    x, y = batch[0], batch[1]
    y = y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y)
    return x, y.reshape(-1)


def _checked_images(xs) -> list:
    """The batches as float32 Tensors; ValueError naming the first image with
    a NaN/Inf pixel; a warning where they look like raw 0-255 pixels."""
    checked, seen, integer, low, high = [], 0, False, math.inf, -math.inf
    for x in xs:
        x = x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x))
        integer = integer or not paddle.is_floating_point(x)
        x = x.astype("float32") if x.dtype != paddle.float32 else x
        values = x.reshape([x.shape[0], -1]).numpy()  # a test before training: host copies are fine here
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise ValueError(f"Image {seen + int(bad[0])} (0-based, in the order given) has NaN or Inf pixels "
                             f"({bad.size} such image(s) in its batch): the source-fit test cannot score them. "
                             "Fix or drop those images.")
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        seen += x.shape[0]
        checked.append(x)
    if integer or (low >= 0 and high > 1.5):
        warnings.warn(
            f"The source-fit test saw {'integer images' if integer else 'images'} with values in "
            f"[{low:g}, {high:g}]: raw 0-255 pixels? The networks were trained on normalised inputs, and raw "
            "pixels can change the decision. Pass the images exactly as training feeds them (float32, scaled "
            "and normalised, e.g. paddle_dtnh.data.to_tensor_batch); ignore this if your model normalises its "
            "input itself.", UserWarning, stacklevel=3)
    return checked


@paddle.no_grad()
def _features(network, head_layer: str, stage_layers, batches) -> tuple:
    """The input of sublayer ``head_layer`` for every image, flattened, and the
    globally average-pooled output of each of ``stage_layers``, in float64."""
    layers = dict(network.named_sublayers())
    if head_layer not in layers:
        raise ValueError(f"No sublayer named {head_layer!r} in {type(network).__name__}; its head is one of "
                         f"{list(layers)[-8:]} (the regularizers' head= convention).")
    captured = {"head": [], **{name: [] for name in stage_layers}}
    handles = [layers[head_layer].register_forward_pre_hook(
        lambda layer, inputs: captured["head"].append(inputs[0].astype("float32").reshape([inputs[0].shape[0], -1])))]
    try:
        for name in stage_layers:
            handles.append(layers[name].register_forward_post_hook(
                lambda layer, inputs, output, name=name: captured[name].append(
                    output.astype("float32").mean(axis=[2, 3]) if output.ndim == 4 else output.astype("float32"))))
        with evaluating(network):
            for x in batches:
                network(x)
    finally:
        for handle in handles:
            handle.remove()
    if not captured["head"]:
        raise ValueError("No images to score: the dataset is empty.")
    as_array = lambda parts: paddle.concat(parts).numpy().astype(np.float64)  # noqa: E731
    return as_array(captured["head"]), {name: as_array(captured[name]) for name in stage_layers}


# -- the test ------------------------------------------------------------------------
def paired_se(source_only: int, random_only: int, num_images: int) -> float:
    r"""Standard error of a paired difference of two accuracies on the same
    ``num_images`` images, from the discordant ones: ``source_only`` right
    for the source only, ``random_only`` for the random network only.
    :math:`\sqrt{b + c - (b - c)^2 / n} / n` (McNemar's paired difference of
    proportions).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.transferability import paired_se
            >>> round(paired_se(12, 8, 100), 4)
            0.0445
    """
    b, c, n = int(source_only), int(random_only), int(num_images)
    return math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n if n else 0.0


def _compared(source_correct, random_correct) -> tuple:
    """(source accuracy, random accuracy, right for the source only, right for the random only)."""
    return (float(source_correct.mean()), float(random_correct.mean()),
            int((source_correct & ~random_correct).sum()), int((random_correct & ~source_correct).sum()))


@dataclass(frozen=True)
class StageFit:
    """The leave-one-out probe on one stage's pooled features: source against random.

    Attributes:
        name (str): the stage's feature layer (``"layer1"`` ... for ResNet-18).
        source_score (float), random_score (float): leave-one-out ridge accuracies.
        source_only (int), random_only (int): images right for one network only.
        num_images (int), num_features (int): the pooled feature matrix's size.
    """

    name: str
    source_score: float
    random_score: float
    source_only: int
    random_only: int
    num_images: int
    num_features: int

    @property
    def advantage(self) -> float:
        return self.source_score - self.random_score

    @property
    def advantage_se(self) -> float:
        return paired_se(self.source_only, self.random_only, self.num_images)


@dataclass(frozen=True)
class SourceFit:
    """What :func:`source_fit` measured: the measurement, not the policy
    (:func:`paddle_dtnh.auto.decide` maps it to what DTNH runs).

    Attributes:
        source_score (float): leave-one-out ridge accuracy of the source's features.
        random_score (float): the same for the randomly initialised network.
        advantage (float): ``source_score - random_score``.
        advantage_se (float): its paired standard error (:func:`paired_se`).
        source_logme (float), random_logme (float): LogME of both networks' features.
        logme_advantage (float): ``source_logme - random_logme``.
        num_images (int), num_features (int): the size of the feature matrix.
        ridge (float), seed (int): the probe's ridge and the random network's seed.
        source_only (int), random_only (int): images whose left-out prediction
            is right for the source only, for the random network only.
        head (tuple): the head prefixes the test was given.
        source_digests (dict): ``name -> digest`` of the source's weights
            (:func:`paddle_dtnh.regularizers.base.weight_digests`): which source was measured.
        stages (tuple of StageFit): the same probe on each stage's pooled
            output (registered architectures; empty otherwise).
    """

    source_score: float
    random_score: float
    source_logme: float
    random_logme: float
    num_images: int
    num_features: int
    ridge: float = DEFAULT_RIDGE
    seed: int = DEFAULT_SEED
    source_only: int | None = None
    random_only: int | None = None
    head: tuple = ()
    source_digests: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    stages: tuple = ()

    @property
    def advantage(self) -> float:
        return self.source_score - self.random_score

    @property
    def advantage_se(self) -> float | None:
        """None for a report saved before 0.5 (no per-image record)."""
        if self.source_only is None or self.random_only is None:
            return None
        return paired_se(self.source_only, self.random_only, self.num_images)

    @property
    def logme_advantage(self) -> float:
        return self.source_logme - self.random_logme

    @property
    def decision(self):
        """What ``preset="auto"`` runs on this report (:func:`paddle_dtnh.auto.decide`)."""
        from .auto import decide  # the policy lives with the rules, not in the measurement

        return decide(self)

    @property
    def fits(self) -> bool:
        return self.decision.outcome == "fits"

    @property
    def preset(self) -> str:
        """What ``preset="auto"`` runs: ``"paper"``, ``"never_hurt"`` or ``"off"``."""
        return self.decision.preset

    def as_dict(self) -> dict:
        """The measurements and the decision, as plain values (state dicts, logs, JSON)."""
        values = dataclasses.asdict(self)
        values["head"] = list(self.head)
        values["stages"] = [dataclasses.asdict(s) for s in self.stages]
        decision = self.decision
        return {**values, "advantage": self.advantage, "advantage_se": self.advantage_se,
                "logme_advantage": self.logme_advantage, "outcome": decision.outcome, "fits": self.fits,
                "preset": decision.preset}

    @classmethod
    def from_dict(cls, values: dict) -> SourceFit:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        kept["head"] = tuple(kept.get("head", ()))
        kept["stages"] = tuple(StageFit(**s) for s in kept.get("stages", ()))
        kept["source_digests"] = dict(kept.get("source_digests", {}))
        return cls(**kept)

    def summary(self, decision=None) -> str:
        """One line: the scores, the standard error, the outcome and why
        (``decision``: another than :attr:`decision`, e.g. ``auto_stages``')."""
        se = "n/a" if self.advantage_se is None else f"{self.advantage_se:.3f}"
        decision = self.decision if decision is None else decision
        return (f"source fit: LOO ridge accuracy {self.source_score:.3f} (source) vs {self.random_score:.3f} "
                f"(random), advantage {self.advantage:+.3f} (SE {se}); LogME advantage "
                f"{self.logme_advantage:+.3f}; {decision.reason} -> preset {decision.preset!r} "
                f"({self.num_images} images, {self.num_features} features)")

    __str__ = summary


def source_fit(source: paddle.nn.Layer, images, labels=None, *, head, batch_size: int = 64,
               ridge: float = DEFAULT_RIDGE, seed: int = DEFAULT_SEED) -> SourceFit:
    """Test, before training, whether ``source``'s features fit the target.

    One forward pass of the training images through the source and through
    a random re-initialisation of it (:func:`random_reinit`), in eval mode
    without gradients; the input of the head is scored by
    :func:`loo_ridge_accuracy` (with each image's left-out correctness, for
    the paired standard error of the advantage) and :func:`logme`; for a
    registered architecture each stage's pooled output is scored too (the
    per-stage test of ``preset="auto_stages"``). Nothing is trained and
    ``source`` is left as it was (every sublayer's mode included).

    Args:
        source (paddle.nn.Layer): the source network (e.g. the ImageNet model).
        images (Tensor|ndarray|paddle.io.Dataset|paddle.io.DataLoader): the
            target's training images, as training feeds them (float32,
            normalised), or a dataset of (image, label) items, or a loader
            (any iterable) of (images, labels) batches.
        labels (Tensor|ndarray, optional): class labels, with image tensors only.
        head (str|list[str]): the source's classifier, as the regularizers
            take it (``"fc"`` or ``["fc"]`` for paddle.vision's ResNet,
            ``"out"`` for the PaddleHub ResNet-18); one layer.
        batch_size (int, optional): images per forward pass. Default: 64.
        ridge (float, optional): the probe's ridge. Default: 1.0.
        seed (int, optional): the random network's seed. Default: 0.

    Returns:
        SourceFit: both networks' scores; ``report.decision`` is what
        ``DTNH(preset="auto", fit=report)`` runs.

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh import source_fit
            >>> _ = paddle.seed(0)
            >>> net = paddle.nn.Sequential(paddle.nn.Linear(2, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 2))
            >>> x = paddle.randn([20, 2])
            >>> y = (x[:, 0] > 0).astype("int64")
            >>> report = source_fit(net, x, y, head="2")
            >>> report.num_images, report.num_features, report.preset in ("paper", "never_hurt", "off")
            (20, 8, True)
    """
    from .models.architectures import architecture_of
    from .regularizers.base import check_head, weight_digests

    if not isinstance(source, paddle.nn.Layer):
        raise TypeError(f"source must be a paddle.nn.Layer, got {type(source).__name__}.")
    heads = check_head(source, head)
    layers = dict(source.named_sublayers())
    head_layers = [h for h in heads if h in layers]
    if len(head_layers) != 1:
        raise ValueError(f"source_fit scores the input of one classifier layer; head={heads!r} names "
                         f"{len(head_layers)} sublayer(s) of {type(source).__name__} ({head_layers}). Give the "
                         "classifier's name, e.g. head='fc'.")
    check_positive_int("batch_size", batch_size)
    images_and_labels = list(_batches(images, labels, batch_size))
    y = np.concatenate([b[1] for b in images_and_labels]) if images_and_labels else np.zeros(0)
    xs = _checked_images(b[0] for b in images_and_labels)
    arch = architecture_of(source)
    stage_layers = [name for name in (arch.feature_layers if arch is not None else ()) if name in layers]
    measured = {}
    for name, network in (("source", source), ("random", random_reinit(source, seed))):
        features, stage_features = _features(network, head_layers[0], stage_layers, xs)
        measured[name] = (_correct(features, y, ridge), logme(features, y), features.shape,
                          {s: _correct(f, y, ridge) for s, f in stage_features.items()},
                          {s: f.shape[1] for s, f in stage_features.items()})
    (n, d) = measured["source"][2]
    source_score, random_score, b, c = _compared(measured["source"][0], measured["random"][0])
    stages = tuple(StageFit(s, *_compared(measured["source"][3][s], measured["random"][3][s]), int(n),
                            int(measured["source"][4][s])) for s in stage_layers)
    return SourceFit(source_score=source_score, random_score=random_score,
                     source_logme=measured["source"][1], random_logme=measured["random"][1],
                     num_images=int(n), num_features=int(d), ridge=float(ridge), seed=int(seed),
                     source_only=b, random_only=c, head=tuple(heads),
                     source_digests=weight_digests(source.named_parameters(), heads), stages=stages)


def _correct(features, labels, ridge) -> np.ndarray:
    """Whether each image's left-out prediction of the ridge probe is its label."""
    classes, left_out, y = loo_ridge_predictions(features, labels, ridge)
    return classes[left_out.argmax(axis=1)] == y
