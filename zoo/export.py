"""Export a checkpoint's network to ONNX or TorchScript, with its input spec and a parity check.

    python -m zoo.export --ckpt runs/mnist_convnet/version_0/checkpoints/last.ckpt --format onnx
    python -m zoo.export --ckpt <ckpt> --format torchscript --output model.pt

Writes the model file and, beside it, ``<file>.json``: the input spec (name, shape with a dynamic batch,
dtype, normalization, class names), the output spec, and the parity report: the exported model run (ONNX:
onnxruntime; TorchScript: ``torch.jit.load``) on a real test image of the run's data set against PyTorch,
max abs difference and tolerance (1e-4 for classifiers, 1e-3 for segmenters, whose logits are larger and
whose deep decoders accumulate more float error). The test image comes from the datamodule of the run's
``config.yaml`` (found beside the checkpoint, or ``--config``).

What is exported: a classifier's network's logits (as ``ImageClassifier.forward``); a segmenter's *network* on one
tile (``SemanticSegmenter.net``: the overlap-tiling around it is Python control flow, so the input is the
network's tile, e.g. 572x572 -> 388x388 for the paper's valid U-Net). ONNX is tried with the TorchScript-based
exporter first (fast) and then with the ``torch.export`` one (handles e.g. adaptive pooling to sizes that do
not divide the input). A model that cannot be exported gets ``"exported": false`` and the reason in the JSON
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from zoo.utils.checkpoint import CheckpointError, class_path, find_run_config, load_zoo_module, software_versions

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18
TOLERANCE = {"classification": 1e-4, "segmentation": 1e-3}


class ExportError(RuntimeError):
    """A model that cannot be exported in the asked format (the message says why)."""


class _Logits(nn.Module):
    """The tensor to export: a classifier's logits, or a segmentation network's main logits (no aux head)."""

    def __init__(self, module: nn.Module, family: str) -> None:
        super().__init__()
        # the plain network, not the LightningModule: tracing a LightningModule reaches for its trainer
        self.inner = module.net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.inner(image)
        return out if isinstance(out, torch.Tensor) else out[0]


def model_family(module: nn.Module) -> str:
    family = getattr(module, "model_family", None)
    if family not in TOLERANCE:
        raise ExportError(
            f"{class_path(type(module))} (family {family!r}) has no export rule yet; exportable families: "
            f"{', '.join(TOLERANCE)}."
        )
    return family


def load_datamodule(config_path: Path, data_overrides: dict[str, Any] | None = None) -> Any:
    """The datamodule of a run's saved config (``data.class_path`` / ``init_args``), set up for ``test``."""
    import yaml

    from zoo.utils.checkpoint import import_class

    config = yaml.safe_load(config_path.read_text()) or {}
    data = config.get("data") or {}
    if "class_path" not in data:
        raise CheckpointError(f"{config_path} has no data.class_path. Fix: pass --config with the run's config.yaml.")
    init_args = {**(data.get("init_args") or {}), **(data_overrides or {})}
    datamodule = import_class(data["class_path"])(**init_args)
    datamodule.setup("test")
    return datamodule


def resolve_config(ckpt: Path, config: str | Path | None) -> Path:
    """``config`` if given (it must exist), else the run's ``config.yaml`` beside the checkpoint; else a clear error."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise CheckpointError(f"config {path} does not exist. Fix: pass --config with the run's config.yaml.")
        return path
    found = find_run_config(ckpt)
    if found is None:
        raise CheckpointError(
            f"no config.yaml beside checkpoint {ckpt} (looked in {ckpt.parent} and {ckpt.parent.parent}). "
            "Fix: pass --config with the config the run was trained with (or its datamodule's config)."
        )
    return found


def real_test_image(datamodule: Any, family: str) -> torch.Tensor:
    """The first test image of the datamodule, ``(1, C, H, W)``, normalized as the model saw it in training."""
    batch = next(iter(datamodule.test_dataloader()))
    images = batch["image"] if isinstance(batch, dict) else batch[0]
    return images[:1].float()


def fit_to_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop, then mirror-pad (reflect) an image ``(1, C, H, W)`` to ``size`` (what a network tile takes)."""
    h, w = image.shape[-2:]
    th, tw = size
    top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
    image = image[..., top : top + min(h, th), left : left + min(w, tw)]
    ph, pw = th - image.shape[-2], tw - image.shape[-1]
    if ph or pw:
        mode = "reflect" if ph < image.shape[-2] and pw < image.shape[-1] else "replicate"
        image = torch.nn.functional.pad(image, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
    return image


def export_input(
    module: nn.Module, family: str, image: torch.Tensor, input_size: tuple[int, int] | None
) -> torch.Tensor:
    """The example input of the export: the real image, fitted to the segmentation network's tile when it has one."""
    if input_size is not None:
        return fit_to_size(image, input_size)
    if family == "segmentation":
        tile = module.hparams.get("tile_size")
        if tile:
            return fit_to_size(image, (tile, tile))
        h, w = image.shape[-2:]  # "same"-padded networks: a multiple of 32 fits every encoder's downsampling
        return fit_to_size(image, (max(32, h // 32 * 32), max(32, w // 32 * 32)))
    return image


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=True,
                        opset_version=ONNX_OPSET,
                        input_names=["image"],
                        output_names=["logits"],
                        dynamic_shapes={"image": {0: torch.export.Dim("batch", max=4096)}},
                    )
                else:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=False,
                        opset_version=ONNX_OPSET,
                        input_names=["image"],
                        output_names=["logits"],
                        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                    )
            return "torch.export (dynamo)" if dynamo else "TorchScript-based"
        except Exception as error:  # noqa: BLE001  (each exporter fails its own way; both reasons are reported)
            errors.append(
                f"{'dynamo' if dynamo else 'TorchScript-based'} exporter: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            )
    raise ExportError("; ".join(errors))


def _run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: example.numpy()})[0])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch.jit is deprecated in favour of torch.export, but still the format asked for
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as error:  # noqa: BLE001
            raise ExportError(f"torch.jit.trace: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from error
        traced.save(str(path))
    return "torch.jit.trace"


def _run_torchscript(path: Path, example: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")(example)


def export_module(
    module: nn.Module,
    fmt: str,
    output: Path,
    example: torch.Tensor,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``module`` (an ImageClassifier or SemanticSegmenter) to ``output``, check it on ``example`` and write
    ``<output>.json``; returns that report. Failures are reported (``exported: false``, ``reason``), not raised."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    family = model_family(module)
    model = _Logits(module.eval(), family).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": fmt,
        "file": str(output),
        "model": class_path(type(module)),
        "network": str(module.hparams.get(getattr(module, "model_name_arg", "backbone"), "")),
        "family": family,
        "input": {"name": "image", "shape": ["batch", *example.shape[1:]], "dtype": "float32", **(extra_spec or {})},
        "versions": software_versions(),
    }
    start = time.perf_counter()
    try:
        with torch.no_grad():
            expected = model(example)
        if fmt == "onnx":
            report["exporter"] = _export_onnx(model, example, output)
            report["opset"] = ONNX_OPSET
            got = _run_onnx(output, example)
            report["runtime"] = "onnxruntime"
        else:
            report["exporter"] = _export_torchscript(model, example, output)
            got = _run_torchscript(output, example)
            report["runtime"] = "torch.jit.load"
    except ExportError as error:
        report.update(exported=False, reason=str(error))
        output.with_name(output.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    got = got.detach()
    diff = float((got.float() - expected.float()).abs().max())
    tolerance = TOLERANCE[family]
    report.update(
        exported=True,
        export_seconds=round(time.perf_counter() - start, 2),
        output={"name": "logits", "shape": ["batch", *expected.shape[1:]]},
        parity={
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "passed": diff <= tolerance,
            "same_argmax": bool((got.argmax(1) == expected.argmax(1)).all()),
        },
    )
    output.with_name(output.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def export_checkpoint(
    ckpt: str | Path,
    fmt: str,
    output: str | Path | None = None,
    config: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint, take a real test image from its run's data, export and check (see the module docstring)."""
    ckpt = Path(ckpt)
    module = load_zoo_module(ckpt)
    family = model_family(module)
    datamodule = load_datamodule(resolve_config(ckpt, config))
    example = export_input(module, family, real_test_image(datamodule, family), input_size)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    output = Path(output) if output else ckpt.with_name(f"{ckpt.stem}{suffix}")
    spec = {
        "normalization": {
            "mean": list(getattr(datamodule, "mean", []) or []),
            "std": list(getattr(datamodule, "std", []) or []),
        },
        "class_names": list(module.class_names),
        "test_image": f"{type(datamodule).__name__} test split, sample 0",
    }
    return export_module(module, fmt, output, example, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the checkpoint (.ckpt) to export")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", help="the model file (default: beside the checkpoint, <stem>.onnx / <stem>.pt)")
    parser.add_argument("--config", help="the run's config.yaml (default: found beside the checkpoint)")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input height and width (default: the test image's, or the segmenter's tile)",
    )
    args = parser.parse_args(argv)
    try:
        report = export_checkpoint(
            args.ckpt, args.format, args.output, args.config, tuple(args.input_size) if args.input_size else None
        )
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not report["exported"]:
        print(f"cannot export {report['network']} to {args.format}: {report['reason']}", file=sys.stderr)
        return 1
    parity = report["parity"]
    print(
        f"wrote {report['file']} ({report['exporter']}), input {report['input']['shape']}; "
        f"parity on a real test image: max abs diff {parity['max_abs_diff']:.2e} "
        f"(tolerance {parity['tolerance']:.0e}) -> {'ok' if parity['passed'] else 'FAILED'}; "
        f"report {report['file']}.json"
    )
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
