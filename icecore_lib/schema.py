"""Names shared by every module: FlowCam feature columns, table columns, the particle classes."""

from __future__ import annotations

# The 34 FlowCam morphology/intensity columns used by ICELEARNING (its CFG.py), in its order.
FLOWCAM_FEATURES: tuple[str, ...] = (
    "Area (ABD)",
    "Area (Filled)",
    "Aspect Ratio",
    "Biovolume (Cylinder)",
    "Biovolume (P. Spheroid)",
    "Circle Fit",
    "Circularity",
    "Circularity (Hu)",
    "Compactness",
    "Convex Perimeter",
    "Convexity",
    "Diameter (ABD)",
    "Diameter (ESD)",
    "Edge Gradient",
    "Elongation",
    "Feret Angle Max",
    "Feret Angle Min",
    "Fiber Curl",
    "Fiber Straightness",
    "Geodesic Aspect Ratio",
    "Geodesic Length",
    "Geodesic Thickness",
    "Intensity",
    "Length",
    "Particles Per Chain",
    "Perimeter",
    "Roughness",
    "Sigma Intensity",
    "Sum Intensity",
    "Symmetry",
    "Transparency",
    "Volume (ABD)",
    "Volume (ESD)",
    "Width",
)

# Features computed from the crop's gray levels: they follow a session's illumination, exposure and focus as
# well as the particle (their measured shift: docs/measurements.md).
GRAY_LEVEL_FEATURES: tuple[str, ...] = ("Edge Gradient", "Intensity", "Sigma Intensity", "Sum Intensity")
# Named feature sets a model's metadata input can take: the study's 34, or the outline and size ones only.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all": FLOWCAM_FEATURES,
    "shape": tuple(f for f in FLOWCAM_FEATURES if f not in GRAY_LEVEL_FEATURES),
}


def feature_set(name: str) -> tuple[str, ...]:
    """The feature columns of a named set in ``FEATURE_SETS`` (an error lists the names)."""
    if name not in FEATURE_SETS:
        raise ValueError(f"unknown metadata feature set {name!r}; choose one of {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[name]


# The instrument's usual light-grey brightfield background: transparent pixels are composited onto it (so
# padding looks like background, not like a dark particle) and flat-fielded crops are scaled to it.
BACKGROUND_GRAY = 110

# Table columns (after a manifest's column mapping is applied).
IMGPATH = "imgpaths"
LABEL = "label"
SESSION = "session"
SAMPLE = "sample_id"
DEPTH = "depth_m"
# Fluid volume imaged (ml) of the particle's run or sample: particles per ml = count / volume (concentrations).
VOLUME = "volume_ml"
PARTICLE_ID = "particle_id"
ORIG_HEIGHT = "orig_height"
ORIG_WIDTH = "orig_width"
SPLIT = "split"

# The reference study's seven classes: key -> display name.
CLASSES: dict[str, str] = {
    "camp": "Ash #1 Campanian",
    "corylus": "Pollen #1 Corylus",
    "dust": "Dust",
    "grim": "Ash #2 Grimsvotn",
    "qrob": "Pollen #2 Q. robur",
    "qsub": "Pollen #3 Q. suber",
    "cont": "Contamination",
}

# The class planted in the synthetic core set and never shown in training.
NEW_CLASS = "diatom"
NEW_CLASS_DISPLAY = "Diatom (new)"


def display_name(key: str, names: dict[str, str] | None = None) -> str:
    """Display name of a class key, falling back to the key itself for unknown classes."""
    names = CLASSES if names is None else names
    if key == NEW_CLASS:
        return NEW_CLASS_DISPLAY
    return names.get(key, key)
