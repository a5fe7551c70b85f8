"""``python -m zoo.classification.distill --teacher t.ckpt --data MNISTDataModule --output logits.pt``: write a
teacher's logits on a datamodule's official training split, for black-box distillation
(``DistillationClassifier(teacher_logits=...)``; see :mod:`zoo.classification.distill`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import yaml

from zoo.classification.distill import write_teacher_logits
from zoo.core.checkpoint import import_class


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _datamodule_class(name: str) -> type:
    if "." in name:
        return import_class(name)
    import datamodules

    found = getattr(datamodules, name, None)
    if found is None:
        raise SystemExit(f"Unknown datamodule {name!r}; the zoo has: {', '.join(datamodules.__all__)}")
    return found


def main(argv: list[str] | None = None) -> Path:
    """``python -m zoo.classification.distill --teacher a.ckpt --data MNISTDataModule --output logits.pt``"""
    parser = argparse.ArgumentParser(
        prog="python -m zoo.classification.distill",
        description="Write a teacher's logits on a datamodule's official training split, for black-box "
        "distillation (DistillationClassifier(teacher_logits=...)).",
    )
    parser.add_argument("--teacher", required=True, help="zoo classifier checkpoint (.ckpt) of the teacher")
    parser.add_argument("--data", default="MNISTDataModule",
                        help="datamodule class: a name from `datamodules` or a dotted path")
    parser.add_argument("--data-dir", default=None, help="the datamodule's data_dir (default: $ZOO_DATA_DIR)")
    parser.add_argument("--output", required=True, help="file to write (torch.save format)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                        help="another datamodule argument, e.g. --arg train_subset=1000 (repeatable)")
    parser.add_argument("--only-used", action="store_true",
                        help="only the rows of the training and validation images the datamodule uses")
    args = parser.parse_args(argv)
    cls = _datamodule_class(args.data)
    kwargs = dict(args.arg)
    if args.data_dir is not None:
        kwargs["data_dir"] = args.data_dir
    datamodule = cls(**kwargs)
    path = write_teacher_logits(args.teacher, datamodule, args.output, args.batch_size, args.device,
                                only_used=args.only_used)
    print(f"Wrote the teacher's logits for {cls.__name__}'s training split to {path}")
    return path


if __name__ == "__main__":
    main()
