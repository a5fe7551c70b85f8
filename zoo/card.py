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


def input_size_for(module: Any, config: dict[str, Any]) -> tuple[int, ...]:
    """One input for counting multiply-adds: the segmenter's tile, else the data set's image size when the datamodule
    says (MNIST-like in-memory sets: 28x28; digits: 8x8), else 224x224."""
    c = int(getattr(module, "in_channels", 3))
    tile = (getattr(module, "hparams", {}) or {}).get("tile_size")
    if tile:
        return (1, c, tile, tile)
    data_class = str((config.get("data") or {}).get("class_path", ""))
    sizes = {"MNISTDataModule": 28, "FashionMNISTDataModule": 28, "DigitsDataModule": 8}
    side = next((s for name, s in sizes.items() if data_class.endswith("." + name) or data_class == name), 224)
    if getattr(module, "family", "") == "segmentation" and side == 224:
        side = 256
    return (1, c, side, side)


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
            "in_channels": getattr(module, "in_channels", None),
            "class_names": list(getattr(module, "class_names", []) or []),
            "parameters": total,
            "trainable_parameters": trainable,
        },
        "training": {
            "epoch": info.epoch,
            "global_step": info.global_step,
            "config_file": str(config_path) if config_path else None,
            "config": run_config or None,
            "hyper_parameters": hp,
        },
        "data": _data_section(run_config),
        "metrics": {"monitored": info.monitored_scores, "reports": _reports(ckpt)},
        "software": {
            "at_training": info.versions or {"pytorch_lightning": info.lightning_version},
            "now": software_versions(),
        },
        "git_commit": info.git_commit,
    }
    if macs:
        size = input_size_for(module, run_config or {})
        card["model"]["macs"] = {"input_size": list(size), "mult_adds": _mult_adds(module, size)}
    return card


def _mult_adds(module: Any, size: tuple[int, ...]) -> int | None:
    import torchinfo

    try:
        stats = torchinfo.summary(module.net, input_size=size, verbose=0, mode="eval", device="cpu")
    except Exception:  # noqa: BLE001  (an input the network cannot take: the card says unknown rather than failing)
        return None
    return int(stats.total_mult_adds)


def _data_section(config: dict[str, Any]) -> dict[str, Any] | None:
    data = config.get("data") if config else None
    if not data:
        return None
    args = data.get("init_args") or {}
    return {
        "class_path": data.get("class_path"),
        "data_dir": args.get("data_dir"),
        "split": {k: args[k] for k in _SPLIT_ARGS if k in args},
        "evaluated_on": "the datamodule's test split (test_dataloader)",
    }


def _reports(ckpt: Path) -> dict[str, Any]:
    """``metrics.json`` of the reports written beside this checkpoint (``report_<stem>_<DataModule>/``)."""
    found = {}
    for path in sorted(ckpt.parent.glob(f"report_{ckpt.stem}_*/metrics.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data = (summary.get("data") or {}).get("class_path") or path.parent.name
        found[data] = summary.get("metrics", {})
    return found


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
        f"- classes: {m['num_classes']} ({', '.join(map(str, m['class_names'][:20]))}"
        f"{', ...' if len(m['class_names']) > 20 else ''}); "
        f"input channels: {m['in_channels']}",
        f"- parameters: {m['parameters']:,} ({m['trainable_parameters']:,} trainable)",
    ]
    if "macs" in m:
        macs = m["macs"]["mult_adds"]
        lines.append(
            f"- multiply-adds for one {m['macs']['input_size']} input: "
            + (f"{macs / 1e6:,.2f} M" if macs is not None else "unknown")
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
