"""A checkpoint's model card: what it is, how it was trained, on what, how well it does, with what software.

    python -m zoo.card --ckpt runs/mnist_convnet/version_0/checkpoints/last.ckpt          # markdown
    python -m zoo.card --ckpt <ckpt> --json                                               # the same as data

Architecture and registry name, parameters (total / trainable) and multiply-adds for one input, the
training config (the run's ``config.yaml`` beside the checkpoint, or ``--config``; without one the
card says so and shows the checkpoint's hyperparameters), the data set and its split, metrics (the
``metrics.json`` of every report written beside the checkpoint by ``train.py test``, and the best
monitored score of the checkpoint callback), the software versions at training time (stored in the
checkpoint) and now, and the project's git commit at training time when known.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from zoo.core.checkpoint import (
    CheckpointError,
    find_run_config,
    load_zoo_module,
    read_checkpoint_info,
    software_versions,
)

# Split description of each datamodule argument that decides what is held out.
_SPLIT_ARGS = ("val_size", "test_size", "split_seed", "train_subset", "anomaly_class")


# Image side of the in-memory data sets whose datamodule neither takes nor states an image size.
_DATA_SIDES = {"MNISTDataModule": 28, "FashionMNISTDataModule": 28, "DigitsDataModule": 8}
_SIZE_ARGS = ("image_size", "crop_size")  # datamodule arguments that fix the size of the images a model sees


def _hparams(module: Any) -> dict[str, Any]:
    return dict(getattr(module, "hparams", {}) or {})


def _data_class(config: dict[str, Any]) -> tuple[str, type | None]:
    """``(class name, class or None)`` of the run config's datamodule (``("", None)`` without one)."""
    from zoo.core.checkpoint import import_class

    path = str((config.get("data") or {}).get("class_path") or "")
    if not path:
        return "", None
    try:
        return path.rpartition(".")[2], import_class(path)
    except ValueError:
        return path.rpartition(".")[2], None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def input_channels_for(module: Any, config: dict[str, Any]) -> tuple[int | None, str]:
    """``(channels, where they come from)`` of the images the model takes: the module's ``in_channels``, else its
    hyperparameter, else the datamodule's (its config or its class), else the network's first convolution;
    ``(None, why)`` when none of them says."""
    if (value := _int(getattr(module, "in_channels", None))) is not None:
        return value, f"{type(module).__name__}.in_channels"
    if (value := _int(_hparams(module).get("in_channels"))) is not None:
        return value, "the hyperparameter in_channels"
    args = (config.get("data") or {}).get("init_args") or {}
    if (value := _int(args.get("in_channels"))) is not None:
        return value, "the datamodule's in_channels (run config)"
    name, data_class = _data_class(config)
    if (value := _int(getattr(data_class, "in_channels", None))) is not None:
        return value, f"{name}.in_channels"
    net = getattr(module, "net", module)
    for layer_name, layer in net.named_modules():
        if isinstance(layer, torch.nn.modules.conv._ConvNd):
            return int(layer.in_channels), f"the network's first convolution ({layer_name})"
    return None, (
        "unknown: neither the module nor its hyperparameters set in_channels, "
        + ("the datamodule does not say, " if config.get("data") else "there is no run config naming the data, ")
        + "and the network has no convolution"
    )


def input_size_for(module: Any, config: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    """One input for counting multiply-adds, ``(1, C, H, W)``, at the size the model was configured or trained with,
    and where that size comes from: the segmenter's ``tile_size``, else a model's ``image_size`` (the detector's
    resize, a generative model's images), else a detector's own resize (``fixed_size``, or ``min_size`` square),
    else the datamodule's ``image_size`` / ``crop_size`` (training crops), else the data set's image size (MNIST-like
    in-memory sets: 28x28; digits: 8x8), else 224x224 (256 for a segmenter), said to be assumed. A GAN takes noise:
    ``(1, latent_dim)``."""
    known = input_channels_for(module, config)[0]
    channels = known or 3
    hp = _hparams(module)
    family = getattr(module, "family", "")
    if family == "generative" and not hasattr(getattr(module, "net", None), "encoder"):
        latent = _int(hp.get("latent_dim")) or _int(getattr(module, "latent_dim", None))
        if latent is not None:
            return (1, latent), "the generator's noise (latent_dim)"

    def square(width: int, source: str, height: int | None = None) -> tuple[tuple[int, ...], str]:
        note = "" if known else "; 3 channels assumed (in_channels unknown)"
        return (1, channels, height or width, width), source + note

    if (side := _int(hp.get("tile_size"))) is not None:
        return square(side, "the hyperparameter tile_size")
    if (side := _int(hp.get("image_size"))) is not None:
        return square(side, "the hyperparameter image_size")
    transform = getattr(getattr(module, "net", None), "transform", None)  # torchvision detectors resize inside
    fixed = getattr(transform, "fixed_size", None)
    if fixed:
        return square(int(fixed[0]), "the detector's fixed input size (transform.fixed_size)", int(fixed[1]))
    min_size = getattr(transform, "min_size", None)
    if min_size:
        side = int(min_size[-1] if isinstance(min_size, (tuple, list)) else min_size)
        return square(side, "the detector's resize (transform.min_size, a square image)")
    args = (config.get("data") or {}).get("init_args") or {}
    for key in _SIZE_ARGS:
        if (side := _int(args.get(key))) is not None:
            return square(side, f"the datamodule's {key} (run config)")
    name, data_class = _data_class(config)
    if (side := _int(getattr(data_class, "image_size", None))) is not None:
        return square(side, f"{name}.image_size")
    if name in _DATA_SIDES:
        return square(_DATA_SIDES[name], f"the {name} images")
    side = 256 if family == "segmentation" else 224
    where = "the data" if name else "a run config"
    return square(side, f"assumed: neither the hyperparameters nor {where} give a size")


def build_card(ckpt: str | Path, config: str | Path | None = None, macs: bool = True) -> dict[str, Any]:
    """The model card of a checkpoint as data (see the module docstring)."""
    import yaml

    ckpt = Path(ckpt)
    info = read_checkpoint_info(ckpt)
    module = load_zoo_module(ckpt)
    config_path = Path(config) if config else find_run_config(ckpt)
    if config_path is not None and not config_path.is_file():
        raise CheckpointError(f"config {config_path} does not exist. Fix: pass --config with the run's config.yaml.")
    run_config = yaml.safe_load(config_path.read_text()) if config_path else {}
    # the module's hyperparameters: those of an older checkpoint are read under their current names
    hp = {k: v for k, v in dict(module.hparams).items() if not k.startswith("_")}
    channels, channels_from = input_channels_for(module, run_config or {})
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    card: dict[str, Any] = {
        "checkpoint": str(ckpt.resolve()),
        "model": {
            "class_path": info.class_path,
            "family": getattr(module, "family", None),
            "registry_name": hp.get("network"),
            "network_class": type(getattr(module, "net", module)).__name__,
            "network_kwargs": hp.get("network_kwargs"),
            "num_classes": getattr(module, "num_classes", None),
            "in_channels": channels if channels is not None else "unknown",
            "in_channels_from": channels_from,
            "class_names": list(getattr(module, "class_names", []) or []),
            "parameters": total,
            "trainable_parameters": trainable,
            # the weights files the run's network started from (zoo.core.weight_sources records), [] when random
            "initial_weights": list(getattr(module, "initial_weights", []) or []),
        },
        "training": {
            "epoch": info.epoch,
            "global_step": info.global_step,
            "config_file": str(config_path) if config_path else None,
            "config": run_config or None,
            "hyper_parameters": hp,
        },
        "data": _data_section(run_config, ckpt),
        "metrics": {"monitored": info.monitored_scores, "reports": _reports(ckpt)},
        "software": {
            "at_training": info.versions or {"pytorch_lightning": info.lightning_version},
            "now": software_versions(),
        },
        "git_commit": info.git_commit,
    }
    if macs:
        size, size_from = input_size_for(module, run_config or {})
        counted, mult_adds, reason = _mult_adds(module, size)
        card["model"]["macs"] = {
            "input_size": list(size),
            "input_size_from": size_from,
            "counted": counted,
            "mult_adds": mult_adds,
            **({"unknown_because": reason} if reason else {}),
        }
    return card


def _mult_adds(module: Any, size: tuple[int, ...]) -> tuple[str, int | None, str | None]:
    """``(what was counted, multiply-adds, why unknown)`` of one forward pass of an input of ``size``: the network
    (``module.net``), or the module's own ``forward`` for generative models (reconstruction; a GAN's generator)."""
    import torchinfo

    generative = getattr(module, "family", "") == "generative"
    target = module if generative or not hasattr(module, "net") else module.net
    counted = f"{type(module).__name__}.forward" if target is module else f"{type(module.net).__name__} (module.net)"
    was_training = module.training
    try:
        stats = torchinfo.summary(target, input_size=size, verbose=0, mode="eval", device="cpu")
    except Exception as error:  # noqa: BLE001  (an input the network cannot take: the card says why, not failing)
        return counted, None, f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    finally:
        module.train(was_training)
    return counted, int(stats.total_mult_adds), None


def _data_section(config: dict[str, Any], ckpt: Path) -> dict[str, Any] | None:
    data = config.get("data") if config else None
    if not data:
        return None
    args = data.get("init_args") or {}
    return {
        "class_path": data.get("class_path"),
        "data_dir": args.get("data_dir"),
        "split": {k: args[k] for k in _SPLIT_ARGS if k in args},
        "evaluated_on": _evaluated_on(config, ckpt),
    }


def _evaluated_on(config: dict[str, Any], ckpt: Path) -> str:
    """What the test metrics were computed on: as the report of this data set said (``metrics.json``'s
    ``data.evaluated_on``), else as the datamodule class states it (``test_split_description``), else, for the
    segmentation folder datamodules (whose ``test_dataloader`` serves the validation images), that; else the test
    split."""
    path = str((config.get("data") or {}).get("class_path") or "")
    for summary in _report_summaries(ckpt):
        data = summary.get("data") or {}
        if data.get("class_path") == path and isinstance(data.get("evaluated_on"), str):
            return data["evaluated_on"]
    name, data_class = _data_class(config)
    stated = getattr(data_class, "test_split_description", None)
    if isinstance(stated, str) and stated:
        return stated
    folder_data = isinstance(data_class, type) and any(
        cls.__name__ == "SegmentationFolderDataModule" for cls in data_class.__mro__
    )  # by name: the library imports no datamodule
    if folder_data:
        return f"the validation images: {name} has no labelled test split, its test_dataloader serves them"
    return "the datamodule's test split (test_dataloader)"


def _report_summaries(ckpt: Path) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every report written beside this checkpoint (``report_<stem>_<DataModule>/``)."""
    found = []
    for path in sorted(ckpt.parent.glob(f"report_{ckpt.stem}_*/metrics.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            found.append({**summary, "_folder": path.parent.name})
    return found


def _reports(ckpt: Path) -> dict[str, Any]:
    """The metrics of the reports written beside this checkpoint, by data set."""
    return {
        (summary.get("data") or {}).get("class_path") or summary["_folder"]: summary.get("metrics", {})
        for summary in _report_summaries(ckpt)
    }


def render_markdown(card: dict[str, Any]) -> str:
    m, t = card["model"], card["training"]
    lines = [
        f"# Model card: {m['registry_name']} ({m['class_path']})",
        "",
        f"Checkpoint: `{card['checkpoint']}` (epoch {t['epoch']}, step {t['global_step']})",
        "",
        "## Architecture",
        "",
        f"- registry name: `{m['registry_name']}` (family {m['family']}), network class `{m['network_class']}`",
        f"- network arguments: {m['network_kwargs'] or 'defaults'}",
        f"- {_classes(m)}; input channels: {_channels(m)}",
        f"- parameters: {m['parameters']:,} ({m['trainable_parameters']:,} trainable)",
        f"- started from: {_initial_weights(m)}",
    ]
    if "macs" in m:
        macs = m["macs"]
        shape = "x".join(map(str, macs["input_size"]))
        side = f"{macs['input_size'][-2]}x{macs['input_size'][-1]} px" if len(macs["input_size"]) == 4 else "noise"
        lines.append(
            f"- multiply-adds of {macs.get('counted', 'the network')} for one {shape} input ({side}; size: "
            f"{macs.get('input_size_from', 'defaults')}): "
            + (
                f"{macs['mult_adds'] / 1e6:,.2f} M"
                if macs["mult_adds"] is not None
                else f"unknown ({macs.get('unknown_because', 'not counted')})"
            )
        )
    lines += ["", "## Data", ""]
    data = card["data"]
    if data:
        lines += [
            f"- data set: `{data['class_path']}` (data_dir: {data['data_dir'] or 'default ($ZOO_DATA_DIR)'})",
            f"- split: {data['split'] or 'the datamodule defaults'}; metrics below are on {data['evaluated_on']}",
        ]
    else:
        lines.append("- unknown: no config.yaml beside the checkpoint (pass --config)")
    lines += ["", "## Metrics", ""]
    for monitor, score in card["metrics"]["monitored"].items():
        lines.append(f"- best {monitor} during training: {score:.4f}")
    for data_name, metrics in card["metrics"]["reports"].items():
        shown = {k: v for k, v in metrics.items() if "/acc_class/" not in k}  # per-class numbers: in the report
        lines.append(
            f"- test on `{data_name}`: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None)
        )
    if not card["metrics"]["monitored"] and not card["metrics"]["reports"]:
        lines.append("- none recorded (run `python train.py test --config <config> --ckpt_path <ckpt>`)")
    lines += ["", "## Training config", ""]
    if t["config"]:
        import yaml

        lines += [
            f"From `{t['config_file']}`:",
            "",
            "```yaml",
            yaml.safe_dump(t["config"], sort_keys=False).rstrip(),
            "```",
        ]
    else:
        lines += [
            "No config.yaml found; the checkpoint's hyperparameters:",
            "",
            "```json",
            json.dumps(t["hyper_parameters"], indent=2, default=str),
            "```",
        ]
    software = card["software"]
    lines += [
        "",
        "## Software",
        "",
        "- at training: " + ", ".join(f"{k} {v}" for k, v in software["at_training"].items()),
        "- now: " + ", ".join(f"{k} {v}" for k, v in software["now"].items()),
        f"- git commit at training: {card['git_commit'] or 'unknown'}",
        "",
    ]
    return "\n".join(lines)


def _initial_weights(model: dict[str, Any]) -> str:
    records = model.get("initial_weights") or []
    if not records:
        return "random initialisation (or a checkpoint written before the zoo recorded initial weights)"
    parts = []
    for r in records:
        where = r.get("name") or r.get("url") or r.get("path")
        extra = f" from {r['url']}" if r.get("name") and r.get("url") else ""
        parts.append(f"`{where}`{extra} (sha256 {r.get('sha256')})")
    return "; ".join(parts)


def _channels(model: dict[str, Any]) -> str:
    source = model.get("in_channels_from") or "the checkpoint"
    if model["in_channels"] in (None, "unknown"):
        return source if source.startswith("unknown") else f"unknown ({source})"
    return f"{model['in_channels']} (from {source})"


def _classes(model: dict[str, Any]) -> str:
    names = model["class_names"]
    if model["num_classes"] is None:
        return f"classes: none (a {model['family'] or 'model'} model without classes)"
    shown = ", ".join(map(str, names[:20])) + (", ..." if len(names) > 20 else "")
    return f"classes: {model['num_classes']} ({shown or 'no names'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.card", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the checkpoint (.ckpt)")
    parser.add_argument("--config", help="the run's config.yaml (default: found beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds (a forward pass)")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():
            card = build_card(args.ckpt, args.config, macs=not args.no_macs)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(card, indent=2, default=str) if args.json else render_markdown(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
