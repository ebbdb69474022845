"""What notebook 00 reports about a dataset: counts per class and part, and the numbers for metrics.json."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .data import DatasetBundle
from .schema import LABEL, SAMPLE, SESSION, display_name


def class_table(bundle: DatasetBundle) -> pd.DataFrame:
    """Particles per class: train by split, and the core's true class when the truth is known."""
    train = bundle.train.table
    counts = pd.crosstab(train[LABEL], train["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    if bundle.truth is not None:
        counts = counts.join(bundle.truth.value_counts().rename("core (truth)"), how="outer").fillna(0).astype(int)
    counts.index = [display_name(k, bundle.classes) for k in counts.index]
    counts.index.name = "class"
    return counts


def data_metrics(bundle: DatasetBundle) -> dict[str, Any]:
    """Counts, pack keys and dropped items of every part, for metrics.json."""
    metrics: dict[str, Any] = {"dataset": bundle.name, "classes": list(bundle.classes)}
    for name, packed in bundle.parts().items():
        table = packed.table
        metrics[name] = {
            "particles": len(table),
            "image_size": int(packed.images.shape[1]),
            "pack_key": packed.key,
            "dropped_bad_items": len(packed.report.bad_ids),
            "sessions": int(table[SESSION].nunique()) if SESSION in table else None,
            "samples": int(table[SAMPLE].nunique()) if SAMPLE in table else None,
        }
    metrics["train"]["per_class"] = bundle.train.table[LABEL].value_counts().to_dict()
    return metrics
