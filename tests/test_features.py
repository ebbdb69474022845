"""FlowCam features: each responds to shape as its definition says, and never comes out NaN for a valid crop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from icecore_lib.images.features import PIXEL_UM, features_frame, flowcam_features
from icecore_lib.schema import FLOWCAM_FEATURES, PARTICLE_ID


def brightfield(mask: np.ndarray, density: float = 0.6, background: float = 120.0, seed: int = 0) -> np.ndarray:
    """A crop as the instrument sees it: a dark particle on a light background, slightly blurred, noisy."""
    rng = np.random.default_rng(seed)
    light = background * (1 - density * ndi.gaussian_filter(mask.astype(float), 0.8))
    return np.clip(np.rint(light + rng.normal(0, 1.5, mask.shape)), 0, 255).astype(np.uint8)


def ellipse(size: int, a: float, b: float, angle_deg: float = 0.0) -> np.ndarray:
    """Mask of an ellipse (semi-axes a along the angle, b across) centred in a square crop."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    t = np.deg2rad(angle_deg)
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def test_names_and_order_are_flowcams() -> None:
    feats = flowcam_features(brightfield(ellipse(60, 20, 12)))
    assert list(feats) == list(FLOWCAM_FEATURES)


def test_disc_is_circular() -> None:
    feats = flowcam_features(brightfield(ellipse(90, 30, 30)))
    assert feats["Circularity"] == pytest.approx(1.0, abs=0.05)
    assert feats["Circularity (Hu)"] == pytest.approx(1.0, abs=0.02)
    assert feats["Aspect Ratio"] == pytest.approx(1.0, abs=0.05)
    assert feats["Circle Fit"] > 0.95
    assert feats["Symmetry"] > 0.95
    assert feats["Diameter (ESD)"] == pytest.approx(61 * PIXEL_UM, rel=0.05)


def test_elongated_ellipse_aspect_ratio_and_angle() -> None:
    feats = flowcam_features(brightfield(ellipse(100, 40, 10, angle_deg=30)))
    assert feats["Aspect Ratio"] == pytest.approx(0.25, abs=0.04)
    assert feats["Length"] == pytest.approx(81 * PIXEL_UM, rel=0.05)
    assert feats["Width"] == pytest.approx(21 * PIXEL_UM, rel=0.1)
    assert feats["Elongation"] > 0.6
    assert feats["Circularity"] < 0.7
    assert min(abs(feats["Feret Angle Max"] - 30), abs(feats["Feret Angle Max"] - 150)) <= 3


def test_area_and_volume_scale_with_size() -> None:
    small = flowcam_features(brightfield(ellipse(60, 10, 10)))
    large = flowcam_features(brightfield(ellipse(120, 20, 20)))
    assert large["Area (Filled)"] / small["Area (Filled)"] == pytest.approx(4.0, rel=0.1)
    assert large["Diameter (ABD)"] / small["Diameter (ABD)"] == pytest.approx(2.0, rel=0.05)
    assert large["Volume (ESD)"] / small["Volume (ESD)"] == pytest.approx(8.0, rel=0.15)


def test_clear_shard_with_dark_rim_is_transparent() -> None:
    disc = ellipse(90, 35, 35)
    rim = disc & ~ndi.binary_erosion(disc, iterations=3)
    clear = flowcam_features(brightfield(rim))
    solid = flowcam_features(brightfield(disc))
    assert clear["Area (Filled)"] == pytest.approx(solid["Area (Filled)"], rel=0.05)
    assert clear["Area (ABD)"] < 0.5 * solid["Area (ABD)"]
    assert clear["Transparency"] > 0.25 > solid["Transparency"]
    assert clear["Intensity"] > solid["Intensity"]


def test_curved_fibre_is_long_and_less_straight() -> None:
    straight = np.zeros((80, 80), bool)
    straight[39:42, 10:70] = True
    curved = np.zeros((80, 80), bool)
    t = np.linspace(0, np.pi, 300)
    curved[np.rint(40 + 25 * np.cos(t)).astype(int), np.rint(20 + 25 * np.sin(t) * 1.5).astype(int)] = True
    curved = ndi.binary_dilation(curved)
    fs, fc = flowcam_features(brightfield(straight)), flowcam_features(brightfield(curved))
    assert fs["Fiber Straightness"] > 0.9
    assert fc["Fiber Straightness"] < 0.75
    assert fc["Geodesic Length"] > fc["Length"]
    assert fs["Geodesic Aspect Ratio"] < 0.15


def test_second_particle_counts_in_the_chain() -> None:
    two = np.roll(ellipse(100, 12, 12), -20, axis=1)
    two |= np.roll(two, 40, axis=1)
    assert flowcam_features(brightfield(two))["Particles Per Chain"] == 2.0
    assert flowcam_features(brightfield(ellipse(80, 12, 12)))["Particles Per Chain"] == 1.0


@pytest.mark.parametrize(
    "crop",
    [
        np.full((12, 12), 110, np.uint8),  # empty field
        brightfield(np.pad(np.ones((20, 10), bool), ((0, 10), (5, 5)))),  # cut at the top border
        brightfield(np.pad(np.ones((1, 1), bool), 2)),  # a one-pixel speck in a 5x5 crop
        np.random.default_rng(1).integers(0, 256, (40, 30)).astype(np.uint8),  # pure noise
    ],
)
def test_features_are_finite(crop: np.ndarray) -> None:
    assert np.all(np.isfinite(list(flowcam_features(crop).values())))


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        (np.zeros((10, 10, 3), np.uint8), "2-D"),
        (np.zeros((10, 10), np.float32), "uint8"),
        (np.zeros((3, 9), np.uint8), "4x4"),
    ],
)
def test_bad_crop_is_refused_clearly(crop: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        flowcam_features(crop)


def test_features_frame_is_indexed_by_particle_and_names_a_bad_one() -> None:
    crops = [brightfield(ellipse(50, 15, 10)), brightfield(ellipse(50, 10, 10))]
    frame = features_frame(crops, ["a.png", "b.png"])
    assert frame.index.name == PARTICLE_ID
    assert list(frame.index) == ["a.png", "b.png"]
    assert list(frame.columns) == list(FLOWCAM_FEATURES)
    with pytest.raises(ValueError, match="bad.png"):
        features_frame([crops[0], np.zeros((2, 2), np.uint8)], ["a.png", "bad.png"])
