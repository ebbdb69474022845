"""Tephra: the pick list (per depth sample, the most likely particles of each ash class, for the microprobe session)
and the volcanic layers (samples where ash stands out).

Geochemistry (electron microprobe, LA-ICP-MS) fingerprints a tephra layer shard by shard; the shards to pick are
the ones the classifier is surest of. Per sample and ash class: the ``per_class`` particles predicted as that
class with the highest calibrated probability, with their id (the crop's path), probability and depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .schema import DEPTH, SAMPLE


def ash_classes(classes: Mapping[str, str], chosen: Sequence[str] = ()) -> list[str]:
    """The ash classes: those ``chosen``, else every class whose key or display name says "ash" or "tephra"."""
    if chosen:
        unknown = [c for c in chosen if c not in classes]
        if unknown:
            raise ValueError(f"ash_classes: {', '.join(unknown)} not among the classes ({', '.join(classes)})")
        return list(chosen)
    return [k for k, name in classes.items() if any(w in f"{k} {name}".lower() for w in ("ash", "tephra"))]


def pick_list(predictions: pd.DataFrame, core: pd.DataFrame, ash: Sequence[str], per_class: int = 10,
              unknown: pd.Series | None = None) -> pd.DataFrame:
    """Per sample (in depth order) and ash class, the ``per_class`` surest particles predicted as that class.

    ``predictions``: calibrated ``p_<class>`` columns and ``pred`` per particle; ``core``: its sample_id (and
    depth_m); ``unknown``: particles flagged as fitting no known class (notebook 05), never picked: a new type
    the classifier calls ash with confidence would otherwise take a microprobe slot. Columns: sample_id,
    depth_m, class, rank, particle_id, probability.
    """
    if SAMPLE not in core:
        raise ValueError(f"a pick list is per sample: the core has no {SAMPLE} column")
    if unknown is not None:
        predictions = predictions[~unknown.reindex(predictions.index, fill_value=False).astype(bool)]
    table = pd.DataFrame({SAMPLE: core.loc[predictions.index, SAMPLE], "pred": predictions["pred"]})
    if DEPTH in core:
        table[DEPTH] = core.loc[predictions.index, DEPTH].astype(float)
    rows = []
    for key in ash:
        members = table[table["pred"] == key].assign(probability=predictions[f"p_{key}"], **{"class": key})
        top = members.sort_values("probability", ascending=False, kind="stable").groupby(SAMPLE, sort=False).head(per_class)
        rows.append(top)
    if not rows or not sum(len(r) for r in rows):
        return pd.DataFrame(columns=[SAMPLE, DEPTH, "class", "rank", "particle_id", "probability"])
    picks = pd.concat(rows).rename_axis("particle_id").reset_index()
    # Samples in depth order (each sample's median particle depth), then each class's picks surest first.
    depth = table.groupby(SAMPLE)[DEPTH].median() if DEPTH in table else None
    picks["_order"] = picks[SAMPLE].map(depth) if depth is not None else 0.0
    picks = picks.sort_values(["_order", SAMPLE, "class", "probability"], ascending=[True, True, True, False],
                              kind="stable").drop(columns="_order")
    picks["rank"] = picks.groupby([SAMPLE, "class"]).cumcount() + 1
    columns = [SAMPLE, *([DEPTH] if DEPTH in picks else []), "class", "rank", "particle_id", "probability"]
    return picks[columns].reset_index(drop=True)


def volcanic_layers(composition: pd.DataFrame, ash: Sequence[str], factor: float = 3.0, floor: float = 0.05,
                    depth: str = DEPTH) -> list[float]:
    """Depths of the samples whose ash fraction is at least ``factor`` times the core's median and at least ``floor``.

    ``composition``: the per-sample long table (sample_id, depth, class, fraction). A tephra layer is a sample
    where ash stands out against the core's own background, not an absolute amount.
    """
    if depth not in composition or not ash:
        return []
    rows = composition[composition["class"].isin(ash)]
    per_sample = rows.groupby(SAMPLE, sort=False).agg(ash=("fraction", "sum"), depth=(depth, "median"))
    threshold = max(factor * float(per_sample["ash"].median()), floor)
    return sorted(per_sample.loc[per_sample["ash"] >= threshold, "depth"].tolist())
