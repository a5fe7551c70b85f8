"""Every shipped config parses and instantiates its model and datamodule (no data is read); every
trainer preset combines with a family config."""

from pathlib import Path

import pytest
from pytorch_lightning.strategies import DDPStrategy

from tests.conftest import shared_data_dir
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p not in PRESETS)


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.fixture(scope="module")
def user_images(tmp_path_factory) -> Path:
    """A user's own data, as the folder and CSV configs expect it: 3 classes x 4 real MNIST digits as PNG files in
    ``<class>/`` folders, and a multi-label CSV (0/1 columns) of the same files."""
    from PIL import Image

    from datamodules.mnist import MNISTDataModule

    root = tmp_path_factory.mktemp("user_images")
    images, labels = MNISTDataModule(data_dir=str(shared_data_dir()), download=False).load_split(train=False)
    rows = ["image,even,large"]
    for digit in (0, 1, 7):
        (root / "folder" / f"digit{digit}").mkdir(parents=True)
        for i in (labels == digit).nonzero().flatten()[:4].tolist():
            pixels = (images[i, 0] * 0.3081 + 0.1307).clamp(0, 1).mul(255).byte().numpy()  # undo mean_std
            Image.fromarray(pixels).save(root / "folder" / f"digit{digit}" / f"{i}.png")
            rows.append(f"folder/digit{digit}/{i}.png,{int(digit % 2 == 0)},{int(digit > 4)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


# The configs for a user's own data name it on the command line, as the README shows.
USER_DATA_ARGUMENTS = {
    "imagefolder_resnet18.yaml": lambda root: [f"--data.init_args.data_dir={root / 'folder'}"],
    "csv_multilabel_densenet121.yaml": lambda root: [f"--data.init_args.csv={root / 'labels.csv'}",
                                                     f"--data.init_args.image_dir={root}"],
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_instantiates(config, monkeypatch, request):
    # a COCO-format datamodule reads its annotation file's categories to link num_classes: give the configs'
    # relative data paths the shared data (the tests run in a tmp folder)
    shared = shared_data_dir()
    if shared is not None:
        monkeypatch.setenv("ZOO_DATA_DIR", str(shared))
    user_data = USER_DATA_ARGUMENTS.get(config.name)
    extra = user_data(request.getfixturevalue("user_images")) if user_data else []
    cli = main(["--config", str(config), "--trainer.logger=false", *extra], run=False)
    assert cli.model is not None and cli.datamodule is not None
    # data-derived arguments come from the datamodule, not typed twice
    assert getattr(cli.model, "num_classes", None) in (None, getattr(cli.datamodule, "num_classes", None))
    if hasattr(cli.datamodule, "task"):  # a table of several labels per image makes a multi-label classifier
        assert cli.model.hparams.task == cli.datamodule.task


def test_there_are_trainer_presets_for_each_scale():
    assert {p.stem for p in PRESETS} >= {"cpu", "gpu", "ddp_gpu", "ddp_gpu_syncbn", "slurm_multinode", "ddp_cpu"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_trainer_preset_combines_with_a_family_config(preset):
    import yaml

    wanted = yaml.safe_load(preset.read_text())["trainer"]
    # This machine has no GPU: the GPU presets are checked with the accelerator swapped for the CPU
    # (and bf16 autocast, which the CPU also has); everything else comes from the preset.
    overrides = ["--trainer.accelerator=cpu"] if wanted["accelerator"] == "gpu" else []
    if wanted["devices"] == -1:
        overrides.append("--trainer.devices=2")
    cli = main(
        ["--config", str(ROOT / "configs/segmentation/isbi_unet.yaml"), "--config", str(preset),
         "--trainer.logger=false", *overrides],
        run=False,
    )
    trainer = cli.trainer
    assert trainer.num_nodes == wanted["num_nodes"]
    assert isinstance(trainer.strategy, DDPStrategy) == (wanted["strategy"] == "ddp")
    assert trainer.precision == wanted["precision"]
    if "sync_batchnorm" in wanted:
        # Lightning converts BatchNorm to SyncBatchNorm at setup through the strategy's layer-sync plugin
        assert (getattr(trainer.strategy, "_layer_sync", None) is not None) == wanted["sync_batchnorm"]
    # the family config's own trainer settings survive the merge
    assert trainer.max_epochs == 100 and any(type(c).__name__ == "ModelCheckpoint" for c in trainer.callbacks)
