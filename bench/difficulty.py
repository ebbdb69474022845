"""Benchmark: how hard is the synthetic reference set? Metadata (XGBoost on the 34 features) vs images (a small CNN).

On the real data metadata alone reaches 86-87% and a ResNet on images 95-96%: the synthetic twin should show
the same order (metadata clearly weaker, the two oaks its most confused pair). Both models see the same
stratified split of the generated train part; the CNN sees crops resized to a square, as the study's
models do, so a particle's size reaches it only through the metadata.

    python bench/difficulty.py --profile demo                # generate into a temp folder, then measure
    python bench/difficulty.py --data /path/to/synth --epochs 6
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm
from xgboost import XGBClassifier

from icecore_lib.config import synth_config
from icecore_lib.schema import FLOWCAM_FEATURES, IMGPATH, LABEL
from icecore_lib.synth.dataset import generate


def load_train(folder: Path, size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The train table and its crops resized to ``size`` x ``size`` (uint8), in table order."""
    table = pd.read_csv(folder / "train.csv")
    with zipfile.ZipFile(folder / "train.zip") as archive:
        images = np.stack([
            np.asarray(Image.open(io.BytesIO(archive.read(name))).resize((size, size), Image.Resampling.BILINEAR))
            for name in tqdm(table[IMGPATH], desc="decode", leave=False)
        ])
    return table, images


def most_confused(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> tuple[str, str, float]:
    """The class pair with the highest share of mutual errors (errors either way over the pair's particles)."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    support = cm.sum(axis=1)
    best = (classes[0], classes[0], -1.0)
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            rate = (cm[i, j] + cm[j, i]) / max(support[i] + support[j], 1)
            if rate > best[2]:
                best = (classes[i], classes[j], float(rate))
    return best


def metadata_accuracy(X_tr: np.ndarray, y_tr: np.ndarray, X_te: np.ndarray, seed: int) -> np.ndarray:
    """XGBoost (hist) on the 34 features: test predictions."""
    model = XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.1, subsample=0.9, colsample_bytree=0.8,
                          tree_method="hist", n_jobs=1, random_state=seed)
    model.fit(X_tr, y_tr)
    return model.predict(X_te)


class SmallCNN(nn.Module):
    """Four conv blocks (8-16-32-64 channels) and a linear head: a floor for what images alone can do."""

    def __init__(self, n_classes: int) -> None:
        """Build the layers."""
        super().__init__()
        blocks, channels = [], 1
        for width in (8, 16, 32, 64):
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch (N, 1, H, W)."""
        return self.head(self.features(x))


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns (particles have no up)."""
    if torch.rand(1, generator=generator).item() < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(0, 4, (1,), generator=generator)), dims=(2, 3))


def cnn_predictions(images: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int,
                    epochs: int, seed: int) -> np.ndarray:
    """Train the small CNN on the train crops (AdamW, one-cycle) and predict the test crops."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).float().unsqueeze(1)
    x = (x - x[train].mean()) / x[train].std()
    targets = torch.as_tensor(y, dtype=torch.long)
    model = SmallCNN(n_classes)
    batch = 64
    steps = epochs * int(np.ceil(len(train) / batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for _ in tqdm(range(epochs), desc="cnn epochs", leave=False):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            loss = loss_fn(model(_augment(x[idx], generator)), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[test[i : i + 256]]).argmax(1) for i in range(0, len(test), 256)]).numpy()


def report(name: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> float:
    """Print accuracy, per-class recall and the most confused pair; return the accuracy."""
    acc = accuracy_score(y_true, y_pred)
    recall = {c: float(np.mean(y_pred[y_true == i] == i)) for i, c in enumerate(classes)}
    a, b, rate = most_confused(y_true, y_pred, classes)
    print(f"{name:9s} accuracy {acc:.3f} | most confused {a}/{b} ({rate:.1%} mutual errors)")
    print("          recall " + " ".join(f"{c}={r:.2f}" for c, r in recall.items()))
    return float(acc)


def measure(folder: Path, epochs: int, size: int, seed: int) -> None:
    """Fit both models on one split of the train part and print the comparison."""
    table, images = load_train(folder, size)
    classes = sorted(table[LABEL].unique())
    y = table[LABEL].map({c: i for i, c in enumerate(classes)}).to_numpy()
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed)
    X = table[list(FLOWCAM_FEATURES)].to_numpy(np.float32)
    t0 = time.perf_counter()
    meta = report("metadata", y[test], metadata_accuracy(X[train], y[train], X[test], seed), classes)
    t1 = time.perf_counter()
    cnn = report("cnn", y[test], cnn_predictions(images, y, train, test, len(classes), epochs, seed), classes)
    t2 = time.perf_counter()
    print(f"images - metadata = {100 * (cnn - meta):+.1f} points   (xgboost {t1 - t0:.0f}s, cnn {t2 - t1:.0f}s, "
          f"{len(train)} train / {len(test)} test, {size}px, {epochs} epochs)")


def main() -> None:
    """Parse the command line, generate (unless --data is given) and measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--per-class", type=int, default=None, help="override n_train_per_class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="an existing synthetic dataset folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data is not None:
        measure(args.data, args.epochs, args.size, args.seed)
        return
    overrides = {"n_core": 0, "workers": args.workers}
    if args.per_class:
        overrides["n_train_per_class"] = args.per_class
    cfg = synth_config(args.profile, seed=args.seed, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate(Path(tmp) / "synth", cfg, progress=True)
        print(f"generated {summary['n_particles']['train']} train particles in {summary['seconds']:.0f}s "
              f"({summary['particles_per_s']:.0f}/s)")
        measure(Path(tmp) / "synth", args.epochs, args.size, args.seed)


if __name__ == "__main__":
    main()
