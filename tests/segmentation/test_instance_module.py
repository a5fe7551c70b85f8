"""InstanceSegmenter, the U-Net route of instance segmentation: perfect probabilities score a DSB score of 1.0
in validation and test; fit, test and predict run through the command line on real DSB2018 nuclei with the
three-class config and the weight-map config; a fresh process reloads both checkpoints to the same instances
and exports the U-Net (the semantic network: the watershed is Python and stays outside the exported file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.instance_targets import three_class_target
from datamodules.segmentation import collate_segmentation
from zoo.cli import main
from zoo.segmentation import InstanceSegmenter

ROOT = Path(__file__).resolve().parents[2]
TRAINER = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
# three of the smallest (256 x 256) DSB2018 images, 5 to 28 nuclei each
SMALL_IMAGES = (
    "05040e2e959c3f5632558fc9683fec88f0010026c555b499066346f67fdd0e13",
    "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9",
    "0b2e702f90aee4fff2bc6e4326308d50cf04701082e718d4f831c8959fbcda93",
)
CONFIGS = {
    "three_class": "configs/instance/nuclei_unet_instances.yaml",
    "weight_map": "configs/instance/nuclei_unet_weightmap_instances.yaml",
}


# -- perfect probabilities ---------------------------------------------------------------------------------------
class Oracle(InstanceSegmenter):
    """Its 'network output' is the image itself: images holding one-hot class maps give perfect probabilities."""

    def segment(self, images: torch.Tensor, flips: bool = False) -> torch.Tensor:
        return images * 50.0


def _labels(touching: bool) -> list[np.ndarray]:
    """Two hand-made label images: discs and rectangles, touching one another or not."""
    yy, xx = np.mgrid[:64, :80]
    first = np.zeros((64, 80), np.int32)
    first[(yy - 20) ** 2 + (xx - 18) ** 2 < 100] = 1
    first[(yy - 20) ** 2 + (xx - (37 if touching else 42)) ** 2 < 100] = 2  # overwrites the first disc's edge
    first[40:58, 10:30] = 3
    first[40:58, 30 if touching else 34 : 50] = 4
    second = np.zeros((64, 80), np.int32)
    second[5:25, 50:75] = 7  # ids need not be consecutive
    return [first, second]


def _oracle_batches(labels: list[np.ndarray], three_class: bool) -> DataLoader:
    items = []
    for k, lab in enumerate(labels):
        classes = three_class_target(lab) if three_class else (lab > 0).astype(np.uint8)
        onehot = np.eye(3 if three_class else 2, dtype=np.float32)[classes].transpose(2, 0, 1)
        items.append({"image": torch.from_numpy(onehot), "mask": torch.from_numpy(classes).long(),
                      "name": f"hand_made_{k}", "instances": torch.from_numpy(lab)})  # fmt: skip
    return DataLoader(items, batch_size=1, collate_fn=collate_segmentation)


@pytest.mark.parametrize(("num_classes", "touching"), [(3, True), (2, False)], ids=["three_class", "two_class"])
def test_perfect_probabilities_score_one_in_validation_and_test(num_classes, touching):
    labels = _labels(touching)
    model = Oracle(network="unet_same", num_classes=num_classes, in_channels=num_classes,
                   network_kwargs={"base_channels": 2, "depth": 1}, min_size=0)  # fmt: skip
    assert model.mode == ("three_class" if num_classes == 3 else "two_class") and model.monitor == "val/dsb_score"
    trainer = pl.Trainer(**TRAINER)
    metrics = trainer.validate(model, _oracle_batches(labels, num_classes == 3), verbose=False)[0]
    assert metrics["val/dsb_score"] == pytest.approx(1.0)
    assert metrics["val/f1_50"] == pytest.approx(1.0) and metrics["val/mask_map"] == pytest.approx(1.0)
    assert metrics["val/mask_map_50"] == pytest.approx(1.0)
    trainer.test(model, _oracle_batches(labels, num_classes == 3), verbose=False)
    result = model.last_test_result
    assert result["dsb"]["score"] == pytest.approx(1.0) and result["dsb"]["merged"] == result["dsb"]["split"] == 0
    assert [(r["name"], r["true_objects"], r["pred_objects"], r["dsb_score"]) for r in result["per_image"]] == [
        ("hand_made_0", 4, 4, 1.0), ("hand_made_1", 1, 1, 1.0)]  # fmt: skip
    best = result["examples"]["best"][0]
    assert best["pred"].dtype == np.uint16 and best["image"].dtype == np.uint8
    assert best["image"].shape == (64, 80, num_classes)  # the one-hot "image", as (H, W, C)


def test_touching_nuclei_without_a_gap_merge_in_the_two_class_route():
    # what the weight map is for: perfect two-class probabilities of touching objects leave nothing to cut them at
    model = Oracle(network="unet_same", num_classes=2, in_channels=2, network_kwargs={"base_channels": 2, "depth": 1})
    pl.Trainer(**TRAINER).test(model, _oracle_batches(_labels(touching=True), three_class=False), verbose=False)
    result = model.last_test_result
    assert result["dsb"]["merged"] >= 1 and result["per_image"][0]["dsb_score"] < 1.0
    assert result["examples"]["worst"][0]["name"] == "hand_made_0"


def test_a_num_classes_without_a_post_processing_is_refused():
    with pytest.raises(ValueError, match="target: three_class"):
        InstanceSegmenter(network="unet_same", num_classes=4, network_kwargs={"base_channels": 2, "depth": 1})


# -- the command line on real nuclei -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dsb(dsb_root, tmp_path_factory) -> Path:
    """A DSB2018 root of three real 256 x 256 images (two to train on, one to validate, test and predict)."""
    root = tmp_path_factory.mktemp("tiny_dsb")
    folder = root / "dsb2018_nuclei" / "stage1_train"
    folder.mkdir(parents=True)
    for name in SMALL_IMAGES:
        (folder / name).symlink_to(dsb_root / "stage1_train" / name, target_is_directory=True)
    return root


def _round_trip(config: str, data: Path, work: Path) -> tuple[Path, Path]:
    """fit (2 steps), test and predict from the fit's last checkpoint; returns (checkpoint, prediction folder)."""
    common = ["--config", str(ROOT / config), f"--data.init_args.data_dir={data}", "--data.init_args.val_size=1",
              "--data.init_args.crop_size=64", "--data.init_args.batch_size=2", "--data.init_args.crops_per_image=1",
              "--model.init_args.network_kwargs={base_channels: 4, depth: 2, batch_norm: true, dropout: 0.0}",
              "--model.init_args.tile_size=128", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"]  # fmt: skip
    fit = main(["fit", *common, "--trainer.max_steps=2", "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0",
                f"--trainer.logger.init_args.save_dir={work / 'runs'}"])  # fmt: skip
    assert fit.trainer.checkpoint_callback.monitor == "val/dsb_score"
    assert 0.0 <= float(fit.trainer.callback_metrics["val/dsb_score"]) <= 1.0
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    assert ckpt.is_file()
    test = main(["test", *common, f"--ckpt_path={ckpt}"])
    assert 0.0 <= float(test.trainer.callback_metrics["test/dsb_score"]) <= 1.0
    assert {"test/mask_map", "test/mask_map_50", "test/f1_50", "test/iou"} <= set(test.trainer.callback_metrics)
    result = test.model.last_test_result
    assert [r["name"] for r in result["per_image"]] == [s.name for s in test.datamodule.val_samples]
    assert len(result["dsb"]["score_per_threshold"]) == 10 and "map" in result["mask_coco"]
    # A foreground threshold of 0 (given at predict time: it wins over the checkpoint's) makes an untrained network
    # predict at least one object, so that the files below are checked with instances in them.
    predictions = work / "predictions"
    main(["predict", *common, f"--ckpt_path={ckpt}", f"--model.init_args.output_dir={predictions}",
          "--model.init_args.foreground_threshold=0.0"])  # fmt: skip
    return ckpt, predictions


def _check_predictions(folder: Path, stem: str) -> np.ndarray:
    with Image.open(folder / f"{stem}.png") as picture:
        assert picture.mode.startswith("I;16") or picture.mode == "I"  # 16-bit label image
        labels = np.array(picture)
    assert labels.shape == (256, 256)
    results = json.loads((folder / "predictions.json").read_text())
    mine = [r for r in results if Path(r["file_name"]).stem == stem]
    assert mine and set(range(1, len(mine) + 1)) <= set(np.unique(labels).tolist()) <= set(range(len(mine) + 1))
    assert all(isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [256, 256]
               and 0.0 <= r["score"] <= 1.0 for r in mine)  # fmt: skip
    assert (folder / f"{stem}_outlines.png").is_file()
    return labels


def test_the_cli_fits_tests_and_predicts_both_configs_and_a_fresh_process_reloads_and_exports(tiny_dsb, tmp_path):
    stem = SMALL_IMAGES[2]  # the validation image (val_size 1, split_seed 0)
    image = tiny_dsb / "dsb2018_nuclei" / "stage1_train" / stem / "images" / f"{stem}.png"
    runs = {}
    for kind, config in CONFIGS.items():
        ckpt, predictions = _round_trip(config, tiny_dsb, tmp_path / kind)
        runs[kind] = {"ckpt": str(ckpt), "labels": str(predictions / f"{stem}.png")}
        _check_predictions(predictions, stem)
    exported = tmp_path / "unet.pt"
    # One fresh process for both checks (a Python start with torch costs seconds): load_from_checkpoint gives the
    # instances predict wrote, and python -m zoo.export's main exports the three-class checkpoint's U-Net.
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from datamodules.segmentation import DSB2018DataModule, PredictImages
from zoo.segmentation import InstanceSegmenter
import zoo.export
runs = json.loads({json.dumps(json.dumps(runs))})
dm = DSB2018DataModule()
image = PredictImages([Path({str(image)!r})], 3, dm.mean, dm.std)[0]["image"][None]
for kind, run in runs.items():
    model = InstanceSegmenter.load_from_checkpoint(run["ckpt"], map_location="cpu", foreground_threshold=0.0).eval()
    labels, scores = model.predict_instances(image)[0]
    written = np.array(Image.open(run["labels"]))
    assert np.array_equal(labels, written), (kind, labels.max(), written.max())
    print("same instances", kind, model.mode, int(labels.max()))
sys.exit(zoo.export.main(["--ckpt", runs["three_class"]["ckpt"], "--format", "torchscript",
                          "--output", {str(exported)!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "same instances three_class three_class" in done.stdout
    assert "same instances weight_map two_class" in done.stdout
    report = json.loads(exported.with_name("unet.pt.json").read_text())
    assert report["exported"] and report["parity"]["passed"] and report["model"] == "zoo.segmentation.InstanceSegmenter"
    assert report["input"]["class_names"] == ["background", "interior", "boundary"]
