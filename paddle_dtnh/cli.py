"""``paddle-dtnh``: the library's command line.

    paddle-dtnh fit --data DIR --weights W.pdparams [--weights W2 ...] [--arch resnet18] [--head fc]
                    [--image-size 32] [--json]

``fit`` runs the source-fit test (:func:`paddle_dtnh.source_fit`) of each
source on an image folder ``DIR/<class>/<image>`` (the target's training
images) and prints the scores, the advantage's standard error, the outcome
and the preset ``DTNH(preset="auto")`` would run; several sources are ranked
best first. A source is a ``.pdparams`` file, ``resnet18`` (ImageNet
weights, downloaded), ``resnet18_vd_imagenet`` or a PaddleHub module
directory (:func:`paddle_dtnh.integrations.hub.load_source`). Bad input is
one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paddle-dtnh", description="paddle_dtnh's command line.")
    commands = p.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="does a source fit a target? the test before training, per source",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("--data", required=True, metavar="DIR", help="the target's training images, DIR/<class>/<image>")
    fit.add_argument("--weights", required=True, action="append", metavar="SOURCE",
                     help="a .pdparams file, resnet18, resnet18_vd_imagenet or a PaddleHub module directory; "
                          "repeat to rank several sources")
    fit.add_argument("--arch", choices=("resnet18", "resnet18_vd"), help="the sources' architecture (checked against the weights; "
                                                  "default: detected)")
    fit.add_argument("--head", help="the source's classifier layer (default: the architecture's, fc or out)")
    fit.add_argument("--image-size", type=int, default=32, help="images are resized to this (default: 32)")
    fit.add_argument("--mean", type=float, default=0.5, help="normalisation: (x/255 - mean) / std (default: 0.5)")
    fit.add_argument("--std", type=float, default=0.5, help="(default: 0.5)")
    fit.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _score(spec, images, labels, num_classes, args):
    from .integrations.hub import load_source
    from .transferability import source_fit

    loaded = load_source(spec, num_classes)
    if args.arch and loaded.architecture != args.arch:
        raise ValueError(f"{spec} holds {loaded.architecture} weights, not --arch {args.arch}.")
    head = args.head or loaded.head
    report = source_fit(loaded.source, images, labels, head=head)
    return loaded.architecture, report


def _fit(args) -> int:
    from .data import read_image_folder, to_tensor_batch

    if args.image_size <= 0:
        raise ValueError(f"--image-size must be positive, got {args.image_size}.")
    images, labels, classes = read_image_folder(args.data, size=args.image_size, name=args.data)
    if len(classes) < 2:
        raise ValueError(f"{args.data} has {len(classes)} class folder ({classes[0]!r}): the test compares how "
                         "well features separate classes, so it needs at least 2.")
    x = to_tensor_batch(images, args.image_size, mean=args.mean, std=args.std)
    entries = []
    for spec in args.weights:
        arch, report = _score(spec, x, labels, len(classes), args)
        decision = report.decision
        entries.append({"source": spec, "architecture": arch, "advantage": report.advantage,
                        "advantage_se": report.advantage_se, "logme_advantage": report.logme_advantage,
                        "source_score": report.source_score, "random_score": report.random_score,
                        "outcome": decision.outcome, "preset": decision.preset, "reason": decision.reason,
                        "stages": {s.name: {"advantage": s.advantage, "advantage_se": s.advantage_se}
                                   for s in report.stages},
                        "num_images": report.num_images, "num_classes": len(classes)})
    entries.sort(key=lambda e: e["advantage"], reverse=True)
    if args.json:
        print(json.dumps(entries if len(entries) > 1 else entries[0], indent=2))
        return 0
    print(f"{args.data}: {entries[0]['num_images']} images, {len(classes)} classes")
    for rank, e in enumerate(entries, 1):
        print(f"{rank}. {e['source']} ({e['architecture']}): LOO ridge accuracy {e['source_score']:.3f} vs "
              f"{e['random_score']:.3f} (random), advantage {e['advantage']:+.3f} ± {e['advantage_se']:.3f} (SE), "
              f"LogME advantage {e['logme_advantage']:+.3f}")
        print(f"   {e['reason']} -> preset={e['preset']!r}" if e["preset"] != "off" else
              f"   {e['reason']} -> preset='auto' turns the pull off (fine-tune without it)")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``paddle-dtnh`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _fit(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"paddle-dtnh {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
