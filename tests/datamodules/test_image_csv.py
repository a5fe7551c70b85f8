"""ImageCSVDataModule: single-label, multi-label (0/1 columns and separated labels), the split column, TSV and sniffed
delimiters, and every bad row, on tiny tables of real MNIST digits written in tmp_path."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import ImageCSVDataModule
from datamodules.images import ImageDataError
from tests.datamodules.test_image_folder import digits  # noqa: F401  (the session fixture of real digits)

SMALL = {"image_size": 16, "num_workers": 0, "batch_size": 4}


def write_images(folder: Path, digits: np.ndarray, n: int) -> list[str]:  # noqa: F811
    """``n`` digit PNGs in ``folder/img``; their paths relative to ``folder``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(n):
        Image.fromarray(digits[k]).save(folder / "img" / f"{k}.png")
        names.append(f"img/{k}.png")
    return names


def write_table(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    path.write_text("\n".join(delimiter.join(str(v) for v in row) for row in [header, *rows]) + "\n")
    return path


def targets(dm: ImageCSVDataModule, split: str) -> dict[str, object]:
    """``{file name: target}`` of one split."""
    s = dm.index["splits"][split]
    return {i.path.name: t.tolist() for i, t in zip(s.infos, s.targets, strict=True)}


# -- single-label ------------------------------------------------------------------------------------------------------
def test_one_label_column_is_multiclass_with_sorted_class_names(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 20)
    labels = ["zebra", "ant", "moth", "ant"] * 5
    table = write_table(tmp_path / "labels.csv", ["filename", "species"], list(zip(names, labels, strict=True)))
    dm = ImageCSVDataModule(str(table), val_size=0.2, test_size=0.2, **SMALL)
    assert dm.class_names == ["ant", "moth", "zebra"] and dm.task == "multiclass" and dm.num_classes == 3
    every = {**targets(dm, "train"), **targets(dm, "val"), **targets(dm, "test")}
    assert every == {f"{k}.png": ["ant", "moth", "zebra"].index(labels[k]) for k in range(20)}
    assert Counter(targets(dm, "val").values()) == {0: 2, 1: 1, 2: 1}  # stratified: 10 ant, 5 moth, 5 zebra
    dm.setup("fit")
    images, y = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and y.dtype == torch.int64


def test_integer_labels_sort_numerically(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 6)
    table = write_table(tmp_path / "t.csv", ["image", "label"], list(zip(names, [10, 2, 1, 10, 2, 1], strict=True)))
    assert ImageCSVDataModule(str(table), val_size=0, test_size=0, **SMALL).class_names == ["1", "2", "10"]


# -- multi-label -------------------------------------------------------------------------------------------------------
def test_zero_one_columns_are_multilabel_multi_hot_targets(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 12)
    hot = [[k % 2, int(k < 4), int(k % 3 == 0)] for k in range(12)]
    table = write_table(tmp_path / "t.csv", ["image", "even", "small", "third"],
                        [[n, *h] for n, h in zip(names, hot, strict=True)])  # fmt: skip
    dm = ImageCSVDataModule(str(table), val_size=0, test_size=0, balance="loss", **SMALL)
    assert dm.task == "multilabel" and dm.class_names == ["even", "small", "third"]  # the columns, in order
    assert targets(dm, "train") == {f"{k}.png": [float(v) for v in hot[k]] for k in range(12)}
    assert dm.class_counts == [6, 4, 4]
    assert dm.class_weights == pytest.approx(list((1 / np.array([6, 4, 4])) / (1 / np.array([6, 4, 4])).mean()))
    dm.setup("fit")
    _, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float32 and y.shape == (4, 3)


def test_separated_labels_are_multilabel(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 5)
    labels = ["cat|dog", "dog", "", "bird | cat", "cat"]
    table = write_table(tmp_path / "t.csv", ["image", "tags"], list(zip(names, labels, strict=True)))
    dm = ImageCSVDataModule(str(table), label_column="tags", label_separator="|", val_size=0, test_size=0, **SMALL)
    assert dm.task == "multilabel" and dm.class_names == ["bird", "cat", "dog"]
    assert targets(dm, "train") == {"0.png": [0, 1, 1], "1.png": [0, 0, 1], "2.png": [0, 0, 0], "3.png": [1, 1, 0],
                                    "4.png": [0, 1, 0]}  # fmt: skip
    assert dm.class_counts == [1, 3, 2]


def test_multilabel_split_is_seeded_and_stratified_by_the_rarest_label(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 40)
    hot = [[1, int(k % 10 == 0)] for k in range(40)]  # "rare" on 4 rows, all of which also have "common"
    rows = [[n, *h] for n, h in zip(names, hot, strict=True)]
    table = write_table(tmp_path / "t.csv", ["image", "common", "rare"], rows)
    dm = ImageCSVDataModule(str(table), val_size=0.25, test_size=0.25, **SMALL)
    again = ImageCSVDataModule(str(table), val_size=0.25, test_size=0.25, **SMALL)
    assert targets(dm, "val") == targets(again, "val")
    for split in ("val", "test"):
        assert sum(t[1] for t in targets(dm, split).values()) == 1  # 4 rare rows x 0.25, grouped by the rare label


def test_task_multiclass_accepts_one_hot_columns_and_refuses_two_ones(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 4)
    rows = [[names[0], 1, 0], [names[1], 0, 1], [names[2], 1, 0], [names[3], 0, 1]]
    table = write_table(tmp_path / "t.csv", ["image", "a", "b"], rows)
    dm = ImageCSVDataModule(str(table), task="multiclass", val_size=0, test_size=0, **SMALL)
    assert dm.task == "multiclass" and targets(dm, "train") == {"0.png": 0, "1.png": 1, "2.png": 0, "3.png": 1}
    rows[2] = [names[2], 1, 1]
    write_table(table, ["image", "a", "b"], rows)
    with pytest.raises(ImageDataError, match=r"line 4 of .*2 labels.*exactly one.*Fix"):
        _ = ImageCSVDataModule(str(table), task="multiclass", val_size=0, test_size=0, **SMALL).num_classes


# -- split column, delimiters, paths -----------------------------------------------------------------------------------
def test_split_column_assigns_rows_and_refuses_a_label_train_lacks(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 8)
    splits = ["train", "train", "train", "train", "val", "Validation", "test", "train"]
    labels = ["a", "b", "a", "b", "a", "b", "b", "a"]
    table = write_table(tmp_path / "t.csv", ["image", "label", "split"],
                        list(zip(names, labels, splits, strict=True)))  # fmt: skip
    dm = ImageCSVDataModule(str(table), **SMALL)  # split_column auto: the column named split
    assert sorted(targets(dm, "train")) == ["0.png", "1.png", "2.png", "3.png", "7.png"]
    assert targets(dm, "val") == {"4.png": 0, "5.png": 1} and targets(dm, "test") == {"6.png": 1}
    labels[6] = "ghost"
    write_table(table, ["image", "label", "split"], list(zip(names, labels, splits, strict=True)))
    with pytest.raises(ImageDataError, match=r"unknown label.*line 8 of .*6\.png, test.*'ghost'.*no train row.*Fix"):
        _ = ImageCSVDataModule(str(table), **SMALL).class_names
    dm = ImageCSVDataModule(str(table), bad_input="skip", **SMALL)
    assert dm.class_names == ["a", "b"] and targets(dm, "test") == {}


@pytest.mark.parametrize(("name", "delimiter"), [("t.tsv", "\t"), ("t.csv", ";"), ("t.txt", "\t")])
def test_tsv_by_extension_and_sniffed_delimiters(
    tmp_path: Path, digits: np.ndarray, name: str, delimiter: str  # noqa: F811
) -> None:
    names = write_images(tmp_path, digits, 4)
    rows = [[n, "x y" if k % 2 else "z"] for k, n in enumerate(names)]
    table = write_table(tmp_path / name, ["image", "label"], rows, delimiter)
    dm = ImageCSVDataModule(str(table), val_size=0, test_size=0, **SMALL)
    assert dm.class_names == ["x y", "z"] and len(targets(dm, "train")) == 4


def test_image_dir_is_found_in_the_working_directory_or_beside_the_table(
    tmp_path: Path, digits: np.ndarray, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    data = tmp_path / "data"
    write_images(data, digits, 4)
    rows = [[f"{k}.png", "a" if k % 2 else "b"] for k in range(4)]
    table = write_table(data / "t.csv", ["image", "label"], rows)
    monkeypatch.chdir(tmp_path)
    assert len(ImageCSVDataModule("data/t.csv", image_dir="data/img", val_size=0, test_size=0, **SMALL).index)
    assert len(ImageCSVDataModule(str(table), image_dir="img", val_size=0, test_size=0, **SMALL).index)
    with pytest.raises(FileNotFoundError, match=r"image_dir nowhere does not exist.*Fix"):
        _ = ImageCSVDataModule(str(table), image_dir="nowhere", **SMALL).num_classes


def test_an_ambiguous_table_names_its_columns(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 2)
    table = write_table(tmp_path / "t.csv", ["image", "label", "photographer"], [[n, "a", "bob"] for n in names])
    with pytest.raises(ImageDataError, match=r"which column holds the labels.*\['label', 'photographer'\].*Fix"):
        _ = ImageCSVDataModule(str(table), **SMALL).num_classes
    dm = ImageCSVDataModule(str(table), label_column="label", val_size=0, test_size=0, **SMALL)
    assert dm.class_names == ["a"]


# -- bad rows ----------------------------------------------------------------------------------------------------------
BAD_ROWS = {
    "missing-file": (["img/404.png", "a"], r"missing file.*line 6 of .*img/404\.png does not exist"),
    "malformed-row": (["img/0.png", "a", "extra"], r"malformed row.*line 6 of .* has 3 field\(s\), the header 2"),
    "duplicate-path": (["img/1.png", "b"], r"duplicate path.*line 6 of .* repeats img/1\.png of line 3"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_rows_are_errors_naming_the_line_or_counted_skips(
    tmp_path: Path, digits: np.ndarray, case: str, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    names = write_images(tmp_path, digits, 4)
    row, expected = BAD_ROWS[case]
    table = write_table(tmp_path / "t.csv", ["image", "label"], [[n, "ab"[k % 2]] for k, n in enumerate(names)] + [row])
    with pytest.raises(ImageDataError, match=expected + r".*Fix:.*bad_input: skip"):
        _ = ImageCSVDataModule(str(table), **SMALL).num_classes
    with caplog.at_level(logging.INFO):
        dm = ImageCSVDataModule(str(table), bad_input="skip", val_size=0, test_size=0, **SMALL)
        assert len(targets(dm, "train")) == 4
    assert f"skipped 1 {case.replace('-', ' ')}(s)" in caplog.text


def test_a_zero_one_column_holding_2_is_an_unknown_label(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 3)
    table = write_table(tmp_path / "t.csv", ["image", "a", "b"], [[names[0], 1, 0], [names[1], 0, 2], [names[2], 1, 1]])
    with pytest.raises(ImageDataError, match=r"unknown label.*line 3 of .*column 'b' holds '2', not 0 or 1.*Fix"):
        _ = ImageCSVDataModule(str(table), **SMALL).num_classes
    dm = ImageCSVDataModule(str(table), bad_input="skip", val_size=0, test_size=0, **SMALL)
    assert sorted(targets(dm, "train")) == ["0.png", "2.png"]


def test_an_unreadable_image_is_named_with_its_row(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 3)
    (tmp_path / "img" / "1.png").write_bytes(b"")
    table = write_table(tmp_path / "t.csv", ["image", "label"], [[n, "a"] for n in names])
    with pytest.raises(ImageDataError, match=r"line 3 of .*t\.csv: .*img/1\.png is empty \(0 bytes\).*Fix"):
        ImageCSVDataModule(str(table), **SMALL).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"label_column": "class"}, r"no column\(s\) \['class'\] \(label_column\); its columns are \['image', 'lab"),
        ({"label_columns": ["a", "b"]}, r"no column\(s\) \['a', 'b'\] \(label_columns\); its columns are"),
        ({"path_column": "file"}, r"no column 'file' \(path_column\); its columns are \['image', 'label'\]"),
        ({"split_column": "fold"}, r"no column 'fold' \(split_column\)"),
    ],
    ids=["label_column", "label_columns", "path_column", "split_column"],
)
def test_a_missing_column_names_the_columns_present(
    tmp_path: Path, digits: np.ndarray, kwargs: dict, expected: str  # noqa: F811
) -> None:
    names = write_images(tmp_path, digits, 2)
    table = write_table(tmp_path / "t.csv", ["image", "label"], [[n, "a"] for n in names])
    with pytest.raises(ImageDataError, match=expected + r".*Fix"):
        _ = ImageCSVDataModule(str(table), **kwargs, **SMALL).num_classes


def test_an_unknown_split_value_and_an_empty_label_are_named(tmp_path: Path, digits: np.ndarray) -> None:  # noqa: F811
    names = write_images(tmp_path, digits, 4)
    rows = [[names[0], "a", "train"], [names[1], "b", "train"], [names[2], "a", "holdout"], [names[3], "", "train"]]
    table = write_table(tmp_path / "t.csv", ["image", "label", "split"], rows)
    with pytest.raises(ImageDataError) as error:
        _ = ImageCSVDataModule(str(table), **SMALL).num_classes
    message = str(error.value)
    assert "unknown split(s): line 4 of" in message and "'holdout'" in message
    assert "empty label(s): line 5 of" in message and message.count("Fix:") == 2


def test_a_missing_or_unset_table_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"needs csv.*Fix: --data\.init_args\.csv"):
        ImageCSVDataModule(None)
    with pytest.raises(FileNotFoundError, match=r"csv .*labels\.csv does not exist.*Fix"):
        _ = ImageCSVDataModule(str(tmp_path / "labels.csv")).num_classes
