"""ResNet18 on particle images (the study's CNN_IMG), optionally joined by a metadata branch (CNN_BOTH).

    image -> ResNet18 trunk (512) -> 64 ----------------\\
                                                      concat -> 40 (embedding) -> classes
    features -> 128 -> 64 -> 32 (when n_features > 0) --/

The image normalisation (training mean/std) lives in the model's buffers, so a saved model carries it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.conv import use_matmul_grads
from ..nn.layers import STUDY_IMAGE_MEAN, STUDY_IMAGE_STD, ImageNorm
from .mlp import EMBED_DIM, EmbeddingClassifier, dense_stack

WEIGHTS = ("none", "imagenet")
IMAGENET_OFFLINE = "pretrained ImageNet weights need internet (e.g. Colab); use weights='none' offline"
MIN_IMAGE_SIZE = 32
TRUNK_DIM = 512


class ParticleCNN(EmbeddingClassifier):
    """ResNet18 (1-channel input) -> 64 [+ metadata 128 -> 64 -> 32] -> 40 -> classes."""

    min_image_size = MIN_IMAGE_SIZE  # any square size from here up (global pooling): progressive resizing may halve it

    def __init__(
        self,
        n_classes: int,
        n_features: int = 0,
        weights: str = "none",
        in_channels: int = 1,
        dropout: float = 0.2,
        image_mean: float = STUDY_IMAGE_MEAN,
        image_std: float = STUDY_IMAGE_STD,
        flat_field: bool = True,
    ) -> None:
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        self.n_features, self.in_channels = n_features, in_channels
        self.input_keys = ("image", "features") if n_features > 0 else ("image",)
        self.norm = ImageNorm(image_mean, image_std, flat_field)
        self.trunk = resnet18_trunk(weights, in_channels)
        self.image_head = dense_stack((TRUNK_DIM, 64), dropout)
        self.meta = dense_stack((n_features, 128, 64, 32), dropout) if n_features > 0 else None
        self.joint = dense_stack((64 + (32 if n_features > 0 else 0), EMBED_DIM), dropout)
        self.classifier = nn.Linear(EMBED_DIM, n_classes)

    def embed(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The 40-unit penultimate activations of raw ``(B, C, S, S)`` images (and features for CNN_BOTH)."""
        self._check_images(images)
        h = self.image_head(self.trunk(self.norm(images)))
        if self.meta is not None:
            if features is None:
                raise ValueError(
                    f"this ParticleCNN has a metadata branch (n_features={self.n_features}): pass features"
                )
            h = torch.cat([h, self.meta(features)], dim=1)
        return self.joint(h)

    def _check_images(self, images: torch.Tensor) -> None:
        """Fail clearly on a batch of the wrong rank, channel count or a size below 32 px."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"ParticleCNN expects images (B, {self.in_channels}, S, S), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"ParticleCNN needs images of at least {MIN_IMAGE_SIZE} px, got {tuple(images.shape[-2:])}"
            )


def resnet18_trunk(weights: str, in_channels: int) -> nn.Module:
    """torchvision's ResNet18 without its classifier (512 outputs), its first conv taking ``in_channels``; its
    convolutions take the fast CPU weight gradient (``nn.conv``; same weights, same state dict)."""
    import torchvision  # here, not at the top: its import costs ~3 s (torch._dynamo), and most notebooks build no CNN

    trunk = torchvision.models.resnet18(weights=None)
    if weights == "imagenet":
        trunk.load_state_dict(imagenet_state_dict())
    rgb_weight = trunk.conv1.weight.detach()
    trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights == "imagenet":
        with torch.no_grad():
            trunk.conv1.weight.copy_(adapt_conv1(rgb_weight, in_channels))
    trunk.fc = nn.Identity()
    return use_matmul_grads(trunk)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet18 weights (download once, hash-checked, loaded weights-only)."""
    import torchvision

    try:
        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(
            progress=True, check_hash=True, weights_only=True
        )
    except OSError as err:
        raise RuntimeError(IMAGENET_OFFLINE) from err


def adapt_conv1(rgb_weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB conv1 kernels for ``in_channels`` inputs: summed over RGB for gray (a gray image is R=G=B), the
    RGB mean spread over the channels otherwise, so the response to a uniform input is unchanged."""
    if in_channels == 3:
        return rgb_weight
    summed = rgb_weight.sum(dim=1, keepdim=True)
    return summed.repeat(1, in_channels, 1, 1) / in_channels
