"""Mask R-CNN through the CLI: fit, test and predict of ``configs/instance/nuclei_maskrcnn_mobilenet.yaml`` on real
DSB2018 nuclei (checkpoint, the instance report, label PNGs, outlines and COCO results with RLE masks), and a
``fast_dev_run`` fit of ``configs/instance/coco_maskrcnn_resnet50.yaml`` on the COCO subset's polygon masks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import _require
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TINY = ["--model.init_args.image_size=128", "--data.init_args.crop_size=96", "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=2", "--data.init_args.val_size=2"]  # fmt: skip
# the config validates every 5th epoch: every epoch here, so that the monitored val/dsb_score exists
FIT = ["--trainer.max_steps=2", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
       "--trainer.limit_val_batches=2", "--trainer.check_val_every_n_epoch=1",
       "--trainer.num_sanity_val_steps=0"]  # fmt: skip
# Two steps from scratch leave detections far below the config's thresholds; predict lowers them (the command line
# replaces the checkpoint's values) so that it has instances to write and the files can be checked.
FAINT = ["--model.init_args.score_threshold=0.0", "--model.init_args.mask_threshold=0.05"]


def tiny_nuclei(root: Path, count: int = 4) -> Path:
    """A DSB2018 folder of ``count`` real 256 x 256 images (links into the shared copy, fewest nuclei first): each
    command decodes every image of its data set at setup, and the whole set's 119 would take most of the time."""
    source = _require("dsb2018_nuclei") / "dsb2018_nuclei" / "stage1_train"
    small = []
    for folder in sorted(source.iterdir()):
        with Image.open(next((folder / "images").iterdir())) as image:
            if image.size == (256, 256):
                small.append((len(list((folder / "masks").iterdir())), folder.name))
    target = root / "dsb2018_nuclei" / "stage1_train"
    target.mkdir(parents=True)
    for _, name in sorted(small)[:count]:
        (target / name).symlink_to(source / name, target_is_directory=True)
    return root


def test_nuclei_mask_rcnn_fits_tests_and_predicts_through_the_cli(tmp_path):
    data_root = tiny_nuclei(tmp_path / "data")
    common = ["--config", str(ROOT / "configs/instance/nuclei_maskrcnn_mobilenet.yaml"),
              f"--data.init_args.data_dir={data_root}", *TINY, *QUIET]  # fmt: skip
    fit = main(["fit", *common, *FIT, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    assert ckpt.is_file() and fit.trainer.global_step == 2
    assert "val/dsb_score" in fit.trainer.callback_metrics  # what the config's ModelCheckpoint monitors

    test = main(["test", *common, f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=2"])
    report = ckpt.parent / f"report_{ckpt.stem}_NucleiInstanceDataModule"
    summary = json.loads((report / "metrics.json").read_text())
    assert summary["num_samples"] == 2
    assert 0.0 <= summary["report"]["dsb_score"] <= 1.0
    assert summary["report"]["dsb_score"] == summary["metrics"]["test/dsb_score"]
    assert {"f1_50", "mask_map", "mask_map_50", "merged", "split"} <= summary["report"].keys()
    assert (report / "dsb_score_vs_iou.png").is_file() and list(report.glob("best_*.png"))
    assert "## Instance metrics" in (report / "report.md").read_text()
    assert test.model.class_names == ["nucleus"]  # linked from the datamodule

    main(["predict", *common, f"--ckpt_path={ckpt}", *FAINT])
    predictions = ckpt.parent / f"predict_{ckpt.stem}_NucleiInstanceDataModule"
    val_paths = [str(s.path) for s in fit.datamodule.val_images]
    results = json.loads((predictions / "predictions.json").read_text())
    assert results, "no instance predicted even at the lowered thresholds"
    for path in val_paths:
        stem = Path(path).stem
        with Image.open(predictions / f"{stem}.png") as picture:
            assert picture.mode.startswith("I;16") or picture.mode == "I"  # a 16-bit label PNG
            labels = np.asarray(picture)
        with Image.open(path) as original:
            assert labels.shape == (original.height, original.width)
        mine = [r for r in results if r["file_name"] == path]
        instances = [int(k) for k in np.unique(labels) if k > 0]
        assert instances == list(range(1, len(instances) + 1))  # 0 background, instances 1..K, no gap
        assert len(mine) == len(instances)  # one COCO result per instance
        with Image.open(predictions / f"{stem}_outlines.png") as outlines:
            assert outlines.mode == "RGB" and outlines.size == (labels.shape[1], labels.shape[0])
    from pycocotools import mask as mask_utils

    for result in results[:20]:
        assert {"image_id", "category_id", "segmentation", "score", "bbox"} <= result.keys()
        assert set(result["segmentation"]) == {"size", "counts"} and isinstance(result["segmentation"]["counts"], str)
        assert 0.0 <= result["score"] <= 1.0 and len(result["bbox"]) == 4
        assert mask_utils.area(result["segmentation"]) > 0


def test_coco_mask_rcnn_trains_on_coco_masks_with_fast_dev_run(tmp_path):
    data_root = _require("coco_val2017_subset")
    fit = main(["fit", "--config", str(ROOT / "configs/instance/coco_maskrcnn_resnet50.yaml"),
                f"--data.init_args.data_dir={data_root}", "--data.init_args.num_workers=0",
                "--data.init_args.batch_size=1", "--model.init_args.image_size=128", "--trainer.fast_dev_run=true",
                *QUIET])  # fmt: skip
    assert fit.trainer.global_step == 1
    logged = fit.trainer.callback_metrics
    # torchvision adds the true boxes to the proposals, so a batch with objects gives a mask loss from the first step
    assert float(logged["train/loss_mask"]) > 0 and math.isfinite(float(logged["train/loss_mask"]))
    assert {"val/mask_map", "val/dsb_score"} <= logged.keys()
