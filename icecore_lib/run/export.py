"""What a run shares with its neighbours' tools and a data paper: an EcoTaxa import zip (and EcoTaxa's validated
labels read back), and a per-depth table of fractions and concentrations with their intervals.

EcoTaxa (the image-annotation platform FlowCam, IFCB, UVP and PlanktoScope users exchange through) imports a zip
of images and a ``ecotaxa_*.tsv``: a header row of lower-case names, each prefixed ``img_``, ``object_``,
``sample_``, ``acq_`` or ``process_``; then a type row, ``[t]`` (text) or ``[f]`` (number) per column; then one
row per object. ``img_file_name`` (the image's path inside the zip) and ``object_id`` are required; icecore adds
the depth range, the annotation (``predicted`` by the classifier, ``validated`` where a person decided in the
explorer's review log), the FlowCam features and the probabilities, the sample (``sample_id``), the acquisition
session (``acq_id``) and the software (``process_*``). The crops are the original images the run read.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..config import default_cache_dir
from ..data.pack import load_packed
from ..files import atomic_path, atomic_write_table
from ..images.sources import open_source
from ..schema import DEPTH, FLOWCAM_FEATURES, SAMPLE, SESSION, display_name
from .artifacts import Run
from .card import CARD_FILE, read_model_card
from .review import load_review, review_to_labels

PREFIXES = ("img", "object", "sample", "acq", "process")
TEXT, NUMBER = "[t]", "[f]"
_NAME = re.compile(r"^(img|object|sample|acq|process)_[a-z0-9_]+$")
STATUSES = ("predicted", "validated", "dubious")


def ecotaxa_name(feature: str) -> str:
    """A FlowCam feature as an EcoTaxa object column: ``Area (ABD)`` -> ``object_area_abd``."""
    return "object_" + re.sub(r"[^a-z0-9]+", "_", feature.lower()).strip("_")


def ecotaxa_table(predictions: pd.DataFrame, core: pd.DataFrame, *, validated: Mapping[str, str] | None = None,
                  classes: Mapping[str, str] | None = None, software: str, run: str,
                  pixel_um: float | None = None) -> pd.DataFrame:
    """One EcoTaxa row per predicted particle: image, id, depth, annotation, features, probabilities, provenance.

    ``validated``: particle id -> class key decided by a person (status ``validated``); every other row is
    ``predicted`` with the classifier's class (``unassigned`` below its threshold stays its best class, and its
    ``object_assigned`` says so). Categories are the classes' display names (``classes``: key -> name).
    """
    names = dict(classes or {})
    core = core.loc[predictions.index]
    decided = pd.Series(dict(validated or {}), dtype=object).reindex(predictions.index)
    category = decided.fillna(predictions["pred"]).map(lambda k: names.get(k, display_name(str(k))))
    depth = core[DEPTH].astype(float) if DEPTH in core else pd.Series(np.nan, index=core.index)
    table = pd.DataFrame({
        "img_file_name": [_image_name(pid) for pid in predictions.index],
        "object_id": predictions.index.astype(str),
        "object_depth_min": depth.to_numpy(), "object_depth_max": depth.to_numpy(),
        "object_annotation_status": np.where(decided.notna(), "validated", "predicted"),
        "object_annotation_category": category.to_numpy(),
        "object_max_prob": predictions["max_prob"].to_numpy(dtype=float),
        "object_assigned": predictions["assigned"].astype(str).to_numpy(),
    }, index=predictions.index)
    for feature in [f for f in FLOWCAM_FEATURES if f in core]:
        table[ecotaxa_name(feature)] = core[feature].to_numpy(dtype=float)
    for column in [c for c in predictions if c.startswith("p_")]:
        table[f"object_{column}"] = predictions[column].to_numpy(dtype=float)
    if "combined_rank" in predictions:
        table["object_novelty_rank"] = predictions["combined_rank"].to_numpy(dtype=float)
    if "unknown" in predictions:
        table["object_unknown"] = np.where(predictions["unknown"].astype(bool), "yes", "no")
    table["sample_id"] = core[SAMPLE].astype(str).to_numpy() if SAMPLE in core else "core"
    if SESSION in core:
        table["acq_id"] = core[SESSION].astype(str).to_numpy()
    table["process_id"] = run
    table["process_software"] = software
    if pixel_um is not None:
        table["process_pixel_um"] = float(pixel_um)
    return table.reset_index(drop=True)


def _image_name(particle_id: str) -> str:
    """The crop's path inside the zip: ``images/`` and the particle id's own relative path."""
    return str(PurePosixPath("images") / PurePosixPath(str(particle_id)))


def column_types(table: pd.DataFrame) -> list[str]:
    """EcoTaxa's type row: ``[f]`` for a numeric column, ``[t]`` for the rest."""
    return [NUMBER if pd.api.types.is_numeric_dtype(table[c]) else TEXT for c in table.columns]


def check_ecotaxa(table: pd.DataFrame, types: list[str]) -> None:
    """EcoTaxa's column rules; an error names the column (or the row) that breaks one."""
    for column, kind in zip(table.columns, types, strict=True):
        if not _NAME.match(column):
            raise ValueError(f"EcoTaxa column {column!r}: names are lower-case letters, digits and _, prefixed by "
                             f"one of {', '.join(p + '_' for p in PREFIXES)}")
        if kind not in (TEXT, NUMBER):
            raise ValueError(f"EcoTaxa column {column!r}: its type is {kind!r}, not [t] or [f]")
        if kind == NUMBER and not pd.api.types.is_numeric_dtype(table[column]):
            raise ValueError(f"EcoTaxa column {column!r} is typed [f] but holds text")
    for required in ("img_file_name", "object_id"):
        if required not in table:
            raise ValueError(f"EcoTaxa table has no {required} column")
    duplicated = table["object_id"][table["object_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"EcoTaxa object_id {duplicated.iloc[0]!r} appears more than once")
    if "object_annotation_status" in table:
        bad = table.loc[~table["object_annotation_status"].isin(STATUSES), "object_annotation_status"]
        if len(bad):
            raise ValueError(f"EcoTaxa row {bad.index[0] + 3}: object_annotation_status {bad.iloc[0]!r} is not one of "
                             f"{', '.join(STATUSES)}")


def tsv_text(table: pd.DataFrame) -> str:
    """The TSV: header row, type row, one row per object (checked against EcoTaxa's rules first)."""
    types = column_types(table)
    check_ecotaxa(table, types)
    body = table.to_csv(sep="\t", index=False, lineterminator="\n", na_rep="")
    header, rest = body.split("\n", 1)
    return f"{header}\n" + "\t".join(types) + f"\n{rest}"


def write_ecotaxa_zip(target: Path | str, table: pd.DataFrame, images: Path | str) -> Path:
    """The import zip, atomically: ``ecotaxa_<name>.tsv`` at its root and every crop read from ``images`` (zip or
    folder) under the path ``img_file_name`` gives."""
    target = Path(target)
    source = open_source(images)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{target.stem if target.stem.startswith('ecotaxa_') else 'ecotaxa_' + target.stem}.tsv",
                    tsv_text(table))
        for object_id, name in zip(table["object_id"], table["img_file_name"], strict=True):
            zf.writestr(name, source.read(object_id))
    return target


def read_ecotaxa_tsv(source: Path | str | io.StringIO) -> pd.DataFrame:
    """An EcoTaxa TSV (an export, or an import file) as a table typed by its type row; rules checked."""
    text = Path(source).read_text() if not isinstance(source, io.StringIO) else source.getvalue()
    header, _, rest = text.partition("\n")
    columns = header.split("\t")
    second, _, body = rest.partition("\n")
    has_types = all(v in (TEXT, NUMBER) for v in second.split("\t"))
    types = second.split("\t") if has_types else None
    table = pd.read_csv(io.StringIO(header + "\n" + (body if has_types else rest)), sep="\t", dtype=str,
                        keep_default_na=False)
    table.columns = columns
    for column, kind in zip(columns, types or [TEXT] * len(columns), strict=True):
        if kind == NUMBER:
            table[column] = pd.to_numeric(table[column].replace("", np.nan), errors="raise")
    check_ecotaxa(table, types or column_types(table))
    return table


def validated_labels(table: pd.DataFrame, classes: Mapping[str, str]) -> pd.Series:
    """The labels a person validated in EcoTaxa as class keys, by particle id: training labels for the next run.

    Categories are matched to the run's classes by display name or key; a validated category that is neither is
    an error naming the object (EcoTaxa may name a taxon the lab does not train on: map it first).
    """
    by_name = {name.lower(): key for key, name in classes.items()} | {key.lower(): key for key in classes}
    validated = table[table["object_annotation_status"] == "validated"]
    keys = validated["object_annotation_category"].str.lower().map(by_name)
    if keys.isna().any():
        row = validated[keys.isna()].iloc[0]
        raise ValueError(f"EcoTaxa object {row['object_id']!r}: validated category "
                         f"{row['object_annotation_category']!r} is none of the classes ({', '.join(classes.values())})")
    return pd.Series(keys.to_numpy(), index=pd.Index(validated["object_id"], name="particle_id"), name="label")


def export_summary(table: pd.DataFrame) -> dict[str, Any]:
    """How many objects an export holds, by status."""
    return {"objects": len(table), **table["object_annotation_status"].value_counts().to_dict()}


FORMATS = ("ecotaxa", "depth-table")


def run_predictions(run: Run) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """A run's per-particle core predictions (with novelty where it has them), where its core is packed, its cache.

    An apply run's come from its own tables; a training run's from notebook 02 (and 05's novelty table).
    """
    if run.exists("applied_predictions"):
        return (run.read("applied_predictions"), run.section("apply")["core_data"],
                str(_recorded(run, "apply").get("cache_dir", "")))
    predictions = run.read("core_predictions")
    if run.exists("core_novelty"):
        novelty = run.read("core_novelty")
        predictions = predictions.join(novelty[[c for c in ("combined_rank", "unknown") if c in novelty]])
    return predictions, read_model_card(run.path)["dataset"]["parts"]["core"], str(_recorded(run, "02_cnn").get("cache_dir", ""))


def _recorded(run: Run, stage: str) -> dict[str, Any]:
    """A stage's recorded parameters (``params/<stage>.yaml``)."""
    return yaml.safe_load((run.path / "params" / f"{stage}.yaml").read_text())


def write_exports(run_dir: Path | str) -> list[Path]:
    """Every export of a run that classified a core (none for a run without core predictions)."""
    run = Run(run_dir)
    if not (run.exists("applied_predictions") or run.exists("core_predictions")):
        return []
    formats = FORMATS if run.exists("sample_composition") or run.exists("applied_sample_composition") else ("ecotaxa",)
    return [export_run(run.path, fmt) for fmt in formats]


def export_run(run_dir: Path | str, fmt: str = "ecotaxa", out: Path | str | None = None) -> Path:
    """Write one export of a run (default under ``RUN_DIR/exports/``); returns its path.

    ``ecotaxa``: the import zip; ``depth-table``: the per-depth table as CSV and, beside it, Parquet.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run = Run(run_dir)
    card = _card(run)
    if fmt == "depth-table":
        return write_depth_table(run, card, Path(out) if out else run.path / "exports" / f"depth_table_{run.name}.csv")
    predictions, core_data, cache_dir = run_predictions(run)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    core = load_packed(cache / "packed" / core_data["pack_key"]).table
    validated = review_to_labels(load_review(run.path)).to_dict()
    table = ecotaxa_table(predictions, core, validated=validated, classes=card["classes"],
                          software=f"icecore {card['versions'].get('icecore')}", run=run.name)
    return write_ecotaxa_zip(Path(out) if out else run.path / "exports" / f"ecotaxa_{run.name}.zip", table,
                             core_data["images"])


def _card(run: Run) -> dict[str, Any]:
    """The card of the models behind a run's predictions: its own (a training run) or its training run's (apply)."""
    if (run.path / CARD_FILE).is_file():
        return read_model_card(run.path)
    return json.loads((run.path / "training_model_card.json").read_text())


def write_depth_table(run: Run, card: dict[str, Any], target: Path) -> Path:
    """The per-depth table of a run as CSV at ``target`` and Parquet beside it; returns the CSV."""
    applied = run.exists("applied_sample_composition")
    stage = "apply" if applied else "02_cnn"
    composition = run.read("applied_sample_composition" if applied else "sample_composition")
    name = "applied_concentrations" if applied else "core_concentrations"
    concentrations = run.read(name) if run.exists(name) else None
    table = depth_table(composition, concentrations, model_card=card["id"],
                        n_boot=int(_recorded(run, stage)["bootstrap"]))
    atomic_write_table(table, target.with_suffix(".parquet"))
    return atomic_write_table(table, target)


def depth_table(composition: pd.DataFrame, concentrations: pd.DataFrame | None, *, model_card: str,
                n_boot: int) -> pd.DataFrame:
    """One row per depth sample for a data paper: depth, sample, particles, then per class the EM-adjusted fraction
    and (where volumes are known) particles per ml, each with its 95% interval bounds; units in the column names.

    ``composition``: the per-sample long table (sample_id, depth_m, class, fraction, ci_low, ci_high, n_particles);
    ``concentrations``: the per-sample class concentrations (counting + classification interval).
    """
    index = [SAMPLE, DEPTH] if DEPTH in composition else [SAMPLE]
    wide = composition.pivot_table(index=index, columns="class", values=["fraction", "ci_low", "ci_high"],
                                   sort=False)
    classes = list(dict.fromkeys(composition["class"]))
    table = composition.groupby(index, sort=False)["n_particles"].first().rename("n_particles").to_frame()
    for key in classes:
        table[f"{key}_fraction"] = wide[("fraction", key)]
        table[f"{key}_fraction_lo95"] = wide[("ci_low", key)]
        table[f"{key}_fraction_hi95"] = wide[("ci_high", key)]
    net = concentrations is not None and "per_ml_net" in concentrations
    if concentrations is not None:
        conc = concentrations.rename(columns={"sample": SAMPLE}).set_index([SAMPLE, "class"])
        if net:  # the procedural blanks left the concentrations: they are no depth samples
            table = table[table.index.get_level_values(SAMPLE).isin(conc.index.get_level_values(SAMPLE))]
        samples = table.index.get_level_values(SAMPLE)
        table.insert(1, "volume_ml", conc["volume_ml"].groupby(level=SAMPLE).first().reindex(samples).to_numpy())
        sources = (("per_ml_net", "per_ml_net_lo", "per_ml_net_hi") if net
                   else ("per_ml", "per_ml_total_lo", "per_ml_total_hi"))
        for key in classes:
            rows = [(s, key) for s in samples]
            for column, name in zip(sources, ("per_ml", "per_ml_lo95", "per_ml_hi95"), strict=True):
                table[f"{key}_{name}"] = conc[column].reindex(rows).to_numpy()
    table = table.reset_index().rename(columns={DEPTH: "depth_m"})
    table["method"] = (f"fraction: EM prior adjustment (Saerens et al. 2002) of the calibrated probabilities, 95% "
                       f"percentile bootstrap over the sample's particles ({n_boot} resamples); per_ml: particles per "
                       + ("ml of meltwater minus the procedural blanks' (pooled), both counts' Poisson uncertainty "
                          "in the interval" if net else "ml of meltwater, exact Poisson counting and classification "
                          "uncertainty together"))
    table["model_card"] = model_card
    return table.set_index(SAMPLE)
