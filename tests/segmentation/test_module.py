"""SemanticSegmenter: training lowers the loss on real ISBI crops; predict writes masks and overlays;
the command line runs fit and predict from the shipped config."""

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import ISBI2012DataModule, SegmentationFolderDataModule
from zoo.cli import main
from zoo.core.registry import UnknownModelError
from zoo.segmentation import SemanticSegmenter

ROOT = Path(__file__).resolve().parents[2]
TRAINER = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _tiny_unet(**kwargs) -> SemanticSegmenter:
    return SemanticSegmenter(
        "unet",
        num_classes=2,
        in_channels=1,
        network_kwargs={"base_channels": 8, "depth": 2, "dropout": 0.0},
        **kwargs,
    )


def test_training_on_real_isbi_crops_lowers_the_loss(isbi_root):
    pl.seed_everything(0)
    # depth 2 valid U-Net: 92x92 crops -> 52x52 outputs; the weighted loss of the paper
    dm = ISBI2012DataModule(
        data_dir=str(isbi_root), crop_size=92, pad=20, crops_per_image=1, batch_size=4, augment=False, weight_maps=True
    )
    dm.setup("fit")
    model = _tiny_unet(loss="weighted_ce", optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    fixed = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        before = model.compute_loss(model.net.eval()(fixed["image"]), fixed)[0].item()
    trainer = pl.Trainer(max_epochs=6, limit_val_batches=0, **TRAINER)
    trainer.fit(model, dm)
    with torch.no_grad():
        after = model.compute_loss(model.net.eval()(fixed["image"]), fixed)[0].item()
    assert after < 0.85 * before


def test_missing_weight_maps_and_unknown_network_are_clear_errors(isbi_root):
    dm = ISBI2012DataModule(data_dir=str(isbi_root), crop_size=92, pad=20, crops_per_image=1, batch_size=2)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **TRAINER)
    with pytest.raises(ValueError, match="weight_maps: true"):
        trainer.fit(_tiny_unet(loss="weighted_ce"), dm)
    with pytest.raises(UnknownModelError, match="Did you mean: unet"):
        SemanticSegmenter("unte")


def _folder(tmp_path: Path, sizes: list[tuple[int, int]]) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
        Image.fromarray((mask * 0.6 + 50).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i}.png")
    return tmp_path


def test_validation_and_predict_on_images_of_any_size(tmp_path):
    data = _folder(tmp_path / "data", [(70, 90), (33, 121), (64, 64), (101, 47)])
    dm = SegmentationFolderDataModule(
        data_dir=str(data), val_size=2, crop_size=44, pad=20, crops_per_image=1, batch_size=2, predict_dir="images"
    )
    model = _tiny_unet(tile_size=60, output_dir=str(tmp_path / "out"), class_names=dm.class_names)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="run")
    trainer = pl.Trainer(max_epochs=1, **{**TRAINER, "logger": logger})
    trainer.fit(model, dm)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "val/samples" in events.Tags()["images"]  # image | ground truth | prediction | weight map
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/pixel_error", "val/isbi_pixel_error", "val/rand_error", "val/iou", "val/dice",
                "val/iou_foreground"):
        assert key in metrics, key
    written = trainer.predict(model, dm)
    assert len(written) == 4
    for i, (h, w) in enumerate([(70, 90), (33, 121), (64, 64), (101, 47)]):
        mask = np.asarray(Image.open(tmp_path / "out" / f"{i}_mask.png"))
        overlay = Image.open(tmp_path / "out" / f"{i}_overlay.png")
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert overlay.size == (w, h) and overlay.mode == "RGB"


def test_cli_fit_then_predict_with_the_isbi_config(isbi_root, tmp_path):
    config = str(ROOT / "configs" / "segmentation" / "isbi_unet.yaml")
    common = [
        "--config",
        config,
        "--data.init_args.data_dir",
        str(isbi_root),
        "--model.init_args.network_kwargs",
        "{base_channels: 4, depth: 2, dropout: 0.0}",
        "--model.init_args.tile_size",
        "140",
        "--model.init_args.output_dir",
        str(tmp_path / "pred"),
        "--data.init_args.crop_size",
        "92",
        "--data.init_args.pad",
        "20",
    ]
    main(
        [
            "fit",
            *common,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--data.init_args.crops_per_image",
            "1",
            "--model.init_args.optimizer.lr",
            "0.001",
        ]
    )
    checkpoint = next((tmp_path / "runs").rglob("last.ckpt"))
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(checkpoint),
            "--trainer.logger",
            "false",
            "--data.init_args.predict_dir",
            str(isbi_root / "test" / "0.png"),
        ]
    )
    mask = np.asarray(Image.open(tmp_path / "pred" / "0_mask.png"))
    assert mask.shape == (512, 512) and (tmp_path / "pred" / "0_overlay.png").is_file()


def test_cli_names_close_networks_for_an_unknown_one():
    config = str(ROOT / "configs" / "segmentation" / "dsb2018_smp_unet.yaml")
    with pytest.raises(UnknownModelError, match="smp_unet"):
        main(["--config", config, "--model.init_args.network", "smp_unte"], run=False)


def test_checkpoint_reloads_after_the_encoder_weights_file_is_deleted(tmp_path):
    # The restore guard of ZooModule: load_from_checkpoint builds the network without reading encoder_weights
    # again (the checkpoint holds the trained weights), so the file may be gone.
    source = SemanticSegmenter("smp_unet", num_classes=2, in_channels=1, network_kwargs={"encoder_name": "resnet18"})
    weights = tmp_path / "encoder.pth"
    torch.save(source.net.encoder.state_dict(), weights)
    model = SemanticSegmenter(
        network="smp_unet",
        num_classes=2,
        in_channels=1,
        network_kwargs={"encoder_name": "resnet18", "encoder_weights": str(weights)},
    )
    torch.testing.assert_close(model.net.encoder.conv1.weight, source.net.encoder.conv1.weight)
    with torch.no_grad():
        for p in model.net.parameters():  # "trained": weights that differ from the file's
            p.add_(0.01)
    trainer = pl.Trainer(**TRAINER)
    trainer.strategy.connect(model)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    weights.unlink()
    restored = SemanticSegmenter.load_from_checkpoint(checkpoint, map_location="cpu")
    assert restored.hparams.network_kwargs["encoder_weights"] == str(weights)  # kept, as the run was configured
    saved = model.state_dict()
    assert restored.state_dict().keys() == saved.keys()
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    # outside a restore, a missing file is still an error naming it
    with pytest.raises(FileNotFoundError, match="encoder.pth"):
        SemanticSegmenter("smp_unet", network_kwargs={"encoder_name": "resnet18", "encoder_weights": str(weights)})
