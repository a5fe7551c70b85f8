"""bench/segmentation_chapter.py end to end on ISBI 2012: two routes with a budget of a few CPU seconds each, then
``--collect``; results go to a temporary folder, never into bench/results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import segmentation_chapter as chapter

NUMBERS = (
    "parameters", "steps", "train_images", "train_seconds", "train_cpu_seconds", "train_images_per_s",
    "train_images_per_cpu_s", "pixel_error", "isbi_pixel_error", "iou", "iou_foreground", "rand_error",
    "inference_images", "inference_images_per_s", "inference_images_per_cpu_s",
)  # fmt: skip
ROUTES = ("sliding_window", "unet_same")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_routes_cover_the_chapter_in_its_order():
    assert list(chapter.ROUTES)[:5] == ["sliding_window", "fcn32s", "fcn16s", "fcn8s", "fcn_resnet50"]
    assert list(chapter.ROUTES)[-3:] == ["dilated_context", "pspnet", "unet_same"]
    upsampling = {r.network_kwargs["upsampling"] for r in chapter.ROUTES.values() if r.valid}
    assert upsampling == {"transposed", "nearest", "bilinear", "bed_of_nails", "max_unpool"}
    # PSPNet trains from a random initialisation: nothing to download
    assert chapter.ROUTES["pspnet"].network_kwargs["encoder_weights"] is None


def test_two_routes_train_score_and_collect_into_one_table(isbi_root: Path, tmp_path: Path, one_thread):
    for route in reversed(ROUTES):  # written out of order: the table follows ROUTES, not the files
        result = chapter.main(["--dataset", "isbi", "--route", route, "--minutes", "0.02", "--threads", "1",
                               "--data-dir", str(isbi_root), "--results-dir", str(tmp_path)])  # fmt: skip
        assert result is not None
        for key in NUMBERS:
            assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
        assert result["steps"] >= 1 and result["train_images"] == result["steps"] * chapter.ROUTES[route].batch
        assert result["inference_images"] == 4  # the whole validation slices
        assert 0 <= result["pixel_error"] <= 1 and 0 <= result["iou"] <= 1
        part = json.loads(chapter.part_path(tmp_path, "isbi", route).read_text())
        assert part["args"]["minutes"] == 0.02 and part["machine"]["cpu"]
    summary = chapter.main(["--collect", "--results-dir", str(tmp_path)])
    assert summary is not None
    assert [r["route"] for r in summary["results"]["isbi"]] == list(ROUTES)
    assert summary["results"]["dsb"] == [] and "dsb/segnet" in summary["missing"]
    lines = summary["tables"]["isbi"].splitlines()
    assert "ISBI pixel error" in lines[0] and lines[0].rstrip().endswith("what it shows |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == list(ROUTES)
    written = json.loads((tmp_path / "segmentation_chapter.json").read_text())
    assert written["tables"] == summary["tables"]
