"""One fine-tuning run of the benchmarks and the demo, and where finished
runs are kept: :func:`run_transfer`, :class:`RunStore`, :func:`goal_text`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_dtnh import DTNH
from paddle_dtnh.attention import compute_attention
from paddle_dtnh.auto import decide
from paddle_dtnh.data import ImageSet, few_shot_indices, to_tensor_batch
from paddle_dtnh.diagnostics import DIAGNOSTIC_KEYS, LoggerGroup, StepLogger
from paddle_dtnh.distributed import rank, world_size
from paddle_dtnh.io import files
from paddle_dtnh.io.checkpoint import load_checkpoint, save_checkpoint
from paddle_dtnh.models.architectures import ARCHITECTURES, head_of, target_from
from paddle_dtnh.regularizers import match_source

from .methods import build_regularizer, method_spec
from .sources import augment, evaluate, progress_bar

__all__ = ["RunConfig", "run_transfer", "load_source", "fit_report", "Recorder", "RunStore", "summarize_diagnostics",
           "goal_text", "show_library_log", "HOLDOUT_SOURCES", "split_holdout"]

#: where a held-out reference's images come from: beyond the training set
#: ("extra"), out of it ("budget": never trained on), rotating folds of it
#: ("cross": every image is trained on except while its fold is held out),
#: or the batch the next step trains on ("next": FTP's signal, free of extra
#: images, but after the first epoch that batch has been trained on before)
HOLDOUT_SOURCES = ("extra", "budget", "cross", "next")


def show_library_log(stream=None) -> None:
    """Print the library's INFO messages (``preset="auto"``'s source-fit
    line) as plain lines on ``stream`` (default: stdout): the library logs
    them and prints nothing itself. Idempotent."""
    log = logging.getLogger("paddle_dtnh")
    if any(getattr(h, "shown_by_lab", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.shown_by_lab = True
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # once, even where the root logger has a handler of its own


@dataclass
class RunConfig:
    """Hyper-parameters of one fine-tuning run (defaults: the offline demo)."""

    arch: str = "resnet18"  # a key of paddle_dtnh.models.architectures.ARCHITECTURES
    iterations: int = 100
    batch_size: int = 20
    per_class: int = 10
    image_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    lr_drop_at: float = 0.75  # fraction of the iterations (paper: 6000 / 8000)
    lam: dict = field(default_factory=lambda: {"l2": 1.0, "l2sp": 1.0, "knowdist": 0.01, "delta": 1.0})
    lam_decay: float = 1.0  # per epoch of the few-shot set
    alpha: dict = field(default_factory=lambda: {"l2": 0.01, "l2sp": 0.1, "delta": 0.01})
    beta: float = 0.01
    eval_interval: int = 20
    stats_interval: int = 5
    max_test: int = 1000
    checkpoint_every: int = 0  # steps between checkpoints of a run given checkpoint= (0: none)
    augment: bool = False  # random crop (4 px padding)
    flip: bool = False  # random horizontal mirror per image (not for digits)
    holdout_per_class: int = 0  # held-out images per class for reference="holdout" rules
    holdout_source: str = "extra"  # a value of HOLDOUT_SOURCES
    # steps between refreshes of the held-out gradient (cross: between fold
    # rotations); None: the rule's own
    holdout_every: int | None = None
    # train also on the images per class a holdout rule with holdout_source "extra" would hold out (the same
    # draw): the fair baseline of that rule sees exactly the images it sees
    extra_train_per_class: int = 0


class Recorder(StepLogger):
    """Keeps the diagnostics of every ``interval``-th step in memory."""

    KEYS = ("task_loss", "reg_loss", "conflict") + DIAGNOSTIC_KEYS

    def __init__(self, interval: int):
        self.interval = interval
        self.steps = []
        self.values = {k: [] for k in self.KEYS}

    def wants_stats(self, step):
        return step % self.interval == 0

    def on_step(self, dtnh, stats):
        if self.wants_stats(dtnh.num_steps) and "angle1" in stats:
            self.steps.append(dtnh.num_steps)
            for k in self.KEYS:
                self.values[k].append(float(stats[k]) if k in stats else float("nan"))


def split_holdout(labels: np.ndarray, chosen: np.ndarray, per_class: int, seed: int) -> tuple:
    """``chosen`` indices split per class into (kept, held out), ``per_class``
    held out of each class (drawn with ``seed``)."""
    rng = np.random.default_rng(seed + 7919)
    kept, held = [], []
    for c in np.unique(labels[chosen]):
        mine = rng.permutation(chosen[labels[chosen] == c])
        if len(mine) <= per_class:
            raise ValueError(f"Class {c} has {len(mine)} images: too few to hold {per_class} out "
                             "and train on the rest.")
        held.extend(mine[:per_class])
        kept.extend(mine[per_class:])
    return np.sort(np.asarray(kept)), np.sort(np.asarray(held))


def _has_held_out_images(cfg) -> bool:
    """Whether ``cfg`` gives a holdout rule held-out images ("next" needs no count)."""
    return cfg.holdout_per_class > 0 or cfg.holdout_source == "next"


def _holdout_images(target, cfg, seed, needs_holdout):
    """(train indices, held-out indices or None) of the target's train split."""
    train = few_shot_indices(target.train.labels, cfg.per_class, seed)  # every method's training set
    if cfg.extra_train_per_class:
        return np.union1d(train, _extra_images(target, train, cfg.extra_train_per_class, seed)), None
    if not needs_holdout:
        return train, None
    if cfg.holdout_source not in HOLDOUT_SOURCES:
        raise ValueError(f"Invalid holdout_source {cfg.holdout_source!r}; expected one of {HOLDOUT_SOURCES}.")
    if not _has_held_out_images(cfg):
        raise ValueError("This rule judges conflicts on held-out images: set holdout_per_class > 0.")
    if cfg.holdout_source == "extra":  # the extra images from the rest of the split
        return train, _extra_images(target, train, cfg.holdout_per_class, seed)
    if cfg.holdout_source == "budget":
        return split_holdout(target.train.labels, train, cfg.holdout_per_class, seed)
    return train, None  # cross and next: cut from the training set itself


def _extra_images(target, train, per_class, seed):
    """``per_class`` images of every class from outside ``train``, drawn with ``seed + 1``."""
    rest = np.setdiff1d(np.arange(len(target.train.labels)), train)
    return rest[few_shot_indices(target.train.labels[rest], per_class, seed + 1)]


def load_source(source_path: str, arch_name: str = "resnet18") -> paddle.nn.Layer:
    """The source network of ``arch_name`` with the weights in ``source_path``."""
    state = files.read_state_dict(source_path)
    arch = ARCHITECTURES[arch_name]
    if arch.num_classes(state) is None:
        raise ValueError(f"{source_path} holds no {arch.name} weights (no {arch.head}.weight); "
                         f"pass --arch matching the source.")
    source = arch.build(arch.num_classes(state))
    source.set_state_dict(state)
    return source


def fit_report(source, target: ImageSet, cfg: RunConfig, seed: int):
    """:func:`paddle_dtnh.source_fit` of ``source`` (a network or a weights
    path) on the training images a run with ``cfg`` and ``seed`` trains on:
    what ``preset="auto"`` decides from. Paddle's random state is not used."""
    train_idx = few_shot_indices(target.train.labels, cfg.per_class, seed)
    if isinstance(source, str):
        source = load_source(source, cfg.arch)
    return _fit_on(source, to_tensor_batch(target.train.images[train_idx], cfg.image_size),
                   target.train.labels[train_idx], cfg)


def _fit_on(source, x_train, y_train, cfg):
    from paddle_dtnh import source_fit

    return source_fit(source, x_train, y_train, head=ARCHITECTURES[cfg.arch].head)


def run_transfer(
    method: str,
    source_path: str,
    target: ImageSet,
    cfg: RunConfig,
    *,
    seed: int = 0,
    log_dir: str | None = None,
    progress: bool = True,
    checkpoint: str | None = None,
) -> dict:
    """Fine-tune a network of ``cfg.arch`` from ``source_path`` on a few-shot ``target``.

    With ``checkpoint`` and ``cfg.checkpoint_every``, the run is saved there
    every that many steps (model, optimizer, data order, random state, curves)
    and resumed from it when it exists, ending as the uninterrupted run would;
    the file is removed when the run finishes.

    Returns:
        dict: ``test_accuracy``, ``test_loss`` (final), the curves at every
        evaluation (``curve``: iteration, train and test empirical loss, test
        accuracy), the diagnostics every ``stats_interval`` steps
        (``diagnostics``: angles 1-4, conflict, losses), and ``seconds``.
    """
    spec = method_spec(method)
    world, me = world_size(), rank()
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world} data-parallel ranks.")
    start = time.time()
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    # a holdout rule with a fallback and no held-out images configured runs
    # its fallback, as DTNH does without holdout= (with its warning)
    needs_holdout = spec.rule.reference == "holdout" and (_has_held_out_images(cfg) or spec.rule.fallback is None)
    train_idx, held_idx = _holdout_images(target, cfg, seed, needs_holdout)
    x_train = to_tensor_batch(target.train.images[train_idx], cfg.image_size)
    y_train = paddle.to_tensor(target.train.labels[train_idx])

    # Paddle's random state is drawn from in this order: source, head, regularizer
    source = load_source(source_path, cfg.arch)
    # auto never holds images out: its test sees exactly the training images; it draws nothing
    fit = _fit_on(source, x_train, y_train, cfg) if spec.is_auto else None
    decision = None if fit is None else decide(fit, stages=spec.rule_name == "auto_stages")
    if decision is not None and decision.preset == "off":
        # the pull off is this harness's fine-tuning recipe, so the run is the fine-tuning run bit for bit
        # (a user's DTNH runs their inner optimizer with its own weight decay)
        spec = method_spec("finetune")
        if me == 0:
            print(f"DTNH preset {method_spec(method).rule_name!r}: {fit.summary(decision)} (this harness runs "
                  "its fine-tuning run)", flush=True)
    model = target_from(source, target.num_classes)
    reg = _regularizer(spec, model, source, x_train, y_train, target, cfg, progress)
    schedule = paddle.optimizer.lr.PiecewiseDecay(
        [max(1, int(cfg.lr_drop_at * cfg.iterations))], [cfg.lr, cfg.lr * 0.1])
    inner = paddle.optimizer.Momentum(schedule, momentum=cfg.momentum, parameters=model.parameters())
    recorder, vdl = _loggers(cfg, log_dir if me == 0 else None, f"{method}/seed{seed}")
    loggers = LoggerGroup([recorder, vdl])
    held = _HeldOut.of(cfg, target, train_idx, held_idx, x_train, y_train, seed) if needs_holdout else None
    rule = spec.rule
    if held is not None and cfg.holdout_every is not None:
        rule = rule.replace(holdout_every=cfg.holdout_every)
    opt = DTNH(inner, reg, lam=cfg.lam[spec.regularizer], lam_decay=cfg.lam_decay,
               steps_per_epoch=math.ceil(len(train_idx) / cfg.batch_size), logger=loggers,
               holdout=None if held is None else held.loss_of(model),
               **(dict(preset=spec.rule_name, fit=fit, model=model) if spec.is_auto else dict(preset=rule)))
    curve = _Curve(model, (x_train, y_train), target, cfg, loggers)

    order, first = [], 1
    if checkpoint and os.path.isfile(checkpoint):
        state = load_checkpoint(checkpoint, model, opt)
        first, order = state["iteration"] + 1, list(state["order"])
        rng.bit_generator.state = state["rng"]
        curve.values.update({k: list(v) for k, v in state["curve"].items()})
        recorder.steps, recorder.values = list(state["logged_steps"]), {k: list(v) for k, v in state["logged"].items()}
    else:
        curve.evaluate_at(0)
    model.train()
    with progress_bar(cfg.iterations, f"{spec.label} (seed {seed})", progress and me == 0) as bar:
        bar.update(first - 1)
        for it in range(first, cfg.iterations + 1):
            if held is not None:
                held.at_step(it, rule.holdout_every)
            batch, order = _next_batch(order, cfg.batch_size, len(train_idx), rng,
                                       exclude=held.excluded() if held is not None else ())
            if held is not None and held.peeks:
                order = held.peek(order, cfg.batch_size, len(train_idx), rng)
            mine = batch[me * cfg.batch_size // world : (me + 1) * cfg.batch_size // world]
            share = paddle.to_tensor(np.asarray(mine))
            x = augment(x_train[share], rng, cfg.flip) if cfg.augment else x_train[share]
            logits, omega = reg.run(x)
            opt.update(F.cross_entropy(logits, y_train[share]), omega)
            schedule.step()
            if it % cfg.eval_interval == 0 or it == cfg.iterations:
                bar.set_postfix(test_acc=f"{curve.evaluate_at(it):.3f}")
            if checkpoint and cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations \
                    and me == 0:
                save_checkpoint(checkpoint, model, opt, iteration=it, order=[int(i) for i in order],
                                rng=rng.bit_generator.state, curve=curve.values, logged_steps=recorder.steps,
                                logged=recorder.values)
            bar.update(1)
    if vdl is not None:
        vdl.close()
    if checkpoint and me == 0 and os.path.isfile(checkpoint):
        os.remove(checkpoint)  # the run is complete: its result is what counts now
    values = curve.values
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": values["test_accuracy"][-1],
        "test_loss": values["test_loss"][-1],
        "skipped_steps": opt.skipped_steps,
        "distance_to_source": source_distance(model, source),
        "source_fit": None if fit is None else fit.as_dict(),
        "decision": None if decision is None else {"outcome": decision.outcome, "preset": decision.preset,
                                                   "pulled_stages": decision.pulled_stages,
                                                   "reason": decision.reason},
        "curve": values,
        "diagnostics": {"step": recorder.steps, **recorder.values},
        "seconds": time.time() - start,
        "config": asdict(cfg),
    }


def _regularizer(spec, model, source, x_train, y_train, target, cfg, progress):
    """The method's regularizer; DELTA's attention from the source on the training batches."""
    attention = None
    if spec.regularizer == "delta":
        batches = [(x_train[i : i + cfg.batch_size], y_train[i : i + cfg.batch_size])
                   for i in range(0, x_train.shape[0], cfg.batch_size)]
        attention = compute_attention(source, batches, num_classes=target.num_classes, progress=progress)
    return build_regularizer(spec.regularizer, model, source, cfg, attention)


def _loggers(cfg, log_dir, display_name):
    """(the in-memory Recorder, a VisualDL logger or None); a run shorter than
    the stats interval still records its last step."""
    interval = min(cfg.stats_interval, cfg.iterations)
    vdl = None
    if log_dir:
        from paddle_dtnh.integrations.visualdl import DTNHLogger

        vdl = DTNHLogger(log_dir, interval=interval, display_name=display_name)
    return Recorder(interval), vdl


class _Curve:
    """The evaluations of a run: train and test loss, test accuracy."""

    def __init__(self, model, train, target, cfg, loggers):
        self.model, self.train, self.loggers = model, train, loggers
        self.test = (to_tensor_batch(target.test.images[: cfg.max_test], cfg.image_size),
                     paddle.to_tensor(target.test.labels[: cfg.max_test]))
        self.values = {"iteration": [], "train_loss": [], "test_loss": [], "test_accuracy": []}

    def evaluate_at(self, it) -> float:
        train_loss, _ = evaluate(self.model, *self.train)
        test_loss, test_acc = evaluate(self.model, *self.test)
        for k, v in zip(self.values, (it, train_loss, test_loss, test_acc)):
            self.values[k].append(v)
        self.loggers.log_eval(it, test_loss, test_acc)
        return test_acc


class _HeldOut:
    """Where a holdout rule's images come from, step by step (a value of
    :data:`HOLDOUT_SOURCES`): fixed tensors ("extra", "budget"), the fold
    held out this step ("cross") or the batch the next step trains on ("next")."""

    def __init__(self, x_train, y_train, fixed=None, folds=None, peeks=False):
        self.x_train, self.y_train = x_train, y_train
        self.fixed, self.folds, self.peeks = fixed, folds, peeks
        self.upcoming = None  # "next": positions peeked before each step

    @classmethod
    def of(cls, cfg, target, train_idx, held_idx, x_train, y_train, seed):
        if cfg.holdout_source == "cross":  # folds of positions in the training set, one class share each
            return cls(x_train, y_train, folds=_cross_folds(target.train.labels[train_idx], cfg.holdout_per_class,
                                                              seed))
        if cfg.holdout_source == "next":
            return cls(x_train, y_train, peeks=True)
        fixed = (to_tensor_batch(target.train.images[held_idx], cfg.image_size),
                 paddle.to_tensor(target.train.labels[held_idx]))
        return cls(x_train, y_train, fixed=fixed)

    def at_step(self, step, every) -> None:
        if self.folds is not None:
            self.folds.at_step(step, every)

    def excluded(self):
        return self.folds.current_set if self.folds is not None else ()

    def peek(self, order, batch_size, n, rng):
        order, peeked = _peek_batch(order, batch_size, n, rng)
        self.upcoming = paddle.to_tensor(np.asarray(peeked))
        return order

    def images(self):
        if self.folds is not None:
            return self.x_train[self.folds.current], self.y_train[self.folds.current]
        if self.peeks:
            return self.x_train[self.upcoming], self.y_train[self.upcoming]
        return self.fixed

    def loss_of(self, model):
        """The ``holdout=`` callable: the model's loss on this step's held-out images."""
        def holdout_loss():
            x, y = self.images()
            return F.cross_entropy(model(x), y)

        return holdout_loss


def _peek_batch(order, batch_size, n, rng):
    """The batch :func:`_next_batch` draws next from ``order`` (no exclusions),
    without taking it; returns (the order, extended by a permutation when too
    few are left, so the draw finds the same positions; the batch)."""
    order = list(order)
    while len(order) < batch_size:
        order += [int(i) for i in rng.permutation(n)]
    return order, order[:batch_size]


def _next_batch(order, batch_size, n, rng, exclude=()):
    """The next ``batch_size`` positions of the shuffled ``order`` that are not
    in ``exclude`` (a new permutation is appended when too few are left);
    returns (batch, the rest of the order)."""
    order = list(order)
    while sum(1 for i in order if i not in exclude) < batch_size:
        order += [int(i) for i in rng.permutation(n)]
    batch, rest = [], []
    for i in order:
        (batch if len(batch) < batch_size and i not in exclude else rest).append(i)
    return batch, rest


class _Folds:
    """Cross-fitting: positions of the training set split into folds holding
    ``per_class`` images of every class; the fold held out rotates."""

    def __init__(self, folds):
        self.folds = folds
        self.index = 0

    @property
    def current(self):
        return paddle.to_tensor(np.asarray(self.folds[self.index]))

    @property
    def current_set(self):
        return set(self.folds[self.index])

    def at_step(self, step, every):
        self.index = ((step - 1) // every) % len(self.folds)


def _cross_folds(labels, per_class, seed) -> _Folds:
    rng = np.random.default_rng(seed + 104729)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    n = min(len(pos) for pos in by_class) // per_class
    if n < 2:
        raise ValueError(f"Cross-fitting needs at least 2 folds of {per_class} images per class.")
    return _Folds([[int(i) for pos in by_class for i in pos[f * per_class:(f + 1) * per_class]] for f in range(n)])


def source_distance(model, source) -> float:
    """||w_S - w_S0|| over the trainable parameters the target shares with
    the source (the new head excluded), paired as the regularizers pair them."""
    shared = match_source(model, source, head=[head_of(model)], strict=False).shared
    return math.sqrt(sum(float(((p - ref) ** 2).sum()) for _, p, ref in shared))


def summarize_diagnostics(diagnostics: dict) -> dict:
    """Means over a run's logged steps of the diagnostics the tables show
    (None where no step was logged)."""
    def mean(key):
        values = [v for v in diagnostics.get(key, []) if not math.isnan(v)]
        return float(np.mean(values)) if values else None

    return {"conflict_rate": mean("conflict"), "mean_angle1": mean("angle1"), "mean_angle3": mean("angle3"),
            "mean_reg_removed": mean("reg_removed"), "mean_blocks_in_conflict": mean("blocks_in_conflict")}


class RunStore:
    """Finished runs in a JSON-lines file, keyed by their settings, so an
    interrupted benchmark resumes where it stopped (a line cut by a crash is
    dropped and its run redone).

    Examples:
        .. code-block:: python

            >>> import os, tempfile
            >>> from lab import RunStore
            >>> store = RunStore(os.path.join(tempfile.mkdtemp(), "runs.jsonl"))
            >>> key = store.key("l2sp", 0, {"lam": 1.0})
            >>> store.add({"key": key, "test_accuracy": 0.5})
            >>> key in RunStore(store.path).runs
            True
    """

    @staticmethod
    def merged(folder: str) -> dict:
        """key -> run, over every ``runs*.jsonl`` in ``folder`` (the files of
        several workers sharing one benchmark)."""
        runs = {}
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.startswith("runs") and name.endswith(".jsonl"):
                    runs.update(RunStore(os.path.join(folder, name)).runs)
        return runs

    def __init__(self, path: str):
        self.path = path
        self.runs = {}
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        run = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(run, dict) and "key" in run:
                        self.runs[run["key"]] = run

    @staticmethod
    def key(*settings) -> str:
        """A short hash of JSON-serialisable settings."""
        blob = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def add(self, run: dict) -> None:
        """Append ``run`` (which holds its ``key``) and flush it to disk."""
        self.runs[run["key"]] = run
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        cut = False  # a line cut by a crash has no newline: the next run must not join it
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with open(self.path, "a") as f:
            f.write(("\n" if cut else "") + json.dumps(run) + "\n")
            f.flush()
            os.fsync(f.fileno())


def goal_text(cell, vanilla, finetune, is_vanilla=False) -> str:
    """How a conflict rule meets the goal on one setting; each argument maps
    seed -> run.

    The goal: the rule's accuracy >= max(fine-tuning, vanilla) - 1 SE of the
    paired per-seed differences ("meets" / "misses"); beside it, where
    vanilla is below fine-tuning, the share of the gap recovered, and where
    it is above, the share of its gain kept (both goals: >= 80%). "no gap
    beyond noise" where the gap or gain is within one standard error of the
    paired vanilla - fine-tuning differences. Means over the seeds all three have.

    Examples:
        .. code-block:: python

            >>> from lab import goal_text
            >>> runs = lambda *acc: {s: {"test_accuracy": a} for s, a in enumerate(acc)}
            >>> goal_text(runs(0.78, 0.80), runs(0.70, 0.71), runs(0.80, 0.81))
            'misses (-1.5 ± 0.5 pt vs best); recovers 85% of a 10.0-pt gap'
    """
    seeds = sorted(set(cell) & set(vanilla) & set(finetune))
    if is_vanilla or not seeds:
        return ""
    acc = lambda runs: np.array([100 * runs[s]["test_accuracy"] for s in seeds])
    sem_of = lambda x: x.std(ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else float("inf")
    gap = acc(vanilla) - acc(finetune)  # < 0: the regularizer hurts
    mean_gap, sem = gap.mean(), sem_of(gap)
    best = acc(vanilla) if mean_gap > 0 else acc(finetune)  # the better baseline, per the means
    to_best = acc(cell) - best
    verdict = "meets" if to_best.mean() >= -sem_of(to_best) else "misses"
    head = f"{verdict} ({to_best.mean():+.1f} ± {sem_of(to_best):.1f} pt vs best)"
    if abs(mean_gap) <= sem:  # a share of noise means nothing
        return f"{head}; no gap beyond noise ({mean_gap:+.1f} ± {sem:.1f} pt)"
    share = (acc(cell) - acc(finetune)).mean() / mean_gap
    if mean_gap < 0:  # recovered share of the gap: 1 - remaining gap / gap
        return f"{head}; recovers {100 * (1 - share):.0f}% of a {-mean_gap:.1f}-pt gap"
    return f"{head}; keeps {100 * share:.0f}% of a {mean_gap:.1f}-pt gain"
