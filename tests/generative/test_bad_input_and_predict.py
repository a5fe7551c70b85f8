"""Bad input (wrong checkpoint type, wrong image range, NaN losses) and ``predict``'s outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from zoo.callbacks import GenerativePredictionWriter
from zoo.classification import ImageClassifier
from zoo.core.checkpoint import CheckpointError, check_checkpoint_class, checkpoint_model_class
from zoo.generative import GAN, VAE, AutoEncoder, NonFiniteLossError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def vae_checkpoint(tiny_images, make_trainer, tmp_path):
    model = VAE(latent_dim=4, metric_samples=0)
    trainer = make_trainer(max_steps=1, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, tiny_images())
    path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_predict_with_a_checkpoint_of_another_model_type_names_both_types(vae_checkpoint, tiny_images, make_trainer):
    trainer = make_trainer()
    with pytest.raises(CheckpointError, match=r"holds a zoo\.generative\.VAE, but zoo\.generative\.GAN was expected"):
        trainer.predict(GAN(), tiny_images(symmetric=True), ckpt_path=vae_checkpoint)
    with pytest.raises(CheckpointError, match=rf"checkpoint .*{vae_checkpoint.name} holds a zoo\.generative\.VAE, but"):
        GAN.load_from_checkpoint(vae_checkpoint)
    found = checkpoint_model_class(torch.load(vae_checkpoint, weights_only=True))
    with pytest.raises(CheckpointError, match="but zoo.generative.AutoEncoder was expected"):
        check_checkpoint_class(found, AutoEncoder, vae_checkpoint)
    check_checkpoint_class(found, VAE, vae_checkpoint)
    assert found == "zoo.generative.VAE"  # the re-exported path
    assert isinstance(VAE.load_from_checkpoint(vae_checkpoint), VAE)


def test_train_py_predict_with_a_checkpoint_of_another_model_type_is_an_error(vae_checkpoint, monkeypatch):
    from zoo.cli import main

    monkeypatch.setenv("ZOO_DATA_DIR", "/nonexistent")  # fails before any data is read
    config = Path(__file__).resolve().parents[2] / "configs" / "generative" / "mnist_gan.yaml"
    with pytest.raises(Exception, match=r"VAE.*GAN"):
        main(["predict", "--config", str(config), "--ckpt_path", str(vae_checkpoint), "--trainer.logger=false"])


def test_a_classifier_checkpoint_is_not_a_generative_model(tiny_images, make_trainer, tmp_path):
    classifier_trainer = make_trainer(max_steps=1, limit_val_batches=0)
    classifier_trainer.fit(ImageClassifier(network="convnet"), tiny_images())
    path = tmp_path / "classifier.ckpt"
    classifier_trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"holds a zoo\.classification\.ImageClassifier, but .*AutoEncoder"):
        make_trainer().predict(AutoEncoder(), tiny_images(), ckpt_path=path)


def test_predict_writes_a_sample_grid_and_the_tensors(vae_checkpoint, tiny_images, make_trainer, tmp_path):
    out = tmp_path / "predictions"
    writer = GenerativePredictionWriter(output_dir=str(out))
    make_trainer(callbacks=[writer]).predict(VAE(latent_dim=4), tiny_images(n=40), ckpt_path=vae_checkpoint)
    saved = torch.load(out / "predictions.pt")
    assert saved["samples"].shape == (40, 1, 28, 28)
    assert (out / "samples.png").is_file()


def test_an_autoencoder_predicts_reconstructions_and_anomaly_scores_without_a_configured_writer(
    tiny_images, make_trainer, tmp_path
):
    trainer = make_trainer(default_root_dir=str(tmp_path))
    trainer.predict(AutoEncoder(latent_dim=4), tiny_images(n=24))
    saved = torch.load(tmp_path / "predictions" / "predictions.pt")  # the model added the writer itself
    assert saved["reconstructions"].shape == (24, 1, 28, 28) and saved["anomaly_scores"].shape == (24,)
    assert torch.equal(saved["labels"], tiny_images(n=24).labels)
    assert (tmp_path / "predictions" / "reconstructions.png").is_file()


def test_images_in_the_wrong_range_name_the_normalization_fix(tiny_images, make_trainer):
    with pytest.raises(ValueError, match=r"\[-1, 1\].*models images in \[0, 1\].*normalization to 'unit'"):
        make_trainer(max_steps=1).fit(AutoEncoder(), tiny_images(symmetric=True))
    mean_std = tiny_images()
    mean_std.images = (mean_std.images - 0.1307) / 0.3081  # a classifier's normalization
    with pytest.raises(ValueError, match="normalization to 'symmetric'"):
        make_trainer(max_steps=1).fit(GAN(), mean_std)


class NaNAfter(AutoEncoder):
    """An autoencoder whose input becomes NaN from global step ``nan_step`` on."""

    def __init__(self, nan_step: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        if self.global_step >= self.nan_step:
            batch = (batch[0] * float("nan"), batch[1])
            self._checked_stages.add("train")  # past the range check: the loss itself must catch it
        return super().training_step(batch, batch_idx)


def test_a_nan_loss_stops_with_the_step_and_values_and_keeps_the_last_good_checkpoint(
    tiny_images, make_trainer, tmp_path
):
    torch.manual_seed(0)
    model = NaNAfter(nan_step=5, latent_dim=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=0)
    trainer = make_trainer(max_epochs=3, limit_val_batches=0, callbacks=[checkpoint], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError, match=r"global step 5 \(epoch 1\): loss=nan"):
        trainer.fit(model, tiny_images(n=64, batch_size=16))  # 4 steps per epoch
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # written after step 4, the last good one
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    restored = NaNAfter.load_from_checkpoint(tmp_path / "last.ckpt")
    assert torch.isfinite(restored(tiny_images().images[:4])).all()


def test_a_nan_gan_loss_names_the_loss(tiny_images, make_trainer):
    model = GAN(latent_dim=4)
    with torch.no_grad():
        model.discriminator.net[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(epoch 0\): loss_d=nan"):
        make_trainer(max_steps=1).fit(model, tiny_images(symmetric=True))
