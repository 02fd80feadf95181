"""Source networks pretrained here, cached: what the offline benchmarks and
the demo transfer from (users with internet load ImageNet weights through
:mod:`paddle_dtnh.integrations.hub` instead).

The cache file is keyed by every setting, written atomically, and reused
when it exists; a run cut short resumes from its ``.partial`` checkpoint,
ending bit-equal to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_dtnh import DTNH
from paddle_dtnh._layers import evaluating
from paddle_dtnh.data import load_dataset, to_tensor_batch
from paddle_dtnh.distributed import rank, world_size
from paddle_dtnh.io import files
from paddle_dtnh.io.checkpoint import load_checkpoint, save_checkpoint
from paddle_dtnh.models.architectures import ARCHITECTURES

__all__ = ["pretrain_source", "pretraining_images", "evaluate", "augment", "progress_bar"]


def _config_key(blob: dict) -> str:
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def progress_bar(total, desc, enabled=True):
    """A progress bar on a terminal only (none in a log file)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True)


def augment(x, rng, flip=False):
    """Random crop with 4-pixel zero padding (one offset per batch, cheap),
    and with ``flip`` a horizontal mirror of a random half of the images."""
    pad = 4
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    padded = F.pad(x, [pad, pad, pad, pad])
    x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    if flip:
        mirror = paddle.to_tensor(rng.random(x.shape[0]) < 0.5).reshape([-1, 1, 1, 1])
        x = paddle.where(mirror, x.flip([3]), x)
    return x


def pretrain_source(
    dataset: str,
    *,
    cache_dir: str,
    image_size: int = 32,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    max_images: int = 4000,
    seed: int = 0,
    data_root: str | None = None,
    progress: bool = True,
    arch: str = "resnet18",
) -> str:
    """Train a network of ``arch`` on ``dataset`` (or reuse the cached result).

    The cache file is keyed by every setting, written atomically, and reused
    when it exists. Returns its ``.pdparams`` path; a ``.json`` beside it
    records the settings, the training time and the test accuracy.
    """
    settings = dict(dataset=dataset, image_size=image_size, epochs=epochs, batch_size=batch_size,
                    lr=lr, max_images=max_images, seed=seed, arch=arch)
    path = os.path.join(cache_dir, f"source-{dataset}-{_config_key(settings)}.pdparams")
    if world_size() > 1:  # rank 0 trains and writes the cache (atomically); the others wait for the file
        if rank() == 0 and not os.path.isfile(path):
            _pretrain(path, settings, data_root, progress)
        _wait_for(path)
        return path
    if os.path.isfile(path):
        return path
    _pretrain(path, settings, data_root, progress)
    return path


def pretraining_indices(num_train: int, max_images: int, rng) -> np.ndarray:
    """The positions in a set's training split a source is pretrained on (the
    first draw of ``rng``): the one definition the pretraining and the
    leakage test share."""
    return rng.permutation(num_train)[:max_images]


def pretraining_images(dataset: str, *, max_images: int, seed: int = 0, data_root: str | None = None):
    """The training :class:`~paddle_dtnh.data.Split` a source of these
    settings is pretrained on (its images, labels and origins)."""
    data = load_dataset(dataset, root=data_root)
    return data.train.take(pretraining_indices(len(data.train.labels), max_images, np.random.default_rng(seed)))


def _wait_for(path, timeout=6 * 3600, poll=1.0):
    """Wait until rank 0 has written ``path``: polled on the file system, not
    a collective barrier, whose timeout (about 30 s under gloo) a
    pretraining of minutes would outlast."""
    deadline = time.time() + timeout
    while not os.path.isfile(path):
        if time.time() > deadline:
            raise TimeoutError(f"Rank {rank()} waited {timeout} s for rank 0 to pretrain {path}.")
        time.sleep(poll)


def _pretrain(path, settings, data_root, progress, checkpoint_every=100):
    """Train the source; every ``checkpoint_every`` steps the run is saved
    beside ``path`` (``.partial``) and resumed from there after a crash."""
    dataset, image_size, epochs = settings["dataset"], settings["image_size"], settings["epochs"]
    batch_size, lr, max_images, seed = (settings[k] for k in ("batch_size", "lr", "max_images", "seed"))
    cache_dir = os.path.dirname(path)
    os.makedirs(cache_dir, exist_ok=True)
    data = load_dataset(dataset, root=data_root)
    rng = np.random.default_rng(seed)
    idx = pretraining_indices(len(data.train.labels), max_images, rng)
    x_all = to_tensor_batch(data.train.images[idx], image_size)
    y_all = paddle.to_tensor(data.train.labels[idx])
    paddle.seed(seed)
    model = ARCHITECTURES[settings["arch"]].build(data.num_classes)
    per_epoch = math.ceil(len(idx) / batch_size)
    steps = epochs * per_epoch
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=steps)
    inner = paddle.optimizer.Momentum(schedule, momentum=0.9, parameters=model.parameters(), weight_decay=5e-4)
    with warnings.catch_warnings():  # plain training: the decay is meant, no regularizer to bypass
        warnings.simplefilter("ignore")
        # its state_dict resumes by structured names; rank 0 trains alone under the launcher
        opt = DTNH(inner, None, lam=0.0, model=model, data_parallel=False)
    partial = path + ".partial"
    done, seconds, order = 0, 0.0, None
    if os.path.isfile(partial):
        extra = load_checkpoint(partial, model, opt)
        done, seconds, order = extra["step"], extra["seconds"], np.asarray(extra["order"])
        rng.bit_generator.state = extra["rng"]  # the schedule came back with the optimizer
    start = time.time() - seconds
    model.train()
    with progress_bar(steps, f"pretraining source on {dataset}", progress) as bar:
        bar.update(done)
        while done < steps:
            if done % per_epoch == 0:  # a resumed run restored the order of its epoch
                order = rng.permutation(len(idx))
            lo = (done % per_epoch) * batch_size
            b = paddle.to_tensor(order[lo : lo + batch_size])
            loss = F.cross_entropy(model(augment(x_all[b], rng)), y_all[b])
            loss.backward()
            opt.step(loss)
            opt.clear_grad()
            schedule.step()
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
            if checkpoint_every and done % checkpoint_every == 0 and done < steps:
                save_checkpoint(partial, model, opt, step=done, seconds=time.time() - start,
                                order=[int(i) for i in order], rng=rng.bit_generator.state)
    acc = evaluate(model, to_tensor_batch(data.test.images[:2000], image_size),
                    paddle.to_tensor(data.test.labels[:2000]))[1]
    files.save(model.state_dict(), path)
    with open(path[: -len(".pdparams")] + ".json", "w") as f:
        json.dump({**settings, "train_seconds": time.time() - start, "test_accuracy": acc}, f, indent=2)
    if os.path.isfile(partial):
        os.remove(partial)


@paddle.no_grad()
def evaluate(model, x, y, batch=250):
    """Mean cross-entropy and accuracy of ``model`` in eval mode."""
    losses, correct = [], 0
    with paddle.no_grad(), evaluating(model):  # no graph to record
        for lo in range(0, x.shape[0], batch):
            logits = model(x[lo : lo + batch])
            losses.append(F.cross_entropy(logits, y[lo : lo + batch], reduction="sum"))
            correct += int((logits.argmax(axis=1) == y[lo : lo + batch]).astype("int64").sum())
    return float(paddle.add_n(losses)) / x.shape[0], correct / x.shape[0]


