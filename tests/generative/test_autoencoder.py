"""Autoencoders: architecture, denoising corruption, a short fit on real MNIST, anomaly scoring."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn

from datamodules import MNISTDataModule
from zoo.generative import AutoEncoder, DenoisingAutoEncoder
from zoo.generative.autoencoder import reconstruction_loss

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def test_the_fully_connected_autoencoder_is_input_256_128_latent_and_back():
    model = AutoEncoder(network="autoencoder_mlp", latent_dim=12)
    enc = [(m.in_features, m.out_features) for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    dec = [(m.in_features, m.out_features) for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    assert enc == [(784, 256), (256, 128), (128, 12)]
    assert dec == [(12, 128), (128, 256), (256, 784)]


@pytest.mark.parametrize("network", ["autoencoder_mlp", "autoencoder_conv"])
@pytest.mark.parametrize("latent_dim", [2, 20])
def test_encode_and_decode_shapes_follow_the_latent_size(network, latent_dim):
    model = AutoEncoder(network=network, latent_dim=latent_dim)
    images = torch.rand(3, 1, 28, 28)
    z = model.encode(images)
    assert z.shape == (3, latent_dim)
    out = model.decode(z).detach()
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert model.anomaly_score(images).shape == (3,)


def test_a_convolutional_autoencoder_rejects_sizes_it_cannot_halve_twice():
    with pytest.raises(ValueError, match="multiple of 4"):
        AutoEncoder(network="autoencoder_conv", image_size=30)


@pytest.mark.parametrize("noise", ["gaussian", "mask"])
def test_denoising_corrupts_the_input_only_and_compares_with_the_clean_image(noise):
    torch.manual_seed(0)
    model = DenoisingAutoEncoder(noise=noise, noise_std=0.1, mask_fraction=0.4, latent_dim=8)
    clean = torch.rand(16, 1, 28, 28) * 0.1 + 0.45  # far from the clipping at 0 and 1
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    loss = model.training_step((clean, torch.zeros(16)), 0)
    encoder_input = seen[0]
    assert not torch.allclose(encoder_input, clean)  # the encoder saw a corrupted image...
    with torch.no_grad():
        expected = reconstruction_loss(model.decoder(model.encoder(encoder_input)), clean, "bce", "unit").mean()
    torch.testing.assert_close(loss.detach(), expected)  # ...and the loss targets the clean one
    if noise == "mask":
        masked = (encoder_input == 0).float().mean()
        assert float(masked) == pytest.approx(0.4, abs=0.03)
    else:
        assert float((encoder_input - clean).std()) == pytest.approx(0.1, abs=0.01)
    # Prediction (and anomaly scores) reconstruct the clean input, uncorrupted.
    torch.testing.assert_close(model(clean), model.decode(model.encode(clean)))


@pytest.fixture(scope="module")
def fitted_anomaly_autoencoder(data_root):
    """A convolutional autoencoder fitted briefly on real MNIST without the digit 1."""
    pl.seed_everything(0)
    dm = MNISTDataModule(
        data_dir=str(data_root), download=False, normalization="unit", augment=False, anomaly_class=1,
        train_subset=3000, val_size=1000, batch_size=64, eval_batch_size=500,
    )
    model = AutoEncoder(network="autoencoder_conv", latent_dim=16)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    before = trainer.validate(model, dm, verbose=False)[0]
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]
    return dm, model, before, after


def test_a_short_fit_on_real_mnist_lowers_the_reconstruction_loss(fitted_anomaly_autoencoder):
    _, _, before, after = fitted_anomaly_autoencoder
    assert after["val/loss"] < 0.6 * before["val/loss"]
    assert after["val/mse"] < before["val/mse"]


def test_the_anomaly_class_is_left_out_of_training_but_kept_for_validation(fitted_anomaly_autoencoder):
    dm, model, _, _ = fitted_anomaly_autoencoder
    assert 1 not in dm.train_set.labels.tolist()
    assert 1 in dm.val_set.labels.tolist()
    assert model.anomaly_class == 1  # read from the datamodule


def test_anomaly_auroc_is_reported_from_per_image_reconstruction_error(fitted_anomaly_autoencoder):
    dm, model, before, after = fitted_anomaly_autoencoder
    assert 0.0 <= after["val/auroc"] <= 1.0 and after["val/auroc"] != before["val/auroc"]
    images, labels = dm.val_set.images[:500], dm.val_set.labels[:500]
    from torchmetrics.functional.classification import binary_auroc

    scores = model.eval().anomaly_score(images)
    manual = float(binary_auroc(scores, (labels == 1).long()))
    assert manual == pytest.approx(after["val/auroc"], abs=0.1)  # the first 500 of 1000 val images


def test_a_model_anomaly_class_contradicting_the_datamodule_is_an_error(data_root):
    dm = MNISTDataModule(data_dir=str(data_root), download=False, normalization="unit", anomaly_class=3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_steps=1)
    with pytest.raises(ValueError, match="anomaly_class=4 but the datamodule leaves class 3"):
        trainer.fit(AutoEncoder(anomaly_class=4), dm)
