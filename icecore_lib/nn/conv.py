"""A Conv2d whose weight gradient is one matrix product where oneDNN's own is slow on CPU.

On a CPU without AVX-512 (the 2-core machines a lab's laptop or CI has), oneDNN's weight gradient of ResNet18's
3x3 convolutions whose output is 2x2 or 1x1 (layer3-4 at 32-64 px inputs) is 3-10x slower than unfolding the
input and multiplying it by the output gradient, and of the 1-channel 7x7 stem up to 1.3x (``bench/conv_grad.py``
prints both per layer and the whole training step: 1.10x faster at 64 px, 1.84x at 32 px). The forward pass and the input gradient stay oneDNN's;
on CUDA nothing changes. The module's parameters and state dict are those of ``nn.Conv2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Output maps this small (height x width) or a single input channel take the matmul weight gradient (measured).
MATMUL_GRAD_MAX_OUTPUT = 4


def matmul_grad_pays(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether this convolution's weight gradient is faster as unfold + matmul (CPU in fp32, ungrouped, zero-padded
    by numbers, and the stem or a tiny output map); oneDNN's bf16 kernels (autocast) are faster than either."""
    if (x.device.type != "cpu" or conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or not torch.is_grad_enabled() or not conv.weight.requires_grad or torch.is_autocast_enabled("cpu")):
        return False
    out_h, out_w = (_out_size(x.shape[-2 + i], conv, i) for i in range(2))
    return conv.in_channels == 1 or out_h * out_w <= MATMUL_GRAD_MAX_OUTPUT


def _out_size(size: int, conv: nn.Conv2d, dim: int) -> int:
    """Output length along one spatial dimension."""
    k, s, p, d = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim], conv.dilation[dim]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _MatmulWeightGrad(torch.autograd.Function):
    """conv2d forward; input gradient from aten's convolution backward, weight gradient as one matmul."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            out_channels, fan_in = weight.shape[0], weight[0].numel()
            cols = F.unfold(x, weight.shape[-2:], dilation=dilation, padding=padding, stride=stride)
            grad_w = (grad.transpose(0, 1).reshape(out_channels, -1)
                      @ cols.transpose(1, 2).reshape(-1, fan_in)).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


class MatmulGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same outputs) taking the matmul weight gradient where it pays on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution; its backward pass is the fast one on CPU where :func:`matmul_grad_pays`."""
        if not matmul_grad_pays(x, self):
            return super().forward(x)
        return _MatmulWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def use_matmul_grads(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` inside ``module`` by a :class:`MatmulGradConv2d` with the same weights."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, _converted(child))
        else:
            use_matmul_grads(child)
    return module


def _converted(conv: nn.Conv2d) -> MatmulGradConv2d:
    """A MatmulGradConv2d holding ``conv``'s own parameter tensors."""
    new = MatmulGradConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight = conv.weight
    new.bias = conv.bias
    return new
