"""The 34 FlowCam features of a grayscale brightfield crop, computed as the instrument does from its image.

A crop is segmented against its own background (estimated on the crop border): pixels darker or lighter
than the background by more than a noise-scaled threshold are particle pixels; small gaps are closed, the
largest connected object is the particle and its holes are filled. The "ABD" quantities count only the
particle's thresholded pixels (a clear glass shard with dark rims has a small ABD area), the "filled" and
diameter quantities use the filled outline. Lengths are in micrometres (``pixel_um`` per pixel), areas in
um^2, volumes in um^3, angles in degrees, intensities in gray levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours, moments_central
from skimage.morphology import skeletonize
from tqdm.auto import tqdm

from ..schema import FLOWCAM_FEATURES, PARTICLE_ID

# Micrometres per pixel: a Corylus pollen grain (~25 um) spans ~100 px in the study's 20x crops.
PIXEL_UM = 0.25
# Smallest gray-level difference from the background that counts as particle.
MIN_CONTRAST = 12.0
# Calipers measured every degree (Feret diameters and angles).
_ANGLES = np.deg2rad(np.arange(180.0))
_DIRECTIONS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
_EIGHT = np.ones((3, 3), dtype=bool)
# Masks longer than this (px) are skeletonised at a reduced scale.
_SKELETON_SIZE = 96


@dataclass(frozen=True)
class Segmentation:
    """A crop's main particle: filled outline, thresholded pixels, and the number of sizable objects in the crop."""

    filled: np.ndarray
    abd: np.ndarray
    n_objects: int


def check_crop(crop: np.ndarray) -> np.ndarray:
    """Return the crop as float32, or fail saying what is wrong with it (dims, dtype, size)."""
    crop = np.asarray(crop)
    if crop.ndim != 2:
        raise ValueError(f"a crop must be a 2-D grayscale array, got shape {crop.shape}")
    if crop.dtype != np.uint8:
        raise ValueError(f"a crop must be uint8 gray levels, got dtype {crop.dtype}")
    if min(crop.shape) < 4:
        raise ValueError(f"a crop must be at least 4x4 pixels, got {crop.shape[0]}x{crop.shape[1]}")
    return crop.astype(np.float32)


def _border(img: np.ndarray) -> np.ndarray:
    """The crop's outermost pixels, where the instrument's margin shows the background."""
    return np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])


def segment(img: np.ndarray, min_contrast: float = MIN_CONTRAST) -> Segmentation:
    """Segment the main particle: threshold against the border's background, close gaps, keep the largest."""
    border = _border(img)
    background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    delta = max(min_contrast, 4.0 * noise)
    smooth = ndi.uniform_filter(img, size=3, mode="nearest")
    pixels = np.abs(smooth - background) > delta
    if not pixels.any():
        pixels = smooth <= smooth.min()
    padded = np.pad(pixels, 2)
    closed = ndi.binary_closing(padded, structure=_EIGHT, iterations=2)[2:-2, 2:-2] | pixels
    labels, n = ndi.label(closed, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    main = labels == int(np.argmax(sizes)) + 1
    filled = ndi.binary_fill_holes(main)
    n_objects = int(np.sum(sizes >= max(4.0, 0.05 * sizes.max())))
    return Segmentation(filled=filled, abd=filled & pixels, n_objects=n_objects)


def _hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices of an outline (all points when they are degenerate, e.g. collinear)."""
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        return points


def _calipers(outline: np.ndarray) -> dict[str, float]:
    """Feret diameters over 180 directions: max, min, their angles, the width across the max, and their mean."""
    hull = _hull(outline[:, ::-1])
    proj = hull @ _DIRECTIONS.T
    widths = proj.max(axis=0) - proj.min(axis=0)
    i_max, i_min = int(np.argmax(widths)), int(np.argmin(widths))
    return {
        "length": float(widths[i_max]),
        "width": float(widths[(i_max + 90) % 180]),
        "feret_min": float(widths[i_min]),
        "angle_max": float(np.rad2deg(_ANGLES[i_max])),
        "angle_min": float(np.rad2deg(_ANGLES[i_min])),
        "mean": float(widths.mean()),
    }


def _box(mask: np.ndarray, pad: int = 2) -> tuple[slice, slice]:
    """The mask's bounding box grown by ``pad`` px (within the crop): where every shape measure looks."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))


def _contour(mask: np.ndarray) -> np.ndarray:
    """The longest sub-pixel outline of the mask, slightly smoothed so pixel steps don't count as perimeter."""
    soft = ndi.gaussian_filter(np.pad(mask, 3).astype(np.float32), 0.8)
    contours = find_contours(soft, min(0.5, 0.5 * float(soft.max())))
    return max(contours, key=len) - 3.0


def _polygon_length(points: np.ndarray) -> float:
    """Perimeter of a closed polygon."""
    return float(np.sum(np.hypot(*(np.roll(points, -1, axis=0) - points).T)))


def _smoothed(points: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """The outline averaged along its arc over a window of ``fraction`` of its points (roughness reference)."""
    window = max(3, int(round(fraction * len(points))) | 1)
    kernel = np.ones(window) / window
    wrapped = np.concatenate([points[-window:], points, points[:window]])
    return np.stack([np.convolve(wrapped[:, k], kernel, mode="same")[window:-window] for k in range(2)], axis=1)


def _symmetry(mask: np.ndarray) -> float:
    """Fraction of particle pixels whose 180-degree rotation about the centroid is also particle."""
    ys, xs = np.nonzero(mask)
    ry = np.rint(2 * ys.mean() - ys).astype(int)
    rx = np.rint(2 * xs.mean() - xs).astype(int)
    inside = (ry >= 0) & (ry < mask.shape[0]) & (rx >= 0) & (rx < mask.shape[1])
    hits = np.zeros(len(ys), dtype=bool)
    hits[inside] = mask[ry[inside], rx[inside]]
    return float(hits.mean())


def _pooled(mask: np.ndarray, factor: int) -> np.ndarray:
    """The mask shrunk by ``factor`` with max-pooling (thin fibres survive)."""
    h, w = -(-mask.shape[0] // factor) * factor, -(-mask.shape[1] // factor) * factor
    padded = np.zeros((h, w), dtype=bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def _geodesic(mask: np.ndarray) -> tuple[float, float]:
    """Skeleton length and thickness (px); large particles are measured on a max-pooled mask to stay fast."""
    factor = max(1, -(-max(mask.shape) // _SKELETON_SIZE))
    if factor == 1:
        return _skeleton_length(mask)
    length, thickness = _skeleton_length(_pooled(mask, factor))
    return length * factor, thickness * factor


def _skeleton_length(mask: np.ndarray) -> tuple[float, float]:
    """Longest geodesic path along the skeleton (px) and the particle's typical thickness on it (px)."""
    skeleton = skeletonize(mask)
    distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    thickness = 2.0 * float(np.median(distance[skeleton])) if skeleton.any() else 1.0
    index = np.full(mask.shape, -1, dtype=np.int64)
    ys, xs = np.nonzero(skeleton)
    if len(ys) < 2:
        return 0.0, thickness
    index[ys, xs] = np.arange(len(ys))
    rows, cols, weights = [], [], []
    padded = np.pad(index, 1, constant_values=-1)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        neighbour = padded[1 + ys + dy, 1 + xs + dx]
        linked = neighbour >= 0
        rows.append(index[ys[linked], xs[linked]])
        cols.append(neighbour[linked])
        weights.append(np.full(int(linked.sum()), np.hypot(dy, dx)))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(len(ys),) * 2)
    far = _farthest(dijkstra(graph, directed=False, indices=0))
    return float(_finite_max(dijkstra(graph, directed=False, indices=far))), thickness


def _farthest(distances: np.ndarray) -> int:
    """Index of the farthest reachable node."""
    return int(np.argmax(np.where(np.isfinite(distances), distances, -1.0)))


def _finite_max(distances: np.ndarray) -> float:
    """Largest finite distance (a skeleton can have disconnected bits)."""
    return float(distances[np.isfinite(distances)].max())


def _edge_gradient(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude (gray levels per pixel) on the particle's outline."""
    outline = mask & ~ndi.binary_erosion(mask, structure=_EIGHT, border_value=1)
    if not outline.any():
        outline = mask
    gy = ndi.sobel(img, axis=0, mode="nearest") / 8.0
    gx = ndi.sobel(img, axis=1, mode="nearest") / 8.0
    return float(np.hypot(gy[outline], gx[outline]).mean())


def _moment_shape(mask: np.ndarray) -> tuple[float, float]:
    """Hu circularity (1 for a disc) and moment elongation (1 - minor/major axis) of the mask."""
    mu = moments_central(mask.astype(np.float64), order=2)
    m00, mu20, mu02, mu11 = mu[0, 0], mu[2, 0], mu[0, 2], mu[1, 1]
    hu = m00**2 / (2.0 * np.pi * (mu20 + mu02)) if mu20 + mu02 > 0 else 1.0
    common = np.sqrt(4.0 * mu11**2 + (mu20 - mu02) ** 2)
    major, minor = mu20 + mu02 + common, mu20 + mu02 - common
    elongation = 1.0 - np.sqrt(max(minor, 0.0) / major) if major > 0 else 0.0
    return float(min(hu, 1.0)), float(elongation)


def flowcam_features(crop: np.ndarray, pixel_um: float = PIXEL_UM) -> dict[str, float]:
    """The 34 FlowCam features (``schema.FLOWCAM_FEATURES`` order) of a uint8 brightfield crop."""
    img = check_crop(crop)
    seg = segment(img)
    box = _box(seg.filled)
    mask, sub = seg.filled[box], img[box]
    area_px = float(mask.sum())
    abd_px = float(max(seg.abd.sum(), 1))
    contour = _contour(mask)
    cal = _calipers(contour)
    perimeter_px = max(_polygon_length(contour), 1e-6)
    convex_px = float(np.pi * cal["mean"])
    hu, elongation = _moment_shape(mask)
    skeleton_px, thickness_px = _geodesic(mask)
    geodesic_px = skeleton_px + thickness_px
    values = sub[mask]
    u, u2, u3 = pixel_um, pixel_um**2, pixel_um**3
    d_abd = 2.0 * np.sqrt(abd_px / np.pi)
    esd = cal["mean"]
    centroid = contour.mean(axis=0)
    radii = np.hypot(*(contour - centroid).T)
    features = {
        "Area (ABD)": abd_px * u2,
        "Area (Filled)": area_px * u2,
        "Aspect Ratio": cal["width"] / cal["length"],
        "Biovolume (Cylinder)": np.pi / 4.0 * cal["width"] ** 2 * cal["length"] * u3,
        "Biovolume (P. Spheroid)": np.pi / 6.0 * cal["width"] ** 2 * cal["length"] * u3,
        "Circle Fit": float(np.clip(1.0 - radii.std() / max(radii.mean(), 1e-6), 0.0, 1.0)),
        "Circularity": min(4.0 * np.pi * area_px / perimeter_px**2, 1.0),
        "Circularity (Hu)": hu,
        "Compactness": max(perimeter_px**2 / (4.0 * np.pi * area_px), 1.0),
        "Convex Perimeter": convex_px * u,
        "Convexity": min(convex_px / perimeter_px, 1.0),
        "Diameter (ABD)": d_abd * u,
        "Diameter (ESD)": esd * u,
        "Edge Gradient": _edge_gradient(sub, mask),
        "Elongation": elongation,
        "Feret Angle Max": cal["angle_max"],
        "Feret Angle Min": cal["angle_min"],
        "Fiber Curl": max(geodesic_px / cal["length"] - 1.0, 0.0),
        "Fiber Straightness": min(cal["length"] / geodesic_px, 1.0),
        "Geodesic Aspect Ratio": min(area_px / geodesic_px**2, 1.0),
        "Geodesic Length": geodesic_px * u,
        "Geodesic Thickness": area_px / geodesic_px * u,
        "Intensity": float(values.mean()),
        "Length": cal["length"] * u,
        "Particles Per Chain": float(seg.n_objects),
        "Perimeter": perimeter_px * u,
        "Roughness": max(1.0 - _polygon_length(_smoothed(contour)) / perimeter_px, 0.0),
        "Sigma Intensity": float(values.std()),
        "Sum Intensity": float(values.sum()),
        "Symmetry": _symmetry(mask),
        "Transparency": float(np.clip(1.0 - d_abd / esd, 0.0, 1.0)),
        "Volume (ABD)": np.pi / 6.0 * d_abd**3 * u3,
        "Volume (ESD)": np.pi / 6.0 * esd**3 * u3,
        "Width": cal["width"] * u,
    }
    return {name: float(features[name]) for name in FLOWCAM_FEATURES}


def features_frame(
    crops: Iterable[np.ndarray], ids: Sequence[str], pixel_um: float = PIXEL_UM, progress: bool = False
) -> pd.DataFrame:
    """Features of many crops as a DataFrame indexed by ``particle_id`` (columns in FlowCam order)."""
    rows = []
    for particle_id, crop in tqdm(zip(ids, crops, strict=True), total=len(ids), desc="features", disable=not progress):
        try:
            rows.append(flowcam_features(crop, pixel_um))
        except ValueError as err:
            raise ValueError(f"particle {particle_id!r}: {err}") from err
    frame = pd.DataFrame(rows, columns=list(FLOWCAM_FEATURES), index=pd.Index(list(ids), name=PARTICLE_ID))
    return frame
