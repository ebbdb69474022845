"""Torch machinery every network shares: device, layers, batches, augmentation, the training loop, checkpoints, DDP helpers."""
