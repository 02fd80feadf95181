"""Transfer experiments: method registry, cached source pretraining, one run.

Shared by ``demo/transfer.py`` and ``benchmarks/transfer_matrix.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import paddle
import paddle.nn.functional as F

from . import files
from .attention import compute_attention
from .checkpoint import load_checkpoint, save_checkpoint
from .data import ImageSet, few_shot_indices, load_dataset, to_tensor_batch
from .distributed import rank, world_size
from .architectures import ARCHITECTURES, head_of, target_from
from .optimizer import DTNH
from .presets import PRESETS, resolve_preset
from .stats import DIAGNOSTIC_KEYS, LoggerGroup, StepLogger
from .regularizers import DELTA, L2, L2SP, KnowDist

__all__ = ["METHODS", "CONFLICT_RULES", "MethodSpec", "method_spec", "RunConfig", "pretrain_source",
           "run_transfer", "build_regularizer", "Recorder", "RunStore", "summarize_diagnostics", "goal_text"]


#: regularizers a method can use, with their display names
REGULARIZERS = {"l2": "Fine-tuning", "l2sp": "L2-SP", "knowdist": "KnowDist", "delta": "DELTA"}

#: conflict rules a DTNH method can name after "@": the presets, and the
#: candidates screened by benchmarks/lam_sweep.py (DTNH keyword arguments)
CONFLICT_RULES = {
    **{name: {"preset": name} for name in PRESETS},
    "global_drop": dict(granularity="global", rule="drop", reference="batch"),
    "layer_project": dict(granularity="layer", rule="project", reference="batch"),
    "layer_drop": dict(granularity="layer", rule="drop", reference="batch"),
    "coordinate": dict(granularity="coordinate", reference="batch"),
    "layer_drop_ema": dict(granularity="layer", rule="drop", reference="ema"),
    "coordinate_ema": dict(granularity="coordinate", reference="ema"),
}
# the kept pull capped at ||gJ|| (max_reg_ratio) after the paper's rule or after layer_drop_ema
CONFLICT_RULES["paper_cap"] = {**PRESETS["paper"], "max_reg_ratio": 1.0}
CONFLICT_RULES["layer_drop_ema_cap"] = {**CONFLICT_RULES["layer_drop_ema"], "max_reg_ratio": 1.0}


@dataclass(frozen=True)
class MethodSpec:
    regularizer: str  # a key of REGULARIZERS
    project: bool
    rule: str | None  # a key of CONFLICT_RULES when project
    label: str

    @property
    def dtnh_options(self) -> dict:
        return dict(CONFLICT_RULES[self.rule]) if self.project else {"project": False}

    @property
    def resolved_options(self) -> dict:
        """The options with a preset spelled out: what a stored run is keyed
        by, so redefining a preset never reuses its stale runs."""
        options = self.dtnh_options
        if "preset" in options:
            options = resolve_preset(options.pop("preset"), **options)
        return options


def method_spec(name: str) -> MethodSpec:
    """Parse a method name: ``finetune``, ``<reg>`` (the regularizer without
    projection), or ``dtnh_<reg>[@<rule>]`` (DTNH with a rule of
    :data:`CONFLICT_RULES`; default: the paper's).

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.experiment import method_spec
            >>> method_spec("dtnh_l2sp@never_hurt").label
            'DTNH never_hurt (L2-SP)'
    """
    if name == "finetune":
        return MethodSpec("l2", False, None, REGULARIZERS["l2"])
    base, _, rule = name.partition("@")
    project = base.startswith("dtnh_")
    reg = base[len("dtnh_"):] if project else base
    valid_reg = reg in REGULARIZERS and reg != "l2"
    if not valid_reg or (rule and not project) or (rule and rule not in CONFLICT_RULES):
        raise ValueError(
            f"Unknown method {name!r}; expected finetune, <reg> or dtnh_<reg>[@<rule>] with <reg> "
            f"in {[r for r in REGULARIZERS if r != 'l2']} and <rule> in {list(CONFLICT_RULES)}."
        )
    rule = rule or "paper" if project else None
    if not project:
        return MethodSpec(reg, False, None, REGULARIZERS[reg])
    label = f"DTNH ({REGULARIZERS[reg]})" if rule == "paper" else f"DTNH {rule} ({REGULARIZERS[reg]})"
    return MethodSpec(reg, True, rule, label)


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


@dataclass
class RunConfig:
    """Hyper-parameters of one fine-tuning run (defaults: the offline demo)."""

    arch: str = "resnet18"  # a key of paddle_dtnh.architectures.ARCHITECTURES
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


def _config_key(blob: dict) -> str:
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _progress(total, desc, enabled=True):
    """A progress bar on a terminal only (none in a log file)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True)


def _augment(x, rng, flip=False):
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
    if world_size() > 1:  # rank 0 trains and writes the cache; the others then read it
        import paddle.distributed as dist

        if rank() == 0 and not os.path.isfile(path):
            _pretrain(path, settings, data_root, progress)
        dist.barrier()
        return path
    if os.path.isfile(path):
        return path
    _pretrain(path, settings, data_root, progress)
    return path


def _pretrain(path, settings, data_root, progress, checkpoint_every=100):
    """Train the source; every ``checkpoint_every`` steps the run is saved
    beside ``path`` (``.partial``) and resumed from there after a crash."""
    dataset, image_size, epochs = settings["dataset"], settings["image_size"], settings["epochs"]
    batch_size, lr, max_images, seed = (settings[k] for k in ("batch_size", "lr", "max_images", "seed"))
    cache_dir = os.path.dirname(path)
    os.makedirs(cache_dir, exist_ok=True)
    data = load_dataset(dataset, root=data_root)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data.train.labels))[:max_images]
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
        opt = DTNH(inner, None, lam=0.0, model=model)  # its state_dict resumes by structured names
    partial = path + ".partial"
    done, seconds, order = 0, 0.0, None
    if os.path.isfile(partial):
        extra = load_checkpoint(partial, model, opt)
        done, seconds, order = extra["step"], extra["seconds"], np.asarray(extra["order"])
        rng.bit_generator.state = extra["rng"]  # the schedule came back with the optimizer
    start = time.time() - seconds
    model.train()
    with _progress(steps, f"pretraining source on {dataset}", progress) as bar:
        bar.update(done)
        while done < steps:
            if done % per_epoch == 0:  # a resumed run restored the order of its epoch
                order = rng.permutation(len(idx))
            lo = (done % per_epoch) * batch_size
            b = paddle.to_tensor(order[lo : lo + batch_size])
            loss = F.cross_entropy(model(_augment(x_all[b], rng)), y_all[b])
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
    acc = _evaluate(model, to_tensor_batch(data.test.images[:2000], image_size),
                    paddle.to_tensor(data.test.labels[:2000]))[1]
    files.save(model.state_dict(), path)
    with open(path[: -len(".pdparams")] + ".json", "w") as f:
        json.dump({**settings, "train_seconds": time.time() - start, "test_accuracy": acc}, f, indent=2)
    if os.path.isfile(partial):
        os.remove(partial)


@paddle.no_grad()
def _evaluate(model, x, y, batch=250):
    """Mean cross-entropy and accuracy of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    losses, correct = [], 0
    with paddle.no_grad():  # no graph to record
        for lo in range(0, x.shape[0], batch):
            logits = model(x[lo : lo + batch])
            losses.append(F.cross_entropy(logits, y[lo : lo + batch], reduction="sum"))
            correct += int((logits.argmax(axis=1) == y[lo : lo + batch]).astype("int64").sum())
    if was_training:
        model.train()
    return float(paddle.add_n(losses)) / x.shape[0], correct / x.shape[0]


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


def build_regularizer(kind: str, model, source, cfg: RunConfig, attention=None):
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
    # data parallel (paddle.distributed.launch): every rank draws the same
    # global batch and trains on its share; DTNH averages the gradients
    world, me = world_size(), rank()
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world} data-parallel ranks.")
    start = time.time()
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    train_idx = few_shot_indices(target.train.labels, cfg.per_class, seed)
    x_train = to_tensor_batch(target.train.images[train_idx], cfg.image_size)
    y_train = paddle.to_tensor(target.train.labels[train_idx])
    test = (to_tensor_batch(target.test.images[: cfg.max_test], cfg.image_size),
            paddle.to_tensor(target.test.labels[: cfg.max_test]))

    state = files.read_state_dict(source_path)
    arch = ARCHITECTURES[cfg.arch]
    if arch.num_classes(state) is None:
        raise ValueError(f"{source_path} holds no {arch.name} weights (no {arch.head}.weight); "
                         f"pass --arch matching the source.")
    source = arch.build(arch.num_classes(state))
    source.set_state_dict(state)
    model = target_from(source, target.num_classes)

    batches = [(x_train[i : i + cfg.batch_size], y_train[i : i + cfg.batch_size])
               for i in range(0, len(train_idx), cfg.batch_size)]
    attention = None
    if spec.regularizer == "delta":
        attention = compute_attention(source, batches, num_classes=target.num_classes, progress=progress)
    reg = build_regularizer(spec.regularizer, model, source, cfg, attention)
    schedule = paddle.optimizer.lr.PiecewiseDecay(
        [max(1, int(cfg.lr_drop_at * cfg.iterations))], [cfg.lr, cfg.lr * 0.1])
    inner = paddle.optimizer.Momentum(schedule, momentum=cfg.momentum, parameters=model.parameters())
    # a run shorter than the interval still records its last step
    stats_interval = min(cfg.stats_interval, cfg.iterations)
    vdl = None
    if log_dir and me == 0:
        from .visualdl import DTNHLogger

        vdl = DTNHLogger(log_dir, interval=stats_interval, display_name=f"{method}/seed{seed}")
    recorder = Recorder(stats_interval)
    loggers = LoggerGroup([recorder, vdl])
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    opt = DTNH(inner, reg, lam=cfg.lam[spec.regularizer], lam_decay=cfg.lam_decay,
               steps_per_epoch=steps_per_epoch, logger=loggers, **spec.dtnh_options)

    curve = {"iteration": [], "train_loss": [], "test_loss": [], "test_accuracy": []}

    def evaluate(it):
        train_loss, _ = _evaluate(model, x_train, y_train)
        test_loss, test_acc = _evaluate(model, *test)
        for k, v in zip(curve, (it, train_loss, test_loss, test_acc)):
            curve[k].append(v)
        loggers.log_eval(it, test_loss, test_acc)
        return test_acc

    order, first = [], 1
    if checkpoint and os.path.isfile(checkpoint):
        state = load_checkpoint(checkpoint, model, opt)
        first, order = state["iteration"] + 1, list(state["order"])
        rng.bit_generator.state = state["rng"]
        curve.update({k: list(v) for k, v in state["curve"].items()})
        recorder.steps, recorder.values = list(state["logged_steps"]), {k: list(v) for k, v in state["logged"].items()}
    else:
        evaluate(0)
    model.train()
    with _progress(cfg.iterations, f"{spec.label} (seed {seed})", progress and me == 0) as bar:
        bar.update(first - 1)
        for it in range(first, cfg.iterations + 1):
            if len(order) < cfg.batch_size:
                order = list(rng.permutation(len(train_idx)))
            share = order[: cfg.batch_size][me * cfg.batch_size // world : (me + 1) * cfg.batch_size // world]
            b = paddle.to_tensor(np.asarray(share))
            order = order[cfg.batch_size :]
            x = x_train[b]
            if cfg.augment:
                x = _augment(x, rng, cfg.flip)
            logits, omega = reg.run(x)
            opt.update(F.cross_entropy(logits, y_train[b]), omega)
            schedule.step()
            if it % cfg.eval_interval == 0 or it == cfg.iterations:
                acc = evaluate(it)
                bar.set_postfix(test_acc=f"{acc:.3f}")
            if checkpoint and cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations \
                    and me == 0:
                save_checkpoint(checkpoint, model, opt, iteration=it, order=[int(i) for i in order],
                                rng=rng.bit_generator.state, curve=curve, logged_steps=recorder.steps,
                                logged=recorder.values)
            bar.update(1)
    if vdl is not None:
        vdl.close()
    if checkpoint and me == 0 and os.path.isfile(checkpoint):
        os.remove(checkpoint)  # the run is complete: its result is what counts now
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": curve["test_accuracy"][-1],
        "test_loss": curve["test_loss"][-1],
        "skipped_steps": opt.skipped_steps,
        "curve": curve,
        "diagnostics": {"step": recorder.steps, **recorder.values},
        "seconds": time.time() - start,
        "config": asdict(cfg),
    }


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
            >>> from paddle_dtnh.experiment import RunStore
            >>> store = RunStore(os.path.join(tempfile.mkdtemp(), "runs.jsonl"))
            >>> key = store.key("l2sp", 0, {"lam": 1.0})
            >>> store.add({"key": key, "test_accuracy": 0.5})
            >>> key in RunStore(store.path).runs
            True
    """

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
        with open(self.path, "a") as f:
            f.write(json.dumps(run) + "\n")
            f.flush()
            os.fsync(f.fileno())


def goal_text(cell, vanilla, finetune, is_vanilla=False) -> str:
    """How a conflict rule meets the README's goal on one setting; each
    argument maps seed -> run.

    Where vanilla is below fine-tuning: the share of the gap recovered
    (goal >= 50%); where it is above: the share of its gain kept (goal >= 80%).
    Means over the seeds all three have; "no gap beyond noise" where the gap
    or gain is within one standard error of the paired vanilla - fine-tuning
    differences.

    Examples:
        .. code-block:: python

            >>> from paddle_dtnh.experiment import goal_text
            >>> runs = lambda *acc: {s: {"test_accuracy": a} for s, a in enumerate(acc)}
            >>> goal_text(runs(0.78, 0.80), runs(0.70, 0.71), runs(0.80, 0.81))
            'recovers 85% of a 10.0-pt gap'
    """
    seeds = sorted(set(cell) & set(vanilla) & set(finetune))
    if is_vanilla or not seeds:
        return ""
    acc = lambda runs: np.array([100 * runs[s]["test_accuracy"] for s in seeds])
    gap = acc(vanilla) - acc(finetune)  # < 0: the regularizer hurts
    mean_gap = gap.mean()
    sem = gap.std(ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else float("inf")
    if abs(mean_gap) <= sem:  # a share of noise means nothing
        return f"no gap beyond noise ({mean_gap:+.1f} ± {sem:.1f} pt)"
    share = (acc(cell) - acc(finetune)).mean() / mean_gap
    if mean_gap < 0:  # recovered share of the gap: 1 - remaining gap / gap
        return f"recovers {100 * (1 - share):.0f}% of a {-mean_gap:.1f}-pt gap"
    return f"keeps {100 * share:.0f}% of a {mean_gap:.1f}-pt gain"
