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

Detectors (``ObjectDetector``: torchvision's Faster R-CNN and SSD) are exported whole, with their own resizing,
normalization, box decoding and non-maximum suppression inside; the input is an RGB image in [0, 1] of any size,
the outputs are the detections (``boxes`` x1, y1, x2, y2 in the input's pixels, ``scores``, ``labels`` 1..K):

* TorchScript: ``torch.jit.script`` (torchvision's detectors are written to be scriptable; tracing would freeze
  their data-dependent control flow). The loaded module takes a *list* of images and returns a list of
  ``{boxes, scores, labels}`` dicts, as ``ObjectDetector.forward`` in eval mode.
* ONNX: the TorchScript-based exporter (torchvision's documented route; opset >= 11, here ``ONNX_OPSET``) on one
  image ``(3, height, width)`` with dynamic height and width; three outputs ``boxes``, ``scores``, ``labels``.
  Tracing a detector takes seconds to a minute (ResNet-50-FPN), far longer than a classifier.

INT8 post-training quantization (``--quantize int8``, ONNX, classifiers and segmenters): the float ONNX file is
quantized with ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``: QDQ format, weights
int8 per output channel, activations uint8 per tensor, MinMax ranges) calibrated on real images of the run's training
split (the datamodule's train loader, ``--calibration-batches`` batches, fitted to the exported input size), written
as ``<file stem>.int8.onnx``. The first convolution stays in float unless ``--keep-float none``: it sees the raw
image, and it is where int8 lost accuracy (Fashion-MNIST convnet, width 32, 10,000 test images: float 92.01%, all int8
90.79%, first convolution in float 92.00%; the calibration method, MinMax, Percentile or Entropy, made no difference;
on the MNIST convnet the mean logit difference fell from 0.36-0.57 to 0.04). On small convnets it is a large share of
the arithmetic, so keeping it in float costs speed there (``bench/quantize_int8.py``). The report's ``kept_float``
names the nodes left in float; its ``quantization`` entry holds, on the real test set (``--eval-batches`` limits
it): float vs int8 accuracy (classifiers; multi-label: mean per-label accuracy at the model's threshold) or mean IoU
(segmenters), the max / mean absolute output difference and the argmax agreement, and the CPU inference time of the
float and int8 files (same batch, same onnxruntime session threads) with the speedup, which may be below 1.

Why ONNX Runtime's and not PyTorch's (``torch.ao.quantization`` FX, x86 backend; PT2E has moved out of torch into
torchao): measured on the zoo's MNIST convnet (width 16, 2000 test digits, batch 256, 2 threads of a Xeon with
AVX512-VNNI / AMX): float 95.10% accuracy; ORT int8 94.85% (argmax agreement with float 99.75%), FX int8 94.75%
(99.45%); per batch ORT float 34 ms, ORT int8 42 ms, FX int8 215 ms (and eager float PyTorch 162 ms). ORT's is the
faster file with the smaller drop, and it needs no other package (onnxruntime already runs the parity check). On a
network this small, int8 is no faster than float ONNX (the quantize / dequantize steps around tiny convolutions cost
what the int8 arithmetic saves; QOperator format and int8 activations measured the same, 5.9-6.1 ms against
4.1 ms float per 256 digits): the speedup is measured and reported, never assumed.

Parity of detections is checked without relying on their order (detections of equal score may come out in
another order): ``max_abs_diff`` is the largest difference, in box coordinates (pixels) or score, between a
detection and its nearest detection of the same label in the other output, both ways; the check fails when the
two outputs hold different numbers of detections.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from zoo.core.checkpoint import CheckpointError, class_path, find_run_config, load_zoo_module, software_versions

FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)
# what --keep-float may leave in float when quantizing: the first convolution (the default) or nothing
KEEP_FLOAT = ("first_conv", "none")
ONNX_OPSET = 18
# detection: pixels of box coordinates and score units (the networks resize the image inside: more float error)
TOLERANCE = {"classification": 1e-4, "segmentation": 1e-3, "detection": 1e-3}


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


class _Detections(nn.Module):
    """What a detector's TorchScript file holds: images (list of ``(3, H, W)`` in [0, 1]) -> detections."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        if torch.jit.is_scripting():
            return self.net(images)[1]  # a scripted torchvision detector returns (losses, detections)
        return self.net(images)


class _DetectionsONNX(nn.Module):
    """What a detector's ONNX file holds: one image ``(3, H, W)`` in [0, 1] -> ``boxes``, ``scores``, ``labels``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        detections = self.net([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


def model_family(module: nn.Module) -> str:
    family = getattr(module, "family", None)
    if family not in TOLERANCE:
        raise ExportError(
            f"{class_path(type(module))} (family {family!r}) has no export rule yet; exportable families: "
            f"{', '.join(TOLERANCE)}."
        )
    return family


def load_datamodule(config_path: Path, data_overrides: dict[str, Any] | None = None) -> Any:
    """The datamodule of a run's saved config (``data.class_path`` / ``init_args``), set up for ``test``."""
    import yaml

    from zoo.core.checkpoint import import_class

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
    if family == "detection":  # a list of images of any sizes
        return batch["images"][0][None].float()
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
    # torch.export (dynamo) first: torch's default exporter, which takes every network here; the TorchScript-based
    # one is the fall-back. Both print as they work (dynamo its progress; TorchScript, from C++, its whole IR graph
    # when it gives up): the outcome is reported below, so their prints are kept from the terminal.
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), _stdout_silenced():
                warnings.simplefilter("ignore")
                # the batch dimension is dynamic, said each exporter's way
                batch = (
                    {"dynamic_shapes": {"image": {0: torch.export.Dim("batch", max=4096)}}}
                    if dynamo
                    else {"dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}}}
                )
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=dynamo,
                    opset_version=ONNX_OPSET,
                    input_names=["image"],
                    output_names=["logits"],
                    **batch,
                )
            return "torch.export (dynamo)" if dynamo else "TorchScript-based"
        except Exception as error:  # noqa: BLE001  (each exporter fails its own way; both reasons are reported)
            errors.append(
                f"{'dynamo' if dynamo else 'TorchScript-based'} exporter: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            )
    raise ExportError("; ".join(errors))


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Standard output off, at the file-descriptor level (what C++ code prints too), for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


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


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def _export_detector_torchscript(net: nn.Module, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(_Detections(net).eval())
        except Exception as error:  # noqa: BLE001  (any scripting failure is reported as the reason)
            raise ExportError(f"torch.jit.script: {_short(error)}") from error
        scripted.save(str(path))
    return "torch.jit.script"


def _export_detector_onnx(net: nn.Module, image: Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _DetectionsONNX(net).eval(),
                (image,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["boxes", "scores", "labels"],
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "scores": {0: "detections"},
                    "labels": {0: "detections"},
                },
            )
        except Exception as error:  # noqa: BLE001
            raise ExportError(f"TorchScript-based ONNX exporter: {_short(error)}") from error
    return "TorchScript-based (torch.onnx.export, dynamo=False)"


def _run_detector(fmt: str, path: Path, image: Tensor) -> dict[str, Tensor]:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        return {
            "boxes": torch.from_numpy(boxes),
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")([image])[0]


def detection_difference(expected: dict[str, Tensor], got: dict[str, Tensor]) -> float | None:
    """The largest difference (box coordinates or score) between a detection and its nearest detection of the same
    label in the other set, both ways: independent of the order of equal-score detections. None when the two sets
    differ in size or a detection has no counterpart of its label."""
    if len(expected["boxes"]) != len(got["boxes"]):
        return None
    if not len(expected["boxes"]):
        return 0.0

    def rows(d: dict[str, Tensor]) -> Tensor:
        return torch.cat([d["boxes"].double().reshape(-1, 4), d["scores"].double().reshape(-1, 1)], dim=1)

    distance = (rows(expected)[:, None] - rows(got)[None]).abs().amax(dim=-1)
    distance[expected["labels"].reshape(-1, 1) != got["labels"].reshape(1, -1)] = float("inf")
    worst = max(float(distance.min(dim=1).values.max()), float(distance.min(dim=0).values.max()))
    return worst if worst != float("inf") else None


def _export_detector(module: nn.Module, fmt: str, output: Path, example: Tensor, report: dict[str, Any]) -> None:
    """Export and check a detector (see the module docstring); fills ``report``, raises :class:`ExportError`."""
    image = (example[0] if example.ndim == 4 else example).float()
    net = module.net.eval()
    with torch.no_grad():
        expected = {k: v.detach() for k, v in net([image])[0].items()}
    start = time.perf_counter()
    if fmt == "onnx":
        report["exporter"] = _export_detector_onnx(net, image, output)
        report["opset"] = ONNX_OPSET
        report["runtime"] = "onnxruntime"
        report["input"].update(name="image", shape=[3, "height", "width"])
    else:
        report["exporter"] = _export_detector_torchscript(net, output)
        report["runtime"] = "torch.jit.load"
        report["input"].update(name="images", shape=["list of", 3, "height", "width"])
    try:
        with torch.no_grad():
            got = {k: v.detach() for k, v in _run_detector(fmt, output, image).items()}
    except Exception as error:  # noqa: BLE001
        raise ExportError(f"exported, but {report['runtime']} cannot run the file: {_short(error)}") from error
    diff = detection_difference(expected, got)
    tolerance = TOLERANCE["detection"]
    report.update(
        exported=True,
        export_seconds=round(time.perf_counter() - start, 2),
        output={
            "boxes": ["detections", 4],
            "scores": ["detections"],
            "labels": ["detections"],
            "boxes_format": "x1, y1, x2, y2 in the input image's pixels",
            "labels_meaning": "label k is class_names[k - 1] (0 is the background, never output)",
        },
        parity={
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "passed": diff is not None and diff <= tolerance,
            "num_detections": {"pytorch": len(expected["boxes"]), "exported": len(got["boxes"])},
            "test_image_size": list(image.shape[1:]),
        },
    )
    if len(expected["boxes"]) != len(got["boxes"]):
        report["parity"]["note"] = (
            f"the exported model kept {len(got['boxes'])} detections where PyTorch keeps {len(expected['boxes'])}: "
            "its non-maximum suppression kept other boxes. This happens when many detections have equal scores "
            "(e.g. an untrained network's); check a trained one before relying on the file."
        )


def export_module(
    module: nn.Module,
    fmt: str,
    output: Path,
    example: torch.Tensor,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``module`` (an ImageClassifier, SemanticSegmenter or ObjectDetector) to ``output``, check it on
    ``example`` (a detector's: one image, ``(1, 3, H, W)`` or ``(3, H, W)``) and write ``<output>.json``; returns that
    report. Failures are reported (``exported: false``, ``reason``), not raised."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    family = model_family(module)
    module.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": fmt,
        "file": str(output),
        "model": class_path(type(module)),
        "network": str(module.hparams.get("network", "")),
        "family": family,
        "input": {"name": "image", "shape": ["batch", *example.shape[1:]], "dtype": "float32", **(extra_spec or {})},
        "versions": software_versions(),
    }
    if family == "detection":
        report["input"]["range"] = "RGB in [0, 1], any size: the network resizes and normalizes inside"
        try:
            _export_detector(module, fmt, output, example, report)
        except ExportError as error:
            report.update(exported=False, reason=str(error))
        output.with_name(output.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    model = _Logits(module, family).eval()
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
            "max_abs_output": float(expected.abs().max()),  # the scale the difference is relative to
            "tolerance": tolerance,
            "passed": diff <= tolerance,
            "same_argmax": bool((got.argmax(1) == expected.argmax(1)).all()),
        },
    )
    output.with_name(output.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _batch_images(batch: Any) -> Tensor:
    return (batch["image"] if isinstance(batch, dict) else batch[0]).float()


def _batch_targets(batch: Any) -> Tensor:
    return batch["mask"] if isinstance(batch, dict) else batch[1]


def _fitted(images: Tensor, size: tuple[int, int]) -> Tensor:
    """A batch fitted, image by image, to the exported input size (as :func:`fit_to_size`)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.cat([fit_to_size(image[None], size) for image in images])


def calibration_images(datamodule: Any, size: tuple[int, int], batches: int) -> list[Tensor]:
    """The first ``batches`` batches of the datamodule's train loader (real training images, as training sees them),
    fitted to the exported input size: what the int8 activation ranges are calibrated on."""
    if batches < 1:
        raise ValueError(f"calibration batches: {batches}. Fix: give at least 1 (--calibration-batches).")
    datamodule.setup("fit")
    out = []
    for batch in datamodule.train_dataloader():
        out.append(_fitted(_batch_images(batch), size))
        if len(out) == batches:
            break
    if not out:
        raise ExportError(f"{type(datamodule).__name__} has no training images to calibrate the int8 model on")
    return out


def first_conv_node(path: Path) -> str | None:
    """The name of the first ``Conv`` node of the ONNX graph at ``path`` (ONNX keeps nodes in topological order, so
    this is the convolution nearest the input), or None when the graph has none."""
    import onnx

    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "Conv":
            return node.name
    return None


def quantize_onnx_int8(
    float_path: Path, int8_path: Path, calibration: list[Tensor], keep_float: str = "first_conv"
) -> list[str]:
    """ONNX Runtime static INT8 quantization of ``float_path`` into ``int8_path`` (QDQ, per-channel int8 weights,
    uint8 activations whose ranges come from ``calibration``; see the module docstring for why this route).
    ``keep_float="first_conv"`` leaves the first convolution in float (it sees the raw image, holds few weights and
    is where the int8 error cost Fashion-MNIST 1.2 points; see the module docstring). Returns the names of the nodes
    left in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch.numpy()}

    # ORT's recommended pre-processing (shape inference, graph optimization) so that every op gets its ranges
    prepared = int8_path.with_name(int8_path.stem + ".prepared.onnx")
    try:
        with warnings.catch_warnings(), _stdout_silenced():
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(prepared))
            first = first_conv_node(prepared) if keep_float == "first_conv" else None
            excluded = [first] if first is not None else []
            quantize_static(
                str(prepared),
                str(int8_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
            )
    except Exception as error:  # noqa: BLE001  (any failure of the quantizer is the reason reported)
        raise ExportError(f"onnxruntime.quantization: {_short(error)}") from error
    finally:
        prepared.unlink(missing_ok=True)
    return excluded


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _seconds_per_run(session: Any, batch: Tensor, repeats: int = 10) -> float:
    """The median wall time of one ``session`` run on ``batch`` (after a warm-up run)."""
    feed = {"image": batch.numpy()}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class _Score:
    """Accuracy (classifiers) or mean IoU (segmenters) of one model over the test batches."""

    def __init__(self, family: str, num_classes: int, task: str, threshold: float) -> None:
        self.family, self.num_classes, self.task, self.threshold = family, num_classes, task, threshold
        self.correct, self.total = 0.0, 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, logits: Tensor, targets: Tensor) -> None:
        if self.family == "segmentation":
            # a valid-padded network's output is smaller than its tile: the mask's centre is what it predicts
            targets = _centre_crop(targets, tuple(logits.shape[-2:]))
            known = (targets >= 0) & (targets < self.num_classes)  # ignored pixels (e.g. 255) are left out
            index = targets[known] * self.num_classes + logits.argmax(1)[known]
            self.confusion += torch.bincount(index, minlength=self.num_classes**2).reshape_as(self.confusion)
        elif self.task == "multilabel":
            self.correct += float(((logits.sigmoid() >= self.threshold) == targets.bool()).float().mean(1).sum())
            self.total += len(logits)
        else:
            self.correct += float((logits.argmax(1) == targets).sum())
            self.total += len(logits)

    def compute(self) -> float:
        if self.family == "segmentation":
            hits = self.confusion.diag().double()
            union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - hits
            present = union > 0  # a class absent from both the masks and the predictions has no IoU
            return float((hits[present] / union[present]).mean())
        return self.correct / max(self.total, 1)


def _centre_crop(masks: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = masks.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return masks[..., top : top + size[0], left : left + size[1]]


def _fitted_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks fitted to the exported input size as their images are (:func:`fit_to_size`: crop, mirror-pad)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return torch.cat([fit_to_size(m[None, None].float(), size)[0] for m in masks]).round().long()


def quantization_report(
    module: nn.Module,
    family: str,
    float_path: Path,
    int8_path: Path,
    datamodule: Any,
    size: tuple[int, int],
    eval_batches: int | None = None,
) -> dict[str, Any]:
    """Float vs int8 ONNX on the datamodule's real test set (its first ``eval_batches`` batches; all by default):
    accuracy or mean IoU of each, output differences, argmax agreement, and the CPU time of each file on one test
    batch with the same session threads."""
    threads = torch.get_num_threads()
    sessions = {"float": _ort_session(float_path, threads), "int8": _ort_session(int8_path, threads)}
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    task, threshold = str(module.hparams.get("task", "multiclass")), float(module.hparams.get("threshold", 0.5))
    scores = {kind: _Score(family, num_classes, task, threshold) for kind in sessions}
    max_diff, diff_sum, diff_count, agree, agree_count, images = 0.0, 0.0, 0, 0, 0, 0
    speed_batch: Tensor | None = None
    for index, batch in enumerate(datamodule.test_dataloader()):
        if eval_batches is not None and index >= eval_batches:
            break
        inputs = _fitted(_batch_images(batch), size)
        targets = _batch_targets(batch)
        if family == "segmentation":
            targets = _fitted_masks(targets, size)
        outputs = {
            kind: torch.from_numpy(session.run(None, {"image": inputs.numpy()})[0])
            for kind, session in sessions.items()
        }
        for kind, logits in outputs.items():
            scores[kind].update(logits, targets)
        diff = (outputs["float"] - outputs["int8"]).abs()
        max_diff, diff_sum, diff_count = (
            max(max_diff, float(diff.max())),
            diff_sum + float(diff.sum()),
            diff_count + diff.numel(),
        )
        same = outputs["float"].argmax(1) == outputs["int8"].argmax(1)
        agree, agree_count = agree + int(same.sum()), agree_count + same.numel()
        images += len(inputs)
        speed_batch = inputs if speed_batch is None else speed_batch
    if speed_batch is None:
        raise ExportError(f"{type(datamodule).__name__}'s test loader gave no batch to evaluate the int8 model on")
    seconds = {kind: _seconds_per_run(session, speed_batch) for kind, session in sessions.items()}
    metric = "mean_iou" if family == "segmentation" else "accuracy"
    values = {kind: score.compute() for kind, score in scores.items()}
    return {
        "quantized": True,
        "file": str(int8_path),
        "method": "onnxruntime.quantization.quantize_static: QDQ, int8 weights per channel, uint8 activations "
        "(MinMax calibration)",
        "calibration": "real training images (the datamodule's train loader)",
        "metric": metric,
        "float": values["float"],
        "int8": values["int8"],
        "drop": values["float"] - values["int8"],
        "test_images": images,
        "max_abs_diff": max_diff,
        "mean_abs_diff": diff_sum / max(diff_count, 1),
        "argmax_agreement": agree / max(agree_count, 1),
        "speed": {
            "batch": int(speed_batch.shape[0]),
            "threads": threads,
            "float_ms": seconds["float"] * 1e3,
            "int8_ms": seconds["int8"] * 1e3,
            "speedup": seconds["float"] / seconds["int8"],
        },
        "size_bytes": {"float": float_path.stat().st_size, "int8": int8_path.stat().st_size},
    }


def quantize_export(
    report: dict[str, Any],
    module: nn.Module,
    datamodule: Any,
    example: Tensor,
    calibration_batches: int = 8,
    eval_batches: int | None = None,
    keep_float: str = "first_conv",
) -> dict[str, Any]:
    """INT8-quantize the float ONNX file of ``report`` (an exported classifier or segmenter), evaluate both on the
    real test set, and add the outcome to the report as ``quantization`` (rewriting ``<file>.json``)."""
    float_path = Path(report["file"])
    family = report["family"]
    if report.get("format") != "onnx" or family not in ("classification", "segmentation"):
        raise ValueError(
            f"--quantize int8 takes an ONNX export of a classifier or a segmenter, not a {report.get('format')} "
            f"export of a {family} model. Fix: --format onnx, with a classifier or segmenter checkpoint."
        )
    int8_path = float_path.with_name(f"{float_path.stem}.int8.onnx")
    size = (int(example.shape[-2]), int(example.shape[-1]))
    calibration = calibration_images(datamodule, size, calibration_batches)
    try:
        kept = quantize_onnx_int8(float_path, int8_path, calibration, keep_float)
        quantized = quantization_report(module, family, float_path, int8_path, datamodule, size, eval_batches)
        quantized["kept_float"] = kept
        quantized["calibration"] += f", {len(calibration)} batches, {sum(len(b) for b in calibration)} images"
    except ExportError as error:
        quantized = {"quantized": False, "reason": str(error)}
    report["quantization"] = quantized
    float_path.with_name(float_path.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def export_checkpoint(
    ckpt: str | Path,
    fmt: str,
    output: str | Path | None = None,
    config: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    quantize: str | None = None,
    calibration_batches: int = 8,
    eval_batches: int | None = None,
    keep_float: str = "first_conv",
) -> dict[str, Any]:
    """Load a checkpoint, take a real test image from its run's data, export and check (see the module docstring);
    ``quantize="int8"`` also writes the INT8 ONNX file, calibrated on ``calibration_batches`` training batches and
    compared with the float one on the test set (``eval_batches`` of it; all by default), with the first convolution
    left in float unless ``keep_float="none"``."""
    if keep_float not in KEEP_FLOAT:
        raise ValueError(f"keep_float={keep_float!r}. Fix: one of {', '.join(KEEP_FLOAT)}.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize={quantize!r}. Fix: one of {', '.join(QUANTIZATIONS)} (or none).")
    if quantize is not None and fmt != "onnx":
        raise ValueError(f"--quantize {quantize} quantizes an ONNX file, not {fmt}. Fix: --format onnx.")
    ckpt = Path(ckpt)
    module = load_zoo_module(ckpt)
    family = model_family(module)
    datamodule = load_datamodule(resolve_config(ckpt, config))
    example = export_input(module, family, real_test_image(datamodule, family), input_size)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    output = Path(output) if output else ckpt.with_name(f"{ckpt.stem}{suffix}")
    spec: dict[str, Any] = {
        "normalization": {
            "mean": list(getattr(datamodule, "mean", []) or []),
            "std": list(getattr(datamodule, "std", []) or []),
        },
        "class_names": list(module.class_names),
        "test_image": f"{type(datamodule).__name__} test split, sample 0",
    }
    if family == "detection":
        spec["normalization"] = "none: RGB in [0, 1] (the network normalizes inside)"
        spec["category_ids"] = module.hparams.get("category_ids")
    report = export_module(module, fmt, output, example, spec)
    if quantize is not None and report["exported"]:
        report = quantize_export(report, module, datamodule, example, calibration_batches, eval_batches, keep_float)
    return report


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
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="also write an INT8 ONNX file (static, calibrated)")
    parser.add_argument(
        "--calibration-batches", type=int, help="--quantize: training batches to calibrate on (default 8)"
    )
    parser.add_argument("--eval-batches", type=int, help="--quantize: test batches to compare on (default: all)")
    parser.add_argument(
        "--keep-float", choices=KEEP_FLOAT, help="--quantize: what stays in float (default first_conv: the first "
        "convolution)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    quantize_only = (args.calibration_batches, args.eval_batches, args.keep_float)
    if args.quantize is None and any(value is not None for value in quantize_only):
        parser.error("--calibration-batches, --eval-batches and --keep-float belong to --quantize. Fix: add "
                     "--quantize int8, or leave them out.")  # fmt: skip
    if args.calibration_batches is None:
        args.calibration_batches = 8
    try:
        report = export_checkpoint(
            args.ckpt,
            args.format,
            args.output,
            args.config,
            tuple(args.input_size) if args.input_size else None,
            quantize=args.quantize,
            calibration_batches=args.calibration_batches,
            eval_batches=args.eval_batches,
            keep_float=args.keep_float or "first_conv",
        )
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not report["exported"]:
        print(f"cannot export {report['network']} to {args.format}: {report['reason']}", file=sys.stderr)
        return 1
    parity = report["parity"]
    diff = (
        "n/a (different numbers of detections)" if parity["max_abs_diff"] is None else f"{parity['max_abs_diff']:.2e}"
    )
    print(
        f"wrote {report['file']} ({report['exporter']}), input {report['input']['shape']}; "
        f"parity on a real test image: max abs diff {diff} "
        f"(tolerance {parity['tolerance']:.0e}) -> {'ok' if parity['passed'] else 'FAILED'}; "
        f"report {report['file']}.json"
    )
    if parity.get("note"):
        print(f"note: {parity['note']}", file=sys.stderr)
    quantized = report.get("quantization")
    if quantized is not None and not quantized["quantized"]:
        print(f"cannot quantize {report['network']} to int8: {quantized['reason']}", file=sys.stderr)
        return 1
    if quantized is not None:
        speed = quantized["speed"]
        print(
            f"wrote {quantized['file']} (int8): {quantized['metric']} {quantized['float']:.4f} float -> "
            f"{quantized['int8']:.4f} int8 on {quantized['test_images']} test images (in float: "
            f"{', '.join(quantized['kept_float']) or 'nothing'}), argmax agreement "
            f"{quantized['argmax_agreement']:.4f}, max abs diff {quantized['max_abs_diff']:.3g}; "
            f"{speed['float_ms']:.1f} ms float vs {speed['int8_ms']:.1f} ms int8 per batch of {speed['batch']} "
            f"({speed['threads']} threads): speedup {speed['speedup']:.2f}x"
        )
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
