"""ImageFolderDataModule: both layouts, the stratified split, every image mode, the summary, bad input, normalization,
training-only augmentation and class balancing, on tiny folders of real MNIST digits written in tmp_path."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import ImageFolderDataModule
from datamodules.images import ImageDataError, ImageInfo, probe_image, read_photo, stratified_split
from datamodules.mnist import read_idx
from datamodules.photo_transforms import IMAGENET_MEAN, IMAGENET_STD

SMALL = {"image_size": 16, "num_workers": 0, "batch_size": 4}


# -- real images -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def digits(data_root: Path) -> np.ndarray:
    """200 MNIST test digits (28 x 28 uint8), from the shared data."""
    raw = data_root / "mnist" / "MNIST" / "raw"
    path = next(p for p in (raw / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte.gz") if p.exists())
    return read_idx(path)[:200].numpy()


def rgb_of(digit: np.ndarray) -> np.ndarray:
    """A colour image made of a digit: three different channels."""
    return np.stack([digit, 255 - digit, digit // 2], axis=-1)


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of ``(H, W)`` or ``(H, W, 3)`` uint16 (PIL cannot write 16-bit colour PNGs)."""
    height, width = array.shape[:2]
    colour = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_folder(root: Path, counts: dict[str, int], digits: np.ndarray, ext: str = "png", start: int = 0) -> Path:
    """``root/<class>/<n>.<ext>``: ``counts[class]`` digits per class (grayscale)."""
    k = start
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            Image.fromarray(digits[k % len(digits)]).save(root / name / f"{k}.{ext}")
            k += 1
    return root


def labels_of(dm: ImageFolderDataModule, split: str) -> list[int]:
    return dm.index["splits"][split].targets.tolist()


# -- layouts ---------------------------------------------------------------------------------------------------------
def test_class_folders_give_classes_attributes_and_batches(tmp_path: Path, digits: np.ndarray) -> None:
    root = make_folder(tmp_path / "pets", {"dog": 10, "cat": 6, "ant": 4}, digits)
    dm = ImageFolderDataModule(str(root), val_size=0.2, test_size=0.2, **SMALL)
    assert dm.class_names == ["ant", "cat", "dog"] and dm.num_classes == 3 and dm.in_channels == 3
    assert dm.task == "multiclass" and dm.class_weights is None
    assert sum(dm.class_counts) == len(labels_of(dm, "train")) and len(labels_of(dm, "train")) < 20
    assert sorted(Counter(labels_of(dm, "train")).values()) == sorted(dm.class_counts)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    dm.setup("test")
    assert len(dm.test_set) == 4 and sum(len(dm.index["splits"][s].infos) for s in ("train", "val", "test")) == 20


def test_train_val_test_folders_are_used_as_given(tmp_path: Path, digits: np.ndarray) -> None:
    make_folder(tmp_path / "train", {"a": 5, "b": 5}, digits)
    make_folder(tmp_path / "val", {"a": 2, "b": 1}, digits, start=20)
    make_folder(tmp_path / "test", {"b": 3}, digits, start=40)  # a class train has, missing here: fine
    dm = ImageFolderDataModule(str(tmp_path), **SMALL)
    assert dm.class_names == ["a", "b"]
    assert labels_of(dm, "train") == [0] * 5 + [1] * 5
    assert labels_of(dm, "val") == [0, 0, 1] and labels_of(dm, "test") == [1, 1, 1]
    assert all(info.path.parent.parent.name == "val" for info in dm.index["splits"]["val"].infos)


def test_a_missing_val_folder_is_held_out_of_train_and_test_falls_back_to_val(
    tmp_path: Path, digits: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path / "train", {"a": 10, "b": 10}, digits)
    dm = ImageFolderDataModule(str(tmp_path), val_size=0.2, test_size=0, **SMALL)
    assert Counter(labels_of(dm, "val")) == {0: 2, 1: 2} and len(labels_of(dm, "train")) == 16
    with caplog.at_level(logging.INFO):
        dm.setup("test")
    assert len(dm.test_set) == 4 and "test and predict use the validation split" in caplog.text


def test_split_folders_beside_class_folders_are_refused(tmp_path: Path, digits: np.ndarray) -> None:
    make_folder(tmp_path / "train", {"a": 2}, digits)
    make_folder(tmp_path, {"b": 2}, digits)
    with pytest.raises(ImageDataError, match=r"train/ folder and also b/.*Fix"):
        _ = ImageFolderDataModule(str(tmp_path), **SMALL).num_classes


# -- the split -------------------------------------------------------------------------------------------------------
def test_the_split_is_deterministic_and_stratified(tmp_path: Path, digits: np.ndarray) -> None:
    counts = {"a": 23, "b": 11, "c": 6}
    root = make_folder(tmp_path, counts, digits)
    first = ImageFolderDataModule(str(root), val_size=0.2, test_size=0.15, split_seed=3, **SMALL)
    again = ImageFolderDataModule(str(root), val_size=0.2, test_size=0.15, split_seed=3, **SMALL)
    other = ImageFolderDataModule(str(root), val_size=0.2, test_size=0.15, split_seed=4, **SMALL)
    paths = {s: [i.path for i in first.index["splits"][s].infos] for s in ("train", "val", "test")}
    assert paths == {s: [i.path for i in again.index["splits"][s].infos] for s in paths}
    assert paths["val"] != [i.path for i in other.index["splits"]["val"].infos]
    assert len(paths["val"]) == 8 and len(paths["test"]) == 6  # round(0.2 * 40), round(0.15 * 40)
    for split, fraction in (("val", 0.2), ("test", 0.15)):
        per_class = Counter(labels_of(first, split))
        for c, n in enumerate(counts.values()):
            assert abs(per_class[c] - fraction * n) <= 1, (split, c, per_class)
    assert not set(paths["train"]) & set(paths["val"]) and not set(paths["val"]) & set(paths["test"])


@pytest.mark.parametrize("seed", range(20))
def test_stratified_split_keeps_every_class_within_one_of_its_share(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 5, size=int(rng.integers(30, 200)))
    val, test = round(0.2 * len(groups)), round(0.1 * len(groups))
    train_idx, val_idx, test_idx = stratified_split(groups.tolist(), val, test, seed)
    assert sorted(train_idx + val_idx + test_idx) == list(range(len(groups)))
    for g in np.unique(groups):
        n = (groups == g).sum()
        assert abs((groups[val_idx] == g).sum() - n * val / len(groups)) <= 1
        assert abs((groups[test_idx] == g).sum() - n * test / len(groups)) <= 1
        assert (groups[train_idx] == g).sum() >= 1


# -- image modes -----------------------------------------------------------------------------------------------------
def write_modes(folder: Path, digits: np.ndarray) -> dict[str, Path]:
    """One file per mode / format, each made of a real digit."""
    folder.mkdir(parents=True, exist_ok=True)
    d, rgb = digits[0], rgb_of(digits[0])
    palette = Image.fromarray(rgb).quantize(16)
    files = {
        "RGB.png": Image.fromarray(rgb),
        "L.jpg": Image.fromarray(d),
        "RGBA.png": Image.fromarray(np.dstack([rgb, 255 - d])),
        "LA.png": Image.merge("LA", [Image.fromarray(d), Image.fromarray(255 - d)]),
        "P.png": palette,
        "P.bmp": palette,
        "RGB.bmp": Image.fromarray(rgb),
        "RGB.webp": Image.fromarray(rgb),
        "RGB.tif": Image.fromarray(rgb),
        "1.png": Image.fromarray(d > 127),
        "CMYK.jpg": Image.fromarray(rgb).convert("CMYK"),
        "I16.png": Image.fromarray(d.astype(np.uint16) * 256 + 1),  # 16-bit values no 8-bit image holds
        "I16.tif": Image.fromarray(d.astype(np.uint16) * 256 + 1),
    }
    paths = {}
    for name, image in files.items():
        options = {"lossless": True} if name.endswith(".webp") else {}
        image.save(folder / name, **options)
        paths[name] = folder / name
    transparent = palette.copy()
    transparent.save(folder / "Pt.png", transparency=0)
    paths["Pt.png"] = folder / "Pt.png"
    (folder / "RGB16.png").write_bytes(png16(rgb.astype(np.uint16) * 256 + 3))
    paths["RGB16.png"] = folder / "RGB16.png"
    return paths


def test_every_mode_is_read_as_documented(tmp_path: Path, digits: np.ndarray) -> None:
    paths = write_modes(tmp_path / "modes", digits)
    d, rgb = digits[0], rgb_of(digits[0])
    expected_modes = {"RGB.png": "RGB", "L.jpg": "L", "RGBA.png": "RGBA", "LA.png": "LA", "P.png": "P", "P.bmp": "P",
                      "Pt.png": "P+transparency", "1.png": "1", "CMYK.jpg": "CMYK", "I16.png": "I;16",
                      "I16.tif": "I;16", "RGB16.png": "RGB;16", "RGB.webp": "RGB"}  # fmt: skip
    infos = {name: probe_image(path) for name, path in paths.items()}
    for name, mode in expected_modes.items():
        assert infos[name].mode == mode, name

    def read(name: str, channels: int = 3) -> torch.Tensor:
        return read_photo(infos[name], channels)

    as_chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for name in ("RGB.png", "RGBA.png", "RGB.bmp", "RGB.webp", "RGB.tif"):  # lossless formats; alpha dropped
        assert torch.equal(read(name), as_chw), name
    gray3 = torch.from_numpy(d)[None].expand(3, -1, -1)
    assert torch.equal(read("LA.png"), gray3)
    palette_rgb = torch.from_numpy(np.array(Image.open(paths["P.png"]).convert("RGB"))).permute(2, 0, 1)
    for name in ("P.png", "P.bmp", "Pt.png"):  # colours, not palette indices
        assert torch.equal(read(name), palette_rgb), name
    assert torch.equal(read("1.png"), torch.from_numpy((d > 127).astype(np.uint8) * 255)[None].expand(3, -1, -1))
    assert read("L.jpg").shape == (3, 28, 28) and torch.equal(read("L.jpg")[0], read("L.jpg")[2])
    cmyk = torch.from_numpy(np.array(Image.open(paths["CMYK.jpg"]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read("CMYK.jpg"), cmyk)
    # 16-bit: float in [0, 1] with the 16-bit values kept (value / 65535), not scaled to 8 bits
    for name in ("I16.png", "I16.tif"):
        x = read(name, 1)
        assert x.dtype == torch.float32 and torch.equal(
            (x * 65535).round().to(torch.int64), torch.from_numpy(d.astype(np.int64) * 256 + 1)[None]
        ), name
        assert read(name, 3).shape == (3, 28, 28)
    wide = read("RGB16.png")
    assert wide.dtype == torch.float32
    assert torch.equal((wide * 65535).round().to(torch.int64), as_chw.to(torch.int64) * 256 + 3)
    # in_channels=1: colour by PIL's ITU-R 601 luma (exact for uint8), gray as it is
    luma = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L")))[None]
    assert torch.equal(read("RGB.png", 1), luma) and torch.equal(read("RGBA.png", 1), luma)
    assert torch.equal(read("LA.png", 1), torch.from_numpy(d)[None])


def test_32_bit_float_images_are_refused_naming_the_file(tmp_path: Path, digits: np.ndarray) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3}, digits)
    bad = tmp_path / "a" / "float.tif"
    Image.fromarray(digits[0].astype(np.float32) * 10).save(bad)
    with pytest.raises(ImageDataError, match=rf"{bad} has the image mode 'F'.*Fix"):
        ImageFolderDataModule(str(tmp_path), **SMALL).setup("fit")


def test_setup_logs_a_summary_with_classes_splits_sizes_modes_and_conversion_notes(
    tmp_path: Path, digits: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path, {"a": 6, "b": 4}, digits)
    Image.fromarray(np.dstack([rgb_of(digits[1]), digits[1]])).resize((40, 30)).save(tmp_path / "b" / "rgba.png")
    (tmp_path / "b" / "wide.png").write_bytes(png16(digits[2].astype(np.uint16) * 257))
    with caplog.at_level(logging.INFO):
        ImageFolderDataModule(str(tmp_path), val_size=2, test_size=0, **SMALL).setup("fit")
    log = caplog.text
    assert "2 classes (multiclass): a, b" in log
    assert "train: 10 images (per class: a 5, b 5)" in log and "val: 2 images (per class: a 1, b 1)" in log
    assert "test: no images" in log
    assert "28x28, 40x30" in log and "L 10, I;16 1, RGBA 1" in log.replace("RGBA 1, I;16 1", "I;16 1, RGBA 1")
    assert "1 RGBA image(s)" in log and "alpha channel dropped" in log and "(lossy)" in log
    assert "1 I;16 image(s)" in log and "precision kept" in log
    assert "grayscale repeated into 3 equal channels" in log


# -- bad input -------------------------------------------------------------------------------------------------------
def _png_bytes(digit: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg_bytes(digit: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb_of(digit)).resize((64, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()


BROKEN = {
    "truncated.png": lambda d: _png_bytes(d)[: len(_png_bytes(d)) // 2],
    "truncated.jpg": lambda d: _jpg_bytes(d)[: len(_jpg_bytes(d)) * 2 // 3],
    "corrupt.png": lambda d: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "zero-byte.jpg": lambda d: b"",
    "text-named.png": lambda d: b"this is not an image\n",
}


@pytest.mark.parametrize("name", BROKEN)
def test_unreadable_image_is_an_error_naming_it_or_a_counted_skip(
    tmp_path: Path, digits: np.ndarray, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path, {"a": 4, "b": 4}, digits)
    bad = tmp_path / "b" / name
    bad.write_bytes(BROKEN[name](digits[5]))
    with pytest.raises(ImageDataError) as error:
        ImageFolderDataModule(str(tmp_path), **SMALL).setup("fit")
    assert str(bad) in str(error.value) and "Fix:" in str(error.value) and "bad_input: skip" in str(error.value)
    with caplog.at_level(logging.INFO):
        dm = ImageFolderDataModule(str(tmp_path), bad_input="skip", **SMALL)
        dm.setup("fit")
    assert sum(len(s.infos) for s in dm.index["splits"].values()) == 8
    assert "skipped 1 unreadable image(s)" in caplog.text and str(bad) in caplog.text


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: (r / "a" / "notes.txt").write_text("x"), r"non-image file.*a/notes\.txt"),
        (lambda r: (r / "c").mkdir(), r"empty class folder.*/c holds no images"),
        (lambda r: Image.new("L", (8, 8)).save(r / "stray.png"), r"image outside a class folder.*stray\.png"),
    ],
    ids=["non-image-file", "empty-class-folder", "image-outside-class"],
)
def test_stray_files_and_empty_folders_are_errors_or_counted_skips(
    tmp_path: Path, digits: np.ndarray, make, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path, {"a": 4, "b": 4}, digits)
    make(tmp_path)
    with pytest.raises(ImageDataError, match=expected + r".*Fix:"):
        _ = ImageFolderDataModule(str(tmp_path), **SMALL).num_classes
    with caplog.at_level(logging.INFO):
        dm = ImageFolderDataModule(str(tmp_path), bad_input="skip", **SMALL)
        assert dm.class_names == ["a", "b"]
    assert "skipped 1 " in caplog.text


def test_a_class_in_val_that_train_lacks_is_an_error_naming_the_folder(tmp_path: Path, digits: np.ndarray) -> None:
    make_folder(tmp_path / "train", {"a": 4, "b": 4}, digits)
    make_folder(tmp_path / "val", {"a": 1, "zebra": 2}, digits, start=20)
    with pytest.raises(ImageDataError, match=r"class missing from train.*val/zebra \(2 images.*Fix:"):
        _ = ImageFolderDataModule(str(tmp_path), **SMALL).class_names
    dm = ImageFolderDataModule(str(tmp_path), bad_input="skip", **SMALL)
    assert dm.class_names == ["a", "b"] and labels_of(dm, "val") == [0]


def test_hidden_and_system_files_are_skipped_and_counted_readme_is_listed(
    tmp_path: Path, digits: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder(tmp_path, {"a": 4, "b": 4}, digits)
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (tmp_path / "b" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork beside an image
    (tmp_path / "b" / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # beside the class folders too
    (tmp_path / "README.md").write_text("my photos")
    with caplog.at_level(logging.INFO):
        dm = ImageFolderDataModule(str(tmp_path), **SMALL)
        assert dm.num_classes == 2
    assert "skipped 5 hidden or system file(s)" in caplog.text
    assert "not used: 1 file(s) outside the class folders" in caplog.text and "README.md" in caplog.text


def test_missing_or_unset_data_dir_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"needs data_dir.*Fix: --data\.init_args\.data_dir"):
        ImageFolderDataModule(None)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'} does not exist.*Fix"):
        _ = ImageFolderDataModule(str(tmp_path / "nope")).num_classes


def test_settings_that_cannot_take_effect_are_refused() -> None:
    with pytest.raises(ValueError, match="persistent_workers.*Fix"):
        ImageFolderDataModule("x", num_workers=0, persistent_workers=True)
    with pytest.raises(ValueError, match="both set.*Fix"):
        ImageFolderDataModule("x", normalize="imagenet", mean=[0.5], std=[0.2])
    with pytest.raises(ValueError, match="auto_augment.*Fix"):
        ImageFolderDataModule("x", auto_augment="auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels.*Fix"):
        ImageFolderDataModule("x", in_channels=4)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory.*Fix"):
            ImageFolderDataModule("x", pin_memory=True)


# -- normalization ---------------------------------------------------------------------------------------------------
def constant_folder(root: Path, value: int = 128) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (20, 20), (value, value // 2, 255 - value)).save(root / name / f"{k}.png")
    return root


def first_val_image(dm: ImageFolderDataModule) -> torch.Tensor:
    dm.setup("fit")
    return dm.val_set[0][0]


def test_normalization_presets_and_explicit_values(tmp_path: Path) -> None:
    root = constant_folder(tmp_path)
    pixel = torch.tensor([128, 64, 127]) / 255
    kwargs = {**SMALL, "val_size": 1, "test_size": 0}
    x = first_val_image(ImageFolderDataModule(str(root), **kwargs))  # default: imagenet
    assert torch.allclose(x[:, 0, 0], (pixel - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD), atol=1e-5)
    x = first_val_image(ImageFolderDataModule(str(root), normalize="none", **kwargs))
    assert torch.allclose(x[:, 0, 0], pixel, atol=1e-6)
    x = first_val_image(ImageFolderDataModule(str(root), mean=[0.5, 0.5, 0.5], std=[0.25], **kwargs))
    assert torch.allclose(x[:, 0, 0], (pixel - 0.5) / 0.25, atol=1e-5)
    gray = first_val_image(ImageFolderDataModule(str(root), in_channels=1, **kwargs))
    assert gray.shape == (1, 16, 16)  # imagenet for one channel: the averages 0.449 / 0.226


def test_data_statistics_are_computed_once_and_cached_keyed_by_the_files(
    tmp_path: Path, digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "data", {"a": 6, "b": 6}, digits)
    kwargs = {**SMALL, "val_size": 2, "test_size": 0, "normalize": "data", "image_size": 28, "crop_fraction": 1.0}
    dm = ImageFolderDataModule(str(root), **kwargs)
    dm.prepare_data()
    train = np.stack([np.asarray(Image.open(i.path)) for i in dm.index["splits"]["train"].infos]) / 255
    assert np.allclose(dm.mean, [train.mean()] * 3, atol=1e-5) and np.allclose(dm.std, [train.std()] * 3, atol=1e-5)
    cached = list((tmp_path / "cache" / "image_stats").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["images"] == 10
    # a second datamodule on the same files reads the cache (computing would fail here)
    monkeypatch.setattr("datamodules.images.PhotoDataset.__getitem__", lambda *a: pytest.fail("recomputed"))
    again = ImageFolderDataModule(str(root), **kwargs)
    again.prepare_data()
    assert again.mean == dm.mean and again.std == dm.std
    # other files: another key
    monkeypatch.undo()
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    make_folder(root, {"a": 2}, digits, start=50)
    ImageFolderDataModule(str(root), **kwargs).prepare_data()
    assert len(list((tmp_path / "cache" / "image_stats").glob("*.json"))) == 2
    x = first_val_image(again)
    assert abs(float(x.mean())) < 1.5  # normalized by the data's own statistics


# -- augmentation: the training split only -----------------------------------------------------------------------
def test_augmentation_touches_the_training_split_only(tmp_path: Path, digits: np.ndarray) -> None:
    root = make_folder(tmp_path, {"a": 6, "b": 6}, digits)
    dm = ImageFolderDataModule(str(root), auto_augment="trivial", random_erasing=0.5, val_size=2, test_size=2,
                               **SMALL)  # fmt: skip
    dm.setup(None)
    torch.manual_seed(0)
    train_draws = [dm.train_set[0][0] for _ in range(6)]
    assert any(not torch.equal(train_draws[0], t) for t in train_draws[1:])
    for dataset in (dm.val_set, dm.test_set):
        assert torch.equal(dataset[0][0], dataset[0][0]) and torch.equal(dataset[1][0], dataset[1][0])
    val_batches = [next(iter(dm.val_dataloader()))[0] for _ in range(2)]
    assert torch.equal(*val_batches)
    names = {type(t).__name__ for t in dm.train_set.transform.transforms}
    assert {"RandomResizedCrop", "RandomHorizontalFlip", "TrivialAugmentWide", "RandomErasing"} <= names
    eval_names = {type(t).__name__ for t in dm.val_set.transform.transforms}
    assert eval_names.isdisjoint({"RandomResizedCrop", "RandomHorizontalFlip", "TrivialAugmentWide", "RandomErasing"})
    plain = ImageFolderDataModule(str(root), augment=False, val_size=2, test_size=2, **SMALL)
    plain.setup("fit")
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


# -- class balance ---------------------------------------------------------------------------------------------------
def test_class_weights_are_inverse_frequency_with_mean_one(tmp_path: Path, digits: np.ndarray) -> None:
    root = make_folder(tmp_path, {"common": 20, "rare": 4}, digits)
    dm = ImageFolderDataModule(str(root), balance="loss", val_size=0, test_size=0, **SMALL)
    assert dm.class_counts == [20, 4]
    assert dm.class_weights == pytest.approx([(1 / 20) / 0.15, (1 / 4) / 0.15])
    assert np.mean(dm.class_weights) == pytest.approx(1.0)
    assert ImageFolderDataModule(str(root), val_size=0, test_size=0, **SMALL).class_weights is None


def test_weighted_sampler_draws_rare_classes_more_often(tmp_path: Path, digits: np.ndarray) -> None:
    root = make_folder(tmp_path, {"common": 20, "rare": 4}, digits)
    dm = ImageFolderDataModule(str(root), balance="sampler", val_size=0, test_size=0, **SMALL)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert type(loader.sampler).__name__ == "WeightedRandomSampler" and loader.sampler.replacement
    assert loader.sampler.num_samples == 24
    torch.manual_seed(0)
    labels = dm.train_set.targets[[i for _ in range(40) for i in loader.sampler]]
    assert 0.4 < float((labels == 1).float().mean()) < 0.6  # 4 of 24 (0.17) without the sampler
    images, batch_labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and len(batch_labels) == 4
    plain = ImageFolderDataModule(str(root), val_size=0, test_size=0, **SMALL)
    plain.setup("fit")
    assert type(plain.train_dataloader().sampler).__name__ == "RandomSampler"


def test_weighted_sampler_is_shared_out_under_ddp_or_refused(tmp_path: Path, digits: np.ndarray) -> None:
    from pytorch_lightning.trainer.connectors.data_connector import _get_distributed_sampler
    from pytorch_lightning.utilities.data import _update_dataloader

    from datamodules.distributed import ResumableDataLoader

    root = make_folder(tmp_path, {"common": 20, "rare": 4}, digits)
    dm = ImageFolderDataModule(str(root), balance="sampler", val_size=0, test_size=0, **SMALL)
    dm.setup("fit")
    loader = dm.train_dataloader()
    # what Lightning does to a training loader under DDP with 2 processes: each takes half of one weighted draw,
    # and the loader stays resumable
    shares = []
    for rank in (0, 1):
        torch.manual_seed(0)
        sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank)
        assert type(sampler).__name__ == "DistributedSamplerWrapper"
        replaced = _update_dataloader(loader, sampler)
        assert isinstance(replaced, ResumableDataLoader)
        shares.append(list(replaced.sampler))
    assert len(shares[0]) == len(shares[1]) == 12
    # use_distributed_sampler: false would give every process a whole weighted epoch: refused
    dm.trainer = SimpleNamespace(world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
    with pytest.raises(ValueError, match=r"use_distributed_sampler.*Fix"):
        dm.train_dataloader()


def test_header_probe_of_a_real_digit(tmp_path: Path, digits: np.ndarray) -> None:
    path = tmp_path / "d.png"
    Image.fromarray(digits[7]).save(path)
    assert probe_image(path) == ImageInfo(path, "PNG", "L", 28, 28, 1)
