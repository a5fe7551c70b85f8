"""Bad input across every datamodule: each case ends in an error that names the file (or folder) and the fix,
in a counted skip where the user opted in, or in a documented lossless conversion; a crashed loader worker
ends the run with an error instead of a hang."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import COCODetectionDataModule, ISBI2012DataModule, MNISTDataModule, SegmentationFolderDataModule
from datamodules.coco import COCODataError, load_coco_index, read_rgb
from datamodules.mnist import CorruptFileError, DataNotFoundError
from datamodules.segmentation import SegmentationDataError, read_image, read_mask

ROOT = Path(__file__).resolve().parents[2]


# -- image files -----------------------------------------------------------------------------------------------
def png_bytes(size: tuple[int, int] = (32, 24), mode: str = "L") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


BROKEN_FILES: dict[str, Callable[[], bytes]] = {
    "truncated": lambda: png_bytes()[: len(png_bytes()) // 2],
    "corrupt": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "zero-byte": lambda: b"",
}


@pytest.mark.parametrize("kind", BROKEN_FILES)
@pytest.mark.parametrize(
    "reader",
    [lambda p: read_image(p, 1), read_mask, lambda p: read_rgb(p, image_id=7)],
    ids=["segmentation-image", "segmentation-mask", "coco-image"],
)
def test_broken_image_file_is_an_error_naming_it(tmp_path: Path, kind: str, reader: Callable) -> None:
    path = tmp_path / f"{kind}.png"
    path.write_bytes(BROKEN_FILES[kind]())
    with pytest.raises((SegmentationDataError, COCODataError)) as error:
        reader(path)
    assert str(path) in str(error.value) and "Fix:" in str(error.value)


def folder_pairs(root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, array in images.items():
        Image.fromarray(array).save(root / "images" / f"{name}.png")
    for name, array in masks.items():
        Image.fromarray(array).save(root / "masks" / f"{name}.png")
    return root


def gray(h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)


def binary_mask(h: int = 24, w: int = 32) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 255
    return mask


def test_truncated_image_inside_a_segmentation_set_is_named_at_setup(tmp_path: Path) -> None:
    root = folder_pairs(tmp_path, {f"{i}": gray() for i in range(4)}, {f"{i}": binary_mask() for i in range(4)})
    bad = root / "images" / "2.png"
    bad.write_bytes(bad.read_bytes()[:60])
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1, crop_size=16)
    with pytest.raises(SegmentationDataError, match=f"{bad}.*cannot be decoded.*Fix"):
        dm.setup("fit")


def test_grayscale_image_where_rgb_is_expected_is_converted_losslessly(tmp_path: Path) -> None:
    # Documented behaviour (not an error): a single-channel file for an RGB model is repeated into 3 equal
    # channels, as COCO's own grayscale images are; a colour file for a grayscale model is an error instead.
    path = tmp_path / "gray.png"
    Image.fromarray(gray()).save(path)
    for array in (read_image(path, 3), read_rgb(path)):
        assert array.shape == (24, 32, 3) and (array == gray()[..., None]).all()
    colour = tmp_path / "colour.png"
    Image.fromarray(np.stack([gray(), gray() // 2, gray() // 3], axis=-1)).save(colour)
    with pytest.raises(SegmentationDataError, match=f"{colour} is a colour.*in_channels=1.*Fix"):
        read_image(colour, 1)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    wide = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 85).astype(np.uint16)  # up to 65,195
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    expected = np.round(wide / 65535 * 255).astype(np.uint8)
    assert (read_image(path, 1)[..., 0] == expected).all()
    assert (read_rgb(path)[..., 0] == expected).all()  # PIL's convert("RGB") would make 99% of it white


def test_16_bit_mask_with_values_outside_mask_values_is_an_error_naming_it(tmp_path: Path) -> None:
    mask = binary_mask().astype(np.uint16) * 257  # 0 / 65535: a 16-bit export of a 0 / 255 mask
    root = folder_pairs(tmp_path, {"a": gray(), "b": gray()}, {"a": binary_mask()})
    Image.fromarray(mask).save(root / "masks" / "b.png")
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1, crop_size=16)
    with pytest.raises(SegmentationDataError, match=r"b\.png holds value\(s\) 65535.*Fix"):
        dm.setup("fit")


def test_image_and_mask_of_different_sizes_name_both_files(tmp_path: Path) -> None:
    root = folder_pairs(tmp_path, {"a": gray(), "b": gray()}, {"a": binary_mask(), "b": binary_mask(20, 32)})
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1, crop_size=16)
    with pytest.raises(SegmentationDataError, match=r"images/b\.png is 32x24.*masks/b\.png is 32x20.*Fix"):
        dm.setup("fit")


# -- annotation files ------------------------------------------------------------------------------------------
def tiny_coco(root: Path) -> dict:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 24)).save(root / "images" / "a.png")
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "area": 100,
                         "iscrowd": 0}],
        "categories": [{"id": 5, "name": "thing"}],
    }


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\].*has no file_name"),
        (lambda d: d["images"][0].pop("id"), r"images\[0\].*has no id"),
        (lambda d: d["categories"][0].pop("id"), r"categories\[0\].*has no id"),
        (lambda d: d.pop("categories"), r"has no 'categories'"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotation id 1 .*has bbox None"),
    ],
    ids=["image-file_name", "image-id", "category-id", "categories", "annotation-bbox"],
)
def test_annotation_json_with_missing_keys_is_an_error_naming_the_file(
    tmp_path: Path, drop: Callable, expected: str
) -> None:
    data = tiny_coco(tmp_path)
    drop(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(COCODataError, match=expected) as error:
        load_coco_index(path, tmp_path / "images")
    assert str(path) in str(error.value) and "Fix" in str(error.value)


def test_bad_annotation_is_a_counted_skip_when_opted_in(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    data["annotations"].append({"id": 2, "image_id": 1, "category_id": 5})  # no bbox
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    index = load_coco_index(path, tmp_path / "images", bad_input="skip")
    assert index.skipped["malformed box"] == 1


# -- empty data sets and missing folders -------------------------------------------------------------------------
def write_idx(path: Path, shape: tuple[int, ...]) -> None:
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    path.write_bytes(header + bytes(int(np.prod(shape))))


def test_empty_mnist_files_are_an_error_naming_them(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (0, 28, 28))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (0,))
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(CorruptFileError, match=r"train-images-idx3-ubyte and .*hold no samples.*Fix"):
        dm.setup("fit")


def test_empty_image_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    dm = SegmentationFolderDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"no images in {tmp_path / 'images'}.*Fix"):
        dm.setup("fit")


def test_coco_file_without_images_is_an_error_naming_it(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    data["images"], data["annotations"] = [], []
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(COCODataError, match=f"{path} has no 'images'.*Fix"):
        load_coco_index(path, tmp_path / "images")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: MNISTDataModule(data_dir=d, download=False), (DataNotFoundError, "MNIST files not found")),
        (lambda d: ISBI2012DataModule(data_dir=d), (FileNotFoundError, "does not exist")),
        (lambda d: SegmentationFolderDataModule(data_dir=d), (FileNotFoundError, "does not exist")),
        (lambda d: COCODetectionDataModule(data_dir=d, train_annotations="instances.json", train_images="images"),
         (FileNotFoundError, "not found")),
    ],
    ids=["mnist", "isbi", "folder", "coco"],
)
def test_data_dir_that_does_not_exist_is_an_error_naming_it(tmp_path: Path, make: Callable, expected: tuple) -> None:
    missing = tmp_path / "no_such_folder"
    error_type, text = expected
    with pytest.raises(error_type) as error:
        dm = make(str(missing))
        dm.prepare_data()
        dm.setup("fit")
    assert str(missing) in str(error.value) and text in str(error.value) and "Fix" in str(error.value)


# -- loader workers --------------------------------------------------------------------------------------------
def test_a_crashed_loader_worker_ends_training_with_an_error_not_a_hang(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal
        import pytorch_lightning as pl, torch
        from torch.utils.data import Dataset
        from datamodules.distributed import make_dataloader

        class Crashing(Dataset):
            def __len__(self):
                return 64
            def __getitem__(self, i):
                if i == 40:
                    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies as on a segfault or the OOM killer
                return torch.ones(4), torch.ones(1)

        class Model(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Linear(4, 1)
            def training_step(self, batch, batch_idx):
                return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False)
        trainer.fit(Model(), make_dataloader(Crashing(), batch_size=8, shuffle=True, num_workers=1))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    # torch reports the dead worker ("DataLoader worker (pid N) is killed by signal: Killed"), or, when the main
    # process was reading the worker's queue at that moment, the reset connection to it
    assert "DataLoader worker" in done.stderr or "ConnectionResetError" in done.stderr, done.stderr[-2000:]
