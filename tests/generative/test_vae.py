"""The VAE: closed-form KL, reparameterisation, loss, sampling, interpolation and attribute vectors."""

from __future__ import annotations

import pytest
import torch

from zoo.generative import VAE, kl_divergence, reparameterize
from zoo.generative.autoencoder import reconstruction_loss


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.7]])
    logvar = torch.tensor([[0.0, -1.0, 0.7], [-2.0, 0.5, 0.1]])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # E_q[log q(z) - log p(z)]
    torch.testing.assert_close(kl_divergence(mu, logvar), monte_carlo, rtol=0.02, atol=0.01)
    assert torch.allclose(kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1))


def test_reparameterised_samples_have_the_posterior_moments_and_carry_gradients():
    torch.manual_seed(0)
    mu = torch.full((100_000, 1), 2.0, requires_grad=True)
    logvar = torch.full((100_000, 1), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = reparameterize(mu, logvar)
    assert float(z.detach().mean()) == pytest.approx(2.0, abs=0.01)
    assert float(z.detach().std()) == pytest.approx(0.5, abs=0.01)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and float(logvar.grad.abs().sum()) > 0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_loss_is_reconstruction_plus_beta_times_kl(beta):
    model = VAE(latent_dim=4, beta=beta)
    images = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    loss = model.training_step((images, torch.zeros(8)), 0)
    torch.manual_seed(1)  # the same reparameterisation noise
    mu, logvar = model.encode(images)
    recon = reconstruction_loss(model.decoder(reparameterize(mu, logvar)), images, "bce", "unit").mean()
    torch.testing.assert_close(loss, recon + beta * kl_divergence(mu, logvar).mean())


@pytest.mark.parametrize("network", ["vae_mlp", "vae_conv"])
def test_prior_samples_are_images_in_range(network):
    model = VAE(network=network, latent_dim=6)
    samples = model.sample(5)
    assert samples.shape == (5, 1, 28, 28) and float(samples.min()) >= 0 and float(samples.max()) <= 1
    assert model.encode(torch.rand(3, 1, 28, 28))[0].shape == (3, 6)


def test_interpolation_endpoints_decode_to_the_endpoints_reconstructions():
    torch.manual_seed(0)
    model = VAE(latent_dim=8).eval()
    a, b = torch.rand(1, 28, 28), torch.rand(1, 28, 28)
    path = model.interpolate(a, b, steps=5)
    assert path.shape == (5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(path[0], model(a[None])[0])
        torch.testing.assert_close(path[-1], model(b[None])[0])
        middle = model.decode(model.encode(torch.stack([a, b]))[0].mean(0, keepdim=True))[0]
    torch.testing.assert_close(path[2], middle)  # the midpoint of the two means
    pairs = model.interpolate(torch.stack([a, b]), torch.stack([b, a]), steps=3)
    assert pairs.shape == (2, 3, 1, 28, 28)
    torch.testing.assert_close(pairs[1, -1], path[0])


def test_attribute_vector_is_the_difference_of_group_means_and_shifts_the_latent():
    torch.manual_seed(0)
    model = VAE(latent_dim=8).eval()
    group_a, group_b, third = torch.rand(6, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.rand(2, 1, 28, 28)
    vector = model.attribute_vector(group_a, group_b)
    with torch.no_grad():
        expected = model.encode(group_a)[0].mean(0) - model.encode(group_b)[0].mean(0)
        torch.testing.assert_close(vector, expected)
        edited = model.add_attribute(third, vector, scales=(0.0, 1.0))
        assert edited.shape == (2, 2, 1, 28, 28)
        torch.testing.assert_close(edited[:, 0], model(third))  # scale 0: the reconstruction
        torch.testing.assert_close(edited[:, 1], model.decode(model.encode(third)[0] + vector))


def test_sample_grids_hold_samples_reconstructions_and_interpolations():
    model = VAE(latent_dim=4).eval()
    model._grid_images = torch.rand(16, 1, 28, 28)
    grids = model.sample_grids()
    assert grids["samples"].shape == (64, 1, 28, 28)
    assert grids["reconstructions"].shape == (32, 1, 28, 28)
    torch.testing.assert_close(grids["reconstructions"][:8], model._grid_images[:8])  # inputs, then outputs
    assert grids["interpolation"].shape == (32, 1, 28, 28)
    torch.testing.assert_close(model.sample_grids()["samples"], grids["samples"])  # fixed z
