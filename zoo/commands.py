"""What ``python train.py --help`` prints: the subcommands and the zoo's other tools, without importing Lightning
or torch (a few milliseconds instead of seconds). ``python train.py <subcommand> --help`` is LightningCLI's own
help, with every option; ``tests/test_cli_startup.py`` checks that :data:`SUBCOMMANDS` are LightningCLI's."""

from __future__ import annotations

SUBCOMMANDS = {
    "fit": "train (and validate) a model: python train.py fit --config configs/<family>/<name>.yaml",
    "validate": "one pass over the validation split, e.g. of a checkpoint (--ckpt_path)",
    "test": "evaluate a checkpoint on the test split: metrics and a report beside the checkpoint",
    "predict": "run a checkpoint on the predict split: predictions written beside the checkpoint",
}

TOOLS = {
    "python -m zoo.card --ckpt CKPT": "model card: parameters, MACs at the trained input size, data, metrics",
    "python -m zoo.export --ckpt CKPT --format onnx": "export to ONNX or TorchScript, checked against PyTorch",
    "python -m zoo.interpret grad-cam --ckpt CKPT --images a.png": "saliency, Grad-CAM, occlusion and 16 other "
    "methods (python -m zoo.interpret --help)",
    "python -m zoo.classification.distill --teacher CKPT --output FILE": "a teacher's logits for black-box "
    "distillation",
    "python -m zoo.evaluation.fid_features": "train the classifier whose features FID uses",
}


def overview(prog: str = "train.py") -> str:
    """The text of ``python train.py --help``."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        f"usage: python {prog} {{{','.join(SUBCOMMANDS)}}} --config CONFIG [--key value ...] [--debug]",
        "",
        "Train, validate, test or predict with any model and datamodule of vision-zoo (LightningCLI).",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {what}" for name, what in SUBCOMMANDS.items()),
        "",
        f"Every option of a subcommand: python {prog} fit --help (or validate, test, predict).",
        "A value given on the command line (--model.init_args.network resnet20) overrides the config's.",
        "A mistake in what you give is one paragraph with the fix (exit code 2); --debug shows the traceback.",
        "",
        "other tools:",
        *(f"  {command}\n      {what}" for command, what in TOOLS.items()),
    ]
    return "\n".join(lines)


def is_overview_request(words: list[str]) -> bool:
    """``train.py``, ``train.py -h`` or ``train.py --help``: no subcommand asked for."""
    return words in ([], ["-h"], ["--help"])
