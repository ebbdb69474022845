"""Layers every image model shares: the gray-level normalisation (with flat field) saved with the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schema import BACKGROUND_GRAY

# The reference study's gray-level normalisation (ICELEARNING): used until training images give their own.
STUDY_IMAGE_MEAN = 94.0


STUDY_IMAGE_STD = 12.0


# The background gray a flat-fielded crop is scaled to (the instrument's usual brightfield background).
FLAT_FIELD_GRAY = float(BACKGROUND_GRAY)


class ImageNorm(nn.Module):
    """Raw 0-255 intensities -> standardised floats, with the training mean/std kept as buffers (saved with a model).

    ``flat_field``: first divide each crop by its own background (the median of its 2-px border) and scale it
    to the instrument's usual background gray. Sessions differ in illumination; the ice core is imaged in
    other sessions than the reference set, with a darker background: the session probe of notebook 02 tells
    the sessions apart from background and blur statistics alone.
    """

    def __init__(self, mean: float = STUDY_IMAGE_MEAN, std: float = STUDY_IMAGE_STD, flat_field: bool = False) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"image std must be positive, got {std}")
        self.flat_field = flat_field
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise a batch of raw ``(B, C, S, S)`` images (uint8 or float), flat-fielded first when asked."""
        x = images.float()
        if self.flat_field:
            x = x * (FLAT_FIELD_GRAY / border_median(x).clamp_min(1.0))
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to raw intensities (flat-fielded ones when ``flat_field``), clipped to 0-255."""
        return (x.float() * self.std + self.mean).clamp(0, 255)


def border_median(images: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Each crop's background: the median of its ``width``-px border, shape ``(B, C, 1, 1)``."""
    w = width
    ring = torch.cat(
        [images[..., :w, :].flatten(-2), images[..., -w:, :].flatten(-2),
         images[..., w:-w, :w].flatten(-2), images[..., w:-w, -w:].flatten(-2)],
        dim=-1,
    )
    return ring.median(dim=-1).values[..., None, None]
