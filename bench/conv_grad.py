"""CPU weight gradients: oneDNN's against unfold + matmul per ResNet18 layer, and the whole training step, in one run.

    python bench/conv_grad.py --sizes 32 64 --batch-size 128

Per layer of ResNet18 (input size, channels, stride) it times the weight gradient both ways and marks the layers
``icecore_lib.nn.conv`` sends down the matmul path; then it times a full ParticleCNN training step (forward,
backward, AdamW, channels_last) with plain ``nn.Conv2d`` convolutions and with the matmul weight gradients,
and prints the speed-up. CPU only: on CUDA the convolutions are left to cuDNN.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from icecore_lib.models.cnn import ParticleCNN
from icecore_lib.nn.conv import MATMUL_GRAD_MAX_OUTPUT, MatmulGradConv2d


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    return parser.parse_args(argv)


def seconds(step: Callable[[], object], repeats: int) -> float:
    """Mean seconds of ``step`` after one warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def resnet18_layers(size: int) -> list[tuple[int, int, int, int, int]]:
    """(in channels, out channels, kernel, stride, input size) of ResNet18's distinct convolutions at ``size`` px."""
    return [(1, 64, 7, 2, size), (64, 64, 3, 1, size // 4), (64, 128, 3, 2, size // 4), (128, 128, 3, 1, size // 8),
            (128, 256, 3, 2, size // 8), (256, 256, 3, 1, size // 16), (256, 512, 3, 2, size // 16),
            (512, 512, 3, 1, size // 32)]


def layer_rows(size: int, batch: int, repeats: int) -> None:
    """Print each layer's weight-gradient time, oneDNN vs unfold + matmul."""
    for c_in, c_out, k, stride, h in resnet18_layers(size):
        pad = k // 2
        x = torch.randn(batch, c_in, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c_out, c_in, k, k).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))

        def onednn() -> object:
            return torch.ops.aten.convolution_backward(grad, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False,
                                                       [0, 0], 1, [False, True, False])

        def matmul() -> object:
            cols = F.unfold(x, k, padding=pad, stride=stride)
            return grad.transpose(0, 1).reshape(c_out, -1) @ cols.transpose(1, 2).reshape(-1, c_in * k * k)

        out = grad.shape[-1] * grad.shape[-2]
        taken = "matmul" if c_in == 1 or out <= MATMUL_GRAD_MAX_OUTPUT else "oneDNN"
        a, b = seconds(onednn, repeats), seconds(matmul, repeats)
        print(f"{size:4d} px  {c_in:3d}->{c_out:3d} k{k} s{stride} at {h:3d}px: oneDNN {a * 1e3:7.1f} ms  "
              f"matmul {b * 1e3:7.1f} ms  ratio {a / b:5.2f}  icecore takes {taken}")


def plain_convs(module: nn.Module) -> nn.Module:
    """The same network with every MatmulGradConv2d swapped back to a plain nn.Conv2d (same weights)."""
    for name, child in module.named_children():
        if isinstance(child, MatmulGradConv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             bias=child.bias is not None)
            conv.weight, conv.bias = child.weight, child.bias
            setattr(module, name, conv)
        else:
            plain_convs(child)
    return module


def step_images_per_s(model: nn.Module, size: int, batch: int, repeats: int) -> float:
    """Training images per second of one forward + backward + AdamW step."""
    model = model.to(memory_format=torch.channels_last).train()
    x = (torch.rand(batch, 1, size, size) * 255).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch / seconds(step, repeats)


def main(argv: list[str] | None = None) -> None:
    """Per-layer table, then the training step with and without the matmul weight gradients."""
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    for size in args.sizes:
        layer_rows(size, args.batch_size, args.repeats)
    for size in args.sizes:
        torch.manual_seed(0)
        old = step_images_per_s(plain_convs(ParticleCNN(7)), size, args.batch_size, args.repeats)
        torch.manual_seed(0)
        new = step_images_per_s(ParticleCNN(7), size, args.batch_size, args.repeats)
        print(f"ResNet18 training step at {size} px: plain {old:6.1f} img/s, matmul weight gradients {new:6.1f} img/s, "
              f"speed-up {new / old:.2f}x")


if __name__ == "__main__":
    main()
