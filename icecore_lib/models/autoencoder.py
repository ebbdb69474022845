"""Convolutional autoencoder (the study's AE): its latent is an embedding, its reconstruction error a novelty score.

    encoder: 3 x [conv 3x3 stride 2, BatchNorm, ReLU] -> flatten -> hidden (BatchNorm, ReLU) -> latent
    decoder: latent -> hidden -> S/8 x S/8 maps (BatchNorm, ReLU) -> 3 x transposed conv 3x3 stride 2

The loss is the MSE between the reconstruction and the standardised input (the image mean/std live in
the model's buffers). Any image size divisible by 8 works (32, 64, 128 px).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ..nn.layers import STUDY_IMAGE_MEAN, STUDY_IMAGE_STD, ImageNorm


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 convolution halving the size, BatchNorm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _deconv_block(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 transposed convolution doubling the size, BatchNorm, ReLU."""
    return [
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _linear_block(d_in: int, d_out: int) -> list[nn.Module]:
    """Linear, BatchNorm, ReLU."""
    return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    """3 conv + 2 linear encoder to ``latent_dim`` units and its mirror image as decoder."""

    input_keys = ("image",)

    def __init__(
        self,
        image_size: int = 128,
        latent_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        image_mean: float = STUDY_IMAGE_MEAN,
        image_std: float = STUDY_IMAGE_STD,
        flat_field: bool = True,
    ) -> None:
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ValueError(f"ConvAutoencoder needs an image size divisible by 8, got {image_size}")
        if len(channels) != 3:
            raise ValueError(f"ConvAutoencoder has 3 conv layers: give 3 channel counts, got {tuple(channels)}")
        self.image_size, self.latent_dim = image_size, latent_dim
        side = image_size // 8
        maps = (channels[-1], side, side)
        flat = channels[-1] * side * side
        widths, mirrored = (1, *channels), tuple(channels[::-1])
        self.norm = ImageNorm(image_mean, image_std, flat_field)
        self.encoder = nn.Sequential(
            *[m for c_in, c_out in itertools.pairwise(widths) for m in _conv_block(c_in, c_out)],
            nn.Flatten(),
            *_linear_block(flat, hidden),
            nn.Linear(hidden, latent_dim),
        )
        self.decoder = nn.Sequential(
            *_linear_block(latent_dim, hidden),
            *_linear_block(hidden, flat),
            nn.Unflatten(1, maps),
            *[m for c_in, c_out in itertools.pairwise(mirrored) for m in _deconv_block(c_in, c_out)],
            nn.ConvTranspose2d(mirrored[-1], 1, 3, stride=2, padding=1, output_padding=1),
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latent codes ``(B, latent_dim)`` of raw ``(B, 1, S, S)`` images."""
        if images.ndim != 4 or images.shape[1:] != (1, self.image_size, self.image_size):
            size = self.image_size
            raise ValueError(f"ConvAutoencoder expects images (B, 1, {size}, {size}), got {tuple(images.shape)}")
        return self.encoder(self.norm(images))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Standardised reconstructions ``(B, 1, S, S)`` of latent codes."""
        return self.decoder(latent)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised reconstructions of raw images."""
        return self.decode(self.encode(images))

    def reconstruction_loss(self, images: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE ``(B,)`` between reconstruction and standardised input (in float32 under autocast)."""
        return self._per_sample_mse(self(images), images)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions in raw 0-255 intensities, for showing beside the originals."""
        return self.norm.inverse(self(images))

    def predict_step(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample reconstruction MSE and latent code, in one pass."""
        latent = self.encode(images)
        return self._per_sample_mse(self.decode(latent), images), latent

    def _per_sample_mse(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean squared error per sample against the standardised images."""
        return (reconstruction.float() - self.norm(images)).square().mean(dim=(1, 2, 3))
