"""Augmentation on the device: flips, 90-degree rotations (particles have no up), brightness/contrast, defocus, noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flips: bool = True,
    rotations: bool = True,
    jitter: float = 0.1,
    blur: float = 0.0,
    noise: float = 0.0,
) -> torch.Tensor:
    """Randomly flip, rotate by multiples of 90 degrees (particles have no up), jitter brightness/contrast,
    defocus and add sensor noise.

    ``x`` is a ``(B, ..., S, S)`` batch of raw intensities (0-255, float or uint8) on the generator's
    device; each sample draws its own transform. Brightness is a gain and contrast a stretch about the
    image mean, each in ``[1 - jitter, 1 + jitter]``. ``blur``: largest Gaussian defocus sigma (px), each sample
    drawing one in ``[0, blur]``; ``noise``: largest Gaussian noise std (gray levels), likewise. Focus and
    noise differ between acquisition sessions, so these keep a model from reading the session. Results clip
    to 0-255; shape and dtype are kept.
    """
    if x.device.type != generator.device.type:
        raise ValueError(f"augment: batch on {x.device} but generator on {generator.device}")
    n = x.shape[0]
    per_sample = (n,) + (1,) * (x.ndim - 1)
    out = x
    if flips:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        out = torch.where(flip.view(per_sample), out.flip(-1), out)
    if rotations:
        out = _rotate90(out, torch.randint(0, 4, (n,), generator=generator, device=x.device))
    if jitter > 0:
        uniform = torch.rand((2, *per_sample), generator=generator, device=x.device)
        gain, stretch = (1 + jitter * (2 * uniform - 1)).unbind(0)
        values = out.float()
        mean = values.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        values = ((values - mean) * stretch + mean) * gain
        out = values.clamp(0, 255)
    if blur > 0:
        sigma = blur * torch.rand(n, generator=generator, device=x.device)
        out = _gaussian_blur(out.float(), sigma)
    if noise > 0:
        std = noise * torch.rand(per_sample, generator=generator, device=x.device)
        out = (out.float() + std * torch.randn(out.shape, generator=generator, device=x.device)).clamp(0, 255)
    out = out if x.is_floating_point() else out.float().round()
    return out.to(x.dtype)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of ``(B, ..., S, S)`` with its own Gaussian sigma (separable, reflect-padded)."""
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3).view(-1, 1)) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    shape = x.shape
    planes = x.reshape(1, -1, shape[-2], shape[-1])
    kernel = weights.repeat_interleave(planes.shape[1] // shape[0], dim=0)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(-1, 1, 1, 2 * radius + 1), groups=planes.shape[1])
    planes = F.conv2d(planes, kernel.view(-1, 1, 2 * radius + 1, 1), groups=planes.shape[1])
    return planes.reshape(shape)


def _rotate90(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each sample by its own number of quarter turns, without a host sync (square images only)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"90-degree rotations need square images, got {tuple(x.shape[-2:])}")
    per_sample = (x.shape[0],) + (1,) * (x.ndim - 1)
    # rot90 by k = optional transpose, then flips: k=1 transpose+flip rows, k=2 flip both, k=3 transpose+flip cols.
    k = quarter_turns.view(per_sample)
    out = torch.where(k % 2 == 1, x.transpose(-2, -1), x)
    out = torch.where((k == 1) | (k == 2), out.flip(-2), out)
    return torch.where((k == 2) | (k == 3), out.flip(-1), out)
