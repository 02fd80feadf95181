r"""DELTA's supervised channel attention (DELTA paper, Sec. 3.4).

1. L2-FE: the source feature extractor is frozen and only a new linear head
   is trained on the target data (pooled features are computed once and
   cached, so the epochs cost almost nothing).
2. For each hooked layer and channel :math:`c`, the gap
   :math:`\Delta_c = \mathrm{CE}(\text{channel } c \text{ removed}) - \mathrm{CE}`
   of the L2-FE model, averaged over a few target batches. A channel is
   removed by zeroing it in the layer's output, the same tensor the
   regularizer compares.
3. Per layer, the gaps become weights summing to 1. ``"zscore"`` (default,
   as the PyTorch reference): :math:`\mathrm{softmax}(z/T)` with
   :math:`z` the z-scored gaps and :math:`T = 5`; raw gaps are often tiny
   and a plain softmax of them is nearly uniform. ``"softmax"``: the
   paper's softmax of the raw gaps.

Cost: brute force is one forward pass of the whole network per channel and
batch. Here the activation at the ablated layer is computed once, and only
the stages after it are run, on many ablated copies at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn.functional as F

from .io import files
from ._checks import check_choice, check_positive_int
from .features import frozen_copy

__all__ = [
    "AttentionWeights",
    "compute_attention",
    "network_stages",
    "source_fingerprint",
]

_FORMAT = "paddle_dtnh.attention/1"
NORMALIZATIONS = ("zscore", "softmax")


def network_stages(model: paddle.nn.Layer) -> list:
    """The stage split of ``model``'s registered architecture
    (:mod:`paddle_dtnh.models.architectures`)."""
    from .models.architectures import architecture_of

    arch = architecture_of(model)
    if arch is None:
        raise ValueError(
            f"No stage split registered for {type(model).__name__}: pass stages=split_fn "
            "(network -> [(name, callable), ...], image batch -> pooled features), or register "
            "the architecture with paddle_dtnh.models.architectures.register()."
        )
    return arch.stages(model)


def source_fingerprint(model: paddle.nn.Layer) -> str:
    """SHA-1 of a network's state dict (names, shapes and values)."""
    digest = hashlib.sha1()
    for name, value in sorted(model.state_dict().items()):
        array = np.ascontiguousarray(value.numpy())
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class AttentionWeights:
    """Per-layer channel weights for :class:`~paddle_dtnh.regularizers.DELTA`.

    Attributes:
        weights (dict): layer name -> ndarray of channel weights summing to 1.
        gaps (dict): layer name -> ndarray of the loss increases they come from.
        source_key (str): :func:`source_fingerprint` of the source network.
        normalization (str): ``"zscore"`` or ``"softmax"``.
    """

    weights: dict
    gaps: dict
    source_key: str
    normalization: str
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list:
        return list(self.weights)

    def save(self, path: str) -> None:
        """Write to ``path`` (atomically: a temporary file, then a rename)."""
        files.save(
            {
                "format": _FORMAT,
                "weights": self.weights,
                "gaps": self.gaps,
                "source_key": self.source_key,
                "normalization": self.normalization,
                "meta": {k: v for k, v in self.meta.items() if k != "head"},
            },
            path,
        )

    @classmethod
    def load(cls, path: str, *, source: paddle.nn.Layer | None = None, layers=None, trusted: bool = False):
        """Read a file written by :meth:`save` (no code runs: see
        :func:`paddle_dtnh.io.files.load`); with ``source`` and/or ``layers``,
        reject a file computed for another source network or layer set."""
        raw = files.load(path, what="attention file", trusted=trusted, require_digest=not trusted)
        blob = files.check_format(raw, _FORMAT, path, "attention file")
        found = cls(blob["weights"], blob["gaps"], blob["source_key"], blob["normalization"],
                    blob.get("meta", {}))
        if layers is not None and list(layers) != found.layers:
            raise ValueError(
                f"Stale attention file {path}: computed for layers {found.layers}, "
                f"not {list(layers)}. Recompute it with compute_attention()."
            )
        if source is not None and source_fingerprint(source) != found.source_key:
            raise ValueError(
                f"Stale attention file {path}: computed for another source network "
                "(its weights differ). Recompute it with compute_attention()."
            )
        return found


def _batches(data, max_batches=None):
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("compute_attention needs labelled batches (images, labels).")
        x, y = batch[0], batch[1]
        x = x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x)
        y = y if isinstance(y, paddle.Tensor) else paddle.to_tensor(y)
        yield x, y.reshape([-1]).astype("int64")


def _run(stages, x, start=0, stop=None, zero=None):
    """Run stages[start:stop]; ``zero=(stage_index, channel)`` removes one
    channel from that stage's output (the brute-force ablation)."""
    for i, (_, stage) in enumerate(stages[start:stop], start=start):
        x = stage(x)
        if zero is not None and zero[0] == i:
            mask = paddle.ones([x.shape[1]], dtype=x.dtype)
            mask[zero[1]] = 0.0
            x = x * mask.reshape([1, -1] + [1] * (x.ndim - 2))
    return x


@paddle.no_grad()
def _train_l2fe_head(stages, data, num_classes, epochs, lr, seed):
    feats, labels = [], []
    for x, y in _batches(data):
        feats.append(_run(stages, x))
        labels.append(y)
    if not feats:
        raise ValueError("compute_attention got no batches: the data iterable is empty.")
    feats, labels = paddle.concat(feats), paddle.concat(labels)
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(
            f"Labels must be in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    paddle.seed(seed)
    head = paddle.nn.Linear(feats.shape[1], num_classes)
    opt = paddle.optimizer.Momentum(lr, momentum=0.9, parameters=head.parameters())
    batch = 32
    rng = np.random.default_rng(seed)
    with paddle.enable_grad():
        for _ in range(epochs):
            order = paddle.to_tensor(rng.permutation(feats.shape[0]))
            for start in range(0, feats.shape[0], batch):
                idx = order[start : start + batch]
                F.cross_entropy(head(feats[idx]), labels[idx]).backward()
                opt.step()
                opt.clear_grad()
    head.eval()
    return head


@paddle.no_grad()
def _loss_gaps(stages, head, batches, layer_index, channels, method, max_ablation_batch, bar):
    """Mean over batches of CE(channel removed) - CE, per channel of one stage."""
    total = np.zeros(channels)
    for x, y in batches:
        cached = _run(stages, x, stop=layer_index + 1)
        base = F.cross_entropy(head(_run(stages, cached, start=layer_index + 1)), y)
        b = x.shape[0]
        if method == "brute_force":
            for c in range(channels):
                out = _run(stages, x, zero=(layer_index, c))
                total[c] += float(F.cross_entropy(head(out), y) - base)
                bar.update(1)
            continue
        per_chunk = max(1, max_ablation_batch // b)
        eye = paddle.eye(channels, dtype=cached.dtype)
        for lo in range(0, channels, per_chunk):
            hi = min(lo + per_chunk, channels)
            mask = (1.0 - eye[lo:hi]).reshape([hi - lo, 1, channels] + [1] * (cached.ndim - 2))
            ablated = (cached.unsqueeze(0) * mask).reshape([(hi - lo) * b] + cached.shape[1:])
            logits = head(_run(stages, ablated, start=layer_index + 1))
            losses = F.cross_entropy(logits, paddle.tile(y, [hi - lo]), reduction="none")
            gaps = losses.reshape([hi - lo, b]).mean(axis=1) - base
            total[lo:hi] += gaps.numpy()
            bar.update(hi - lo)
    return total / len(batches)


def _normalize(gaps: np.ndarray, normalization: str, temperature: float) -> np.ndarray:
    scores = gaps
    if normalization == "zscore":
        scores = (gaps - gaps.mean()) / (gaps.std() + 1e-12) / temperature
    scores = scores - scores.max()  # over the channel axis of one layer
    weights = np.exp(scores)
    return weights / weights.sum()


def compute_attention(
    source: paddle.nn.Layer,
    data,
    *,
    num_classes: int,
    layers: Sequence[str] | None = None,
    stages: Callable | None = None,
    fe_epochs: int = 10,
    fe_lr: float = 0.01,
    max_batches: int = 4,
    normalization: str = "zscore",
    temperature: float = 5.0,
    method: str = "batched",
    max_ablation_batch: int = 512,
    seed: int = 0,
    progress: bool = True,
    head: paddle.nn.Layer | None = None,
) -> AttentionWeights:
    """DELTA's channel attention of ``source`` on the target ``data``.

    Args:
        source (paddle.nn.Layer): the source network (not modified: a frozen
            copy is used).
        data (Iterable): target batches ``(images, labels)``; all of it trains
            the L2-FE head, the first ``max_batches`` batches are ablated.
        num_classes (int): number of target classes.
        layers (Sequence[str], optional): stage names to weigh. Default: every
            stage but the first and last (``layer1``..``layer4`` for ResNet).
        stages (callable, optional): ``split(model) -> [(name, callable)]``,
            applied to the frozen copy; default: the architecture's split
            (:mod:`paddle_dtnh.models.architectures`).
        fe_epochs (int, optional): L2-FE epochs. Default: 10.
        fe_lr (float, optional): L2-FE learning rate (momentum 0.9). Default: 0.01.
        max_batches (int, optional): batches averaged for the gaps. Default: 4.
        normalization (str, optional): ``"zscore"`` or ``"softmax"``. Default: "zscore".
        temperature (float, optional): ``T`` of the z-score softmax. Default: 5.0.
        method (str, optional): ``"batched"`` or ``"brute_force"`` (the
            reference: one full forward pass per channel). Default: "batched".
        max_ablation_batch (int, optional): images per batched forward. Default: 512.
        seed (int, optional): seed of the L2-FE head. Default: 0.
        progress (bool, optional): show a progress bar. Default: True.
        head (paddle.nn.Layer, optional): a trained L2-FE head to reuse
            (skips step 1). Default: None.

    Returns:
        AttentionWeights: the weights, the raw gaps and the source fingerprint;
        the trained head is in ``meta["head"]`` only in memory (not saved).

    Examples:
        .. code-block:: python

            >>> import paddle
            >>> from paddle_dtnh.attention import compute_attention
            >>> net = paddle.vision.models.resnet18(num_classes=5)
            >>> data = [(paddle.randn([4, 3, 32, 32]), paddle.to_tensor([0, 1, 2, 1]))]
            >>> att = compute_attention(net, data, num_classes=3, fe_epochs=1, progress=False)
            >>> att.layers, att.weights["layer4"].shape
            (['layer1', 'layer2', 'layer3', 'layer4'], (512,))
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("method", method, ("batched", "brute_force"))
    if check_positive_int("num_classes", num_classes) < 2:
        raise ValueError(f"Invalid num_classes: {num_classes!r}; expected an int > 1.")
    network = frozen_copy(source)
    stages = stages(network) if stages is not None else network_stages(network)
    names = [n for n, _ in stages]
    layers = list(layers) if layers is not None else names[1:-1]
    unknown = [n for n in layers if n not in names[:-1]]
    if unknown:
        raise ValueError(f"Unknown layer(s) {unknown}; stages that can be ablated: {names[:-1]}.")
    if head is None:
        head = _train_l2fe_head(stages, data, num_classes, fe_epochs, fe_lr, seed)
    batches = list(_batches(data, max_batches))
    if not batches:
        raise ValueError("compute_attention got no batches: the data iterable is empty.")

    with paddle.no_grad():
        channels = {}
        x = batches[0][0][:1]
        for name, stage in stages:
            x = stage(x)
            channels[name] = x.shape[1]
    from tqdm.auto import tqdm

    total = sum(channels[n] for n in layers) * len(batches)
    weights, gaps = {}, {}
    with tqdm(total=total, desc=f"DELTA attention ({method})", unit="ch", disable=None if progress else True) as bar:
        for name in layers:
            gaps[name] = _loss_gaps(stages, head, batches, names.index(name), channels[name],
                                    method, max_ablation_batch, bar)
            weights[name] = _normalize(gaps[name], normalization, temperature)
    return AttentionWeights(
        weights=weights,
        gaps=gaps,
        source_key=source_fingerprint(source),
        normalization=normalization,
        meta={"head": head, "temperature": temperature, "max_batches": len(batches)},
    )
