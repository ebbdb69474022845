"""The neural models: shapes, 40-unit embeddings, the metadata branch, offline ImageNet, the autoencoder."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from icecore_lib.models.autoencoder import ConvAutoencoder
from icecore_lib.models.cnn import IMAGENET_OFFLINE, ParticleCNN, adapt_conv1
from icecore_lib.models.mlp import MetadataMLP
from icecore_lib.nn.layers import FLAT_FIELD_GRAY, ImageNorm, border_median


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Raw 0-255 float images (B, 1, S, S)."""
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_mlp_shapes_and_embedding():
    model = MetadataMLP(34, 7).eval()
    x = torch.randn(5, 34)
    assert model(x).shape == (5, 7)
    assert model.embed(x).shape == (5, 40)
    logits, embedding = model.predict_step(x)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(embedding, model.embed(x))
    with pytest.raises(ValueError, match=r"\(B, 34\)"):
        model(torch.randn(5, 33))


@pytest.mark.parametrize("size", [32, 48])
def test_cnn_shapes_any_size_from_32(size):
    model = ParticleCNN(n_classes=7).eval()
    x = _images(3, size)
    assert model(x).shape == (3, 7)
    assert model.embed(x).shape == (3, 40)
    assert model.input_keys == ("image",)


def test_cnn_rejects_small_or_misshaped_images():
    model = ParticleCNN(n_classes=3).eval()
    with pytest.raises(ValueError, match="at least 32 px"):
        model(_images(2, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        model(_images(2, 32)[:, 0])


def test_metadata_branch_changes_output():
    model = ParticleCNN(n_classes=4, n_features=34).eval()
    assert model.input_keys == ("image", "features")
    x = _images(3, 32)
    a, b = torch.randn(3, 34), torch.randn(3, 34)
    with torch.no_grad():
        assert model(x, a).shape == (3, 4)
        assert model.embed(x, a).shape == (3, 40)
        assert not torch.allclose(model(x, a), model(x, b))
    with pytest.raises(ValueError, match="pass features"):
        model(x)


def test_image_normalisation_is_stored_with_the_model():
    model = ParticleCNN(n_classes=2, image_mean=101.5, image_std=17.0)
    state = model.state_dict()
    assert state["norm.mean"].item() == 101.5 and state["norm.std"].item() == 17.0
    fresh = ParticleCNN(n_classes=2)
    fresh.load_state_dict(state)
    assert fresh.norm.mean.item() == 101.5


def test_flat_field_removes_a_session_s_illumination_and_keeps_the_particle():
    lit = torch.full((1, 1, 32, 32), 125.0)
    lit[..., 10:20, 12:22] = 60.0  # a dark particle in the middle
    darker = lit * 0.85  # the same particle in a dimmer session
    flat, plain = ImageNorm(flat_field=True), ImageNorm(flat_field=False)
    torch.testing.assert_close(flat(darker), flat(lit))
    assert not torch.allclose(plain(darker), plain(lit))
    assert border_median(lit).flatten().tolist() == [125.0]
    assert flat.inverse(flat(lit))[0, 0, 0, 0].item() == pytest.approx(FLAT_FIELD_GRAY)
    assert flat(lit)[..., 15, 15].item() < flat(lit)[..., 0, 0].item()


def test_imagenet_offline_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as err:
        ParticleCNN(n_classes=7, weights="imagenet")
    assert str(err.value) == IMAGENET_OFFLINE
    with pytest.raises(ValueError, match="weights must be one of"):
        ParticleCNN(n_classes=7, weights="imagenet21k")


def test_gray_conv1_sees_a_gray_image_as_the_rgb_kernels_see_it():
    rgb = torch.randn(64, 3, 7, 7)
    gray = torch.rand(2, 1, 16, 16)
    expected = F.conv2d(gray.expand(-1, 3, -1, -1), rgb)
    torch.testing.assert_close(F.conv2d(gray, adapt_conv1(rgb, 1)), expected)
    torch.testing.assert_close(F.conv2d(gray.expand(-1, 2, -1, -1), adapt_conv1(rgb, 2)), expected)


@pytest.mark.parametrize("size", [32, 64])
def test_autoencoder_shapes_and_per_sample_loss(size):
    model = ConvAutoencoder(image_size=size, latent_dim=16).eval()
    x = _images(4, size)
    with torch.no_grad():
        latent = model.encode(x)
        assert latent.shape == (4, 16)
        assert model.decode(latent).shape == (4, 1, size, size)
        losses = model.reconstruction_loss(x)
        expected = ((model(x) - model.norm(x)) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(losses, expected)
        step_loss, step_latent = model.predict_step(x)
        torch.testing.assert_close(step_loss, losses)
        torch.testing.assert_close(step_latent, latent)
        raw = model.reconstruct(x)
        assert raw.min() >= 0 and raw.max() <= 255


def test_autoencoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvAutoencoder(image_size=36)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        ConvAutoencoder(image_size=32).encode(_images(2, 64))
