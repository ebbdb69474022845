"""Particle renderers, one per class: each draws a particle's optical density at the instrument's scale.

Optical density here is the fraction of the background light a pixel loses (0 = clear, 1 = black, negative =
brighter than the background, as a glint on glass). A renderer takes a seeded generator and returns a tight
float32 map around the particle; the acquisition (``sessions.acquire``) places it in a crop with margins and
adds the background, focus blur and noise. Sizes are in pixels of the 20x crops (``features.PIXEL_UM``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon2mask

from ..schema import NEW_CLASS

Renderer = Callable[[np.random.Generator], np.ndarray]


# ---- shared drawing helpers -------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) centred on the array's middle."""
    y, x = np.mgrid[:h, :w].astype(np.float32)
    return y - (h - 1) / 2.0, x - (w - 1) / 2.0


def _rotate(y: np.ndarray, x: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along the particle's axis, v across it) of a particle turned by ``angle`` radians."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return x * c + y * s, -x * s + y * c


def _texture(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian noise of unit variance and correlation length ``scale`` px (granules, facets, mottling)."""
    step = max(1, int(scale // 2))
    small = tuple(s // step + 3 for s in shape)
    noise = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), scale / step, mode="wrap")
    field = ndi.zoom(noise, step, order=1)[: shape[0], : shape[1]] if step > 1 else noise[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    """A log-normal size (median, log-sd) kept within the instrument's range [lo, hi]."""
    return float(np.clip(median * np.exp(sigma * rng.standard_normal()), lo, hi))


def _inside(signed: np.ndarray) -> np.ndarray:
    """Anti-aliased inside indicator from a signed distance (negative inside), one pixel of transition."""
    return np.clip(0.5 - signed, 0.0, 1.0)


def _band(signed: np.ndarray, depth: float, width: float) -> np.ndarray:
    """A soft band following the outline ``depth`` px inside it: exine walls, frustules, glass rims."""
    return np.exp(-(((signed + depth) / width) ** 2))


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the outline, negative inside the mask."""
    return (ndi.distance_transform_edt(~mask) - ndi.distance_transform_edt(mask)).astype(np.float32)


def _sites(rng: np.random.Generator, where: np.ndarray, n: int) -> np.ndarray:
    """``n`` random pixel positions (row, col) among the true pixels of ``where`` (none if it is empty)."""
    points = np.argwhere(where)
    if len(points) == 0:
        return points
    return points[rng.integers(0, len(points), size=n)]


def _window(shape: tuple[int, ...], y0: int, x0: int, r: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The slices of a square window of radius ``r`` around (y0, x0), clipped to the array, and its offsets."""
    top, left = max(y0 - r, 0), max(x0 - r, 0)
    bottom, right = min(y0 + r + 1, shape[0]), min(x0 + r + 1, shape[1])
    dy, dx = np.mgrid[top - y0 : bottom - y0, left - x0 : right - x0].astype(np.float32)
    return (slice(top, bottom), slice(left, right)), dy, dx


def _spots(od: np.ndarray, rng: np.random.Generator, where: np.ndarray, n: int, amp: tuple[float, float],
           sigma: tuple[float, float]) -> None:
    """Add ``n`` Gaussian spots (vesicle dots, glints) of random amplitude and size at pixels of ``where``."""
    for y0, x0 in _sites(rng, where, n):
        s = rng.uniform(*sigma)
        window, dy, dx = _window(od.shape, y0, x0, int(np.ceil(3 * s)))
        od[window] += rng.uniform(*amp) * np.exp(-(dy**2 + dx**2) / (2 * s * s))


def _shard_mask(rng: np.random.Generator, size: float, aspect: float, n_vertices: int, concavity: float) -> np.ndarray:
    """An angular glass-shard outline: a random polygon, stretched, some vertices pushed inwards."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
    radii = rng.uniform(0.55, 1.0, n_vertices) * np.where(rng.random(n_vertices) < concavity, 0.55, 1.0)
    turn = rng.uniform(0, 2 * np.pi)
    u, v = radii * np.cos(angles), aspect * radii * np.sin(angles)
    x = (u * np.cos(turn) - v * np.sin(turn)) * size / 2
    y = (u * np.sin(turn) + v * np.cos(turn)) * size / 2
    pad = 6
    h, w = int(np.ptp(y) + 2 * pad + 1), int(np.ptp(x) + 2 * pad + 1)
    return polygon2mask((h, w), np.stack([y - y.min() + pad, x - x.min() + pad], axis=1))


def _tight(od: np.ndarray, pad: int = 3) -> np.ndarray:
    """Crop the map to the particle (|od| above a trace) plus ``pad`` px, as float32."""
    rows = np.flatnonzero(np.abs(od).max(axis=1) > 0.01)
    cols = np.flatnonzero(np.abs(od).max(axis=0) > 0.01)
    if len(rows) == 0:
        return od.astype(np.float32)
    top, left = max(rows[0] - pad, 0), max(cols[0] - pad, 0)
    return od[top : rows[-1] + pad + 1, left : cols[-1] + pad + 1].astype(np.float32)


# ---- volcanic ash ----------------------------------------------------------------------------------------------


def camp(rng: np.random.Generator) -> np.ndarray:
    """Campanian ash: a clear, flat, angular glass shard with thin dark rims and vesicles (dots, stretched bubbles)."""
    size = _lognormal(rng, 150, 0.4, 50, 420)
    mask = _shard_mask(rng, size, rng.uniform(0.35, 0.9), int(rng.integers(4, 9)), concavity=0.35)
    signed = _signed_distance(mask)
    body = _inside(signed)
    od = body * (rng.uniform(0.02, 0.07) + 0.012 * _texture(rng, mask.shape, 10.0))
    od += rng.uniform(0.5, 0.8) * _band(signed, 1.0, rng.uniform(1.0, 1.8)) * (signed > -4)
    interior = signed < -4
    area = float(mask.sum())
    _spots(od, rng, interior, int(rng.poisson(area / rng.uniform(120, 500))), (0.2, 0.6), (0.6, 1.6))
    _vesicles(od, rng, interior, int(rng.poisson(area / rng.uniform(800, 3000))))
    return _tight(od)


def _vesicles(od: np.ndarray, rng: np.random.Generator, where: np.ndarray, n: int) -> None:
    """Draw ``n`` stretched gas bubbles as thin dark elliptical outlines, aligned along a common flow direction."""
    flow = rng.uniform(0, np.pi)
    for y0, x0 in _sites(rng, where, n):
        a = rng.uniform(2.5, 9.0)
        b = a / rng.uniform(1.2, 3.5)
        window, dy, dx = _window(od.shape, y0, x0, int(np.ceil(a + 3)))
        u, v = _rotate(dy, dx, flow + rng.normal(0, 0.2))
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        od[window] += rng.uniform(0.25, 0.5) * np.exp(-(((rho - 1) * b / 0.8) ** 2)) * where[window]


def grim(rng: np.random.Generator) -> np.ndarray:
    """Grimsvotn ash: a dark, blocky, opaque basaltic shard with facets, a clearer glass window and glints."""
    size = _lognormal(rng, 150, 0.4, 50, 420)
    mask = _shard_mask(rng, size, rng.uniform(0.5, 0.95), int(rng.integers(6, 11)), concavity=0.2)
    signed = _signed_distance(mask) + 2.0 * _texture(rng, mask.shape, 3.0)
    body = _inside(signed)
    facets, seams = _facets(rng, mask, int(rng.integers(3, 8)))
    od = body * (facets + 0.06 * _texture(rng, mask.shape, 2.5))
    od = np.maximum(od, body * 0.85 * seams)
    od = np.maximum(od, 0.9 * _band(signed, 1.5, 2.5) * (signed > -6))
    _spots(od, rng, signed < -6, int(rng.integers(0, 4)), (-0.7, -0.3), (1.0, 2.5))
    return _tight(od)


def _facets(rng: np.random.Generator, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi facets of a shard: a density per facet (one may be a clear window) and the seams between them."""
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(ys), size=n)
    y, x = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(np.float32)
    dist = np.stack([np.hypot(y - ys[k], x - xs[k]) for k in pick])
    order = np.sort(dist, axis=0)
    density = rng.uniform(0.5, 0.92, n).astype(np.float32)
    if rng.random() < 0.5:
        density[0] = rng.uniform(0.1, 0.3)
    facets = density[np.argmin(dist, axis=0)]
    seams = np.exp(-(((order[1] - order[0]) / 1.2) ** 2)) if n > 1 else np.zeros_like(facets)
    return facets, seams


# ---- pollen ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollenStyle:
    """What tells one pollen type from another: size, outline, wall, interior granules and apertures."""

    diameter: tuple[float, float]  # median, log-sd (px)
    aspect: tuple[float, float]  # range of minor/major axis
    lobes: tuple[float, float]  # range of the 3-fold outline amplitude (triangular grains)
    exine: tuple[float, float]  # wall thickness range (px)
    density: tuple[float, float]  # interior optical density range
    granule: tuple[float, float]  # granule size range (px)
    granule_amp: tuple[float, float]  # granule contrast range (optical density sd)
    aperture: str  # "pores" (triporate) | "colpi" (tricolpate)
    aperture_len: tuple[float, float]  # pores: radius; colpi: reach towards the centre (fraction of radius)
    aperture_width: float  # px


def _pollen(rng: np.random.Generator, style: PollenStyle) -> np.ndarray:
    """A pollen grain: rounded outline, dark exine wall, granular interior, three pores or three furrows."""
    diameter = _lognormal(rng, style.diameter[0], style.diameter[1], 50, 160)
    radius = diameter / 2
    aspect = rng.uniform(*style.aspect)
    size = int(diameter + 12)
    y, x = _grid(size, size)
    u, v = _rotate(y, x, rng.uniform(0, 2 * np.pi))
    phi = np.arctan2(v, u)
    wobble = 1 + rng.uniform(*style.lobes) * np.cos(3 * phi)
    for k in (2, 4, 5):
        wobble += rng.normal(0, 0.012) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt(u**2 + (v / aspect) ** 2) / (radius * wobble)
    signed = (rho - 1) * radius
    body = _inside(signed)
    depth = np.sqrt(np.clip(1 - rho**2, 0, 1))
    interior = rng.uniform(*style.density) * (0.75 + 0.25 * depth)
    granules = rng.uniform(*style.granule_amp) * _texture(rng, (size, size), rng.uniform(*style.granule))
    od = body * (interior + granules)
    wall = rng.uniform(*style.exine)
    rim = rng.uniform(0.6, 0.8) * _band(signed, wall / 2, wall / 2)
    if style.aperture == "pores":
        od, rim = _pores(od, rim, rng, u, v, phi, radius, style)
    else:
        od, rim = _colpi(od, rim, rng, phi, rho, radius, style)
    return _tight(np.maximum(od, rim))


def _pores(od: np.ndarray, rim: np.ndarray, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, phi: np.ndarray,
           radius: float, style: PollenStyle) -> tuple[np.ndarray, np.ndarray]:
    """Three pores at the lobes (dark annulus, clear centre) and darker interior lobes between them."""
    for k in range(3):
        angle = 2 * np.pi * k / 3
        pr = radius * rng.uniform(*style.aperture_len)
        cy, cx = 0.9 * radius * np.sin(angle), 0.9 * radius * np.cos(angle)
        dist = np.hypot(u - cx, v - cy) / pr
        od = od * (1 - 0.6 * np.exp(-(dist / 0.6) ** 2)) + 0.35 * np.exp(-(((dist - 1) / 0.35) ** 2)) * (od > 0.02)
        rim = rim * (1 - 0.5 * np.exp(-(dist / 0.8) ** 2))
    lobes = 0.5 + 0.5 * np.cos(3 * (phi - np.pi / 3))
    return od * (0.8 + 0.35 * lobes), rim


def _colpi(od: np.ndarray, rim: np.ndarray, rng: np.random.Generator, phi: np.ndarray, rho: np.ndarray,
           radius: float, style: PollenStyle) -> tuple[np.ndarray, np.ndarray]:
    """Three meridional furrows: light slits from the margin towards the centre, where the wall is thin."""
    for k in range(3):
        angle = 2 * np.pi * k / 3 + rng.normal(0, 0.08)
        along = rho * np.cos(phi - angle)
        across = rho * radius * np.sin(phi - angle)
        reach = 1 - rng.uniform(*style.aperture_len)
        slit = np.exp(-((across / style.aperture_width) ** 2)) * np.clip((along - reach) / 0.1, 0, 1)
        od = od * (1 - 0.55 * slit)
        rim = rim * (1 - 0.6 * slit)
    return od, rim


CORYLUS = PollenStyle(diameter=(102, 0.1), aspect=(0.88, 1.0), lobes=(0.03, 0.08), exine=(3.0, 4.5),
                      density=(0.32, 0.48), granule=(2.5, 3.5), granule_amp=(0.04, 0.08), aperture="pores",
                      aperture_len=(0.1, 0.15), aperture_width=0.0)
QROB = PollenStyle(diameter=(122, 0.08), aspect=(0.86, 1.0), lobes=(0.0, 0.03), exine=(3.5, 5.0),
                   density=(0.42, 0.56), granule=(2.0, 3.4), granule_amp=(0.065, 0.125), aperture="colpi",
                   aperture_len=(0.35, 0.55), aperture_width=2.6)
QSUB = PollenStyle(diameter=(118, 0.08), aspect=(0.88, 1.0), lobes=(0.0, 0.03), exine=(3.5, 5.0),
                   density=(0.42, 0.56), granule=(1.1, 2.1), granule_amp=(0.075, 0.135), aperture="colpi",
                   aperture_len=(0.42, 0.65), aperture_width=2.1)


def corylus(rng: np.random.Generator) -> np.ndarray:
    """Corylus (hazel) pollen: small, rounded-triangular, triporate, lighter interior with three dark lobes."""
    return _pollen(rng, CORYLUS)


def qrob(rng: np.random.Generator) -> np.ndarray:
    """Quercus robur pollen: large, round, tricolpate, coarse granules, short wide furrows."""
    return _pollen(rng, QROB)


def qsub(rng: np.random.Generator) -> np.ndarray:
    """Quercus suber pollen: like Q. robur but slightly smaller, finer granules, longer narrower furrows."""
    return _pollen(rng, QSUB)


# ---- dust and contamination -----------------------------------------------------------------------------------


def _blob(rng: np.random.Generator, diameter: float, roughness: float, pad: int) -> np.ndarray:
    """Signed distance of an irregular rounded blob (a few random harmonics on a circle)."""
    size = int(diameter * 1.4) + 2 * pad
    y, x = _grid(size, size)
    phi = np.arctan2(y, x)
    radius = np.full_like(phi, diameter / 2)
    for k in range(2, 6):
        radius *= 1 + roughness * rng.normal(0, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return np.hypot(y, x) - radius


def dust(rng: np.random.Generator) -> np.ndarray:
    """Mineral dust: a tiny irregular grain, out of focus at this scale."""
    diameter = _lognormal(rng, 11, 0.3, 5, 24)
    signed = _blob(rng, diameter, 0.5, pad=8)
    od = rng.uniform(0.35, 0.75) * _inside(signed)
    return _tight(ndi.gaussian_filter(od, rng.uniform(0.8, 2.0)))


def _fibre(rng: np.random.Generator) -> np.ndarray:
    """A textile or plant fibre: one to three thin, gently curving strands."""
    length = _lognormal(rng, 140, 0.5, 40, 420)
    steps = int(length)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.03, steps))
    path = np.cumsum(np.stack([np.sin(heading), np.cos(heading)], axis=1), axis=0)
    strands = [path + rng.normal(0, 3, 2) for _ in range(int(rng.integers(1, 4)))]
    pts = np.concatenate(strands)
    pad = 10
    origin = pts.min(axis=0) - pad
    shape = tuple((np.ceil(pts.max(axis=0) - origin) + pad).astype(int))
    line = np.ones(shape, dtype=bool)
    idx = np.rint(pts - origin).astype(int)
    line[idx[:, 0], idx[:, 1]] = False
    dist = ndi.distance_transform_edt(line).astype(np.float32)
    width = rng.uniform(1.0, 3.0)
    return rng.uniform(0.45, 0.8) * np.exp(-((dist / width) ** 2)) * (1 + 0.2 * _texture(rng, shape, 4.0))


def _clump(rng: np.random.Generator) -> np.ndarray:
    """An organic or mixed clump: overlapping blobs with a ragged outline and mottled density."""
    diameter = _lognormal(rng, 95, 0.5, 25, 300)
    size = int(diameter * 1.6) + 16
    y, x = _grid(size, size)
    signed = np.full((size, size), np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(2, 7))):
        cy, cx = rng.normal(0, diameter / 5, 2)
        signed = np.minimum(signed, np.hypot(y - cy, x - cx) - rng.uniform(0.2, 0.45) * diameter)
    signed = signed + diameter / 12 * _texture(rng, (size, size), diameter / 10)
    od = _inside(signed) * np.clip(rng.uniform(0.45, 0.85) + 0.15 * _texture(rng, (size, size), 4.0), 0.05, 1)
    return ndi.gaussian_filter(od, rng.uniform(0.5, 1.5))


def _defocus(rng: np.random.Generator) -> np.ndarray:
    """An out-of-focus particle: a soft grey disc with a light halo, no detail."""
    diameter = _lognormal(rng, 34, 0.45, 14, 140)
    sigma = rng.uniform(2.5, 6.0)
    signed = _blob(rng, diameter, 0.3, pad=int(3 * sigma) + 4)
    od = rng.uniform(0.25, 0.5) * _inside(signed) - 0.08 * _band(signed, -sigma, sigma)
    return ndi.gaussian_filter(od, sigma)


_CONTAMINATION: tuple[tuple[Renderer, float], ...] = ((_fibre, 0.35), (_clump, 0.4), (_defocus, 0.25))


def cont(rng: np.random.Generator) -> np.ndarray:
    """Contamination: fibres, irregular clumps or out-of-focus matter (chosen at random)."""
    kinds, weights = zip(*_CONTAMINATION)
    kind = kinds[int(rng.choice(len(kinds), p=np.array(weights)))]
    return _tight(kind(rng))


# ---- the planted new class ------------------------------------------------------------------------------------


def diatom(rng: np.random.Generator) -> np.ndarray:
    """A pennate diatom: lanceolate valve, dark frustule outline, central raphe and nodule, faint transverse striae."""
    length = _lognormal(rng, 95, 0.25, 45, 150)
    half_len, half_width = length / 2, length / 2 * rng.uniform(0.2, 0.34)
    size = int(length + 14)
    y, x = _grid(size, size)
    u, v = _rotate(y, x, rng.uniform(0, np.pi))
    taper = rng.uniform(1.5, 2.0)
    rho = ((np.abs(u) / half_len) ** taper + (v / half_width) ** 2) ** 0.5
    signed = (rho - 1) * half_width
    body = _inside(signed)
    wall = rng.uniform(2.0, 3.5)
    striae = 0.5 + 0.5 * np.cos(2 * np.pi * u / rng.uniform(2.8, 4.0))
    central = np.exp(-((u / (0.12 * half_len)) ** 2))
    od = body * (rng.uniform(0.06, 0.12) + rng.uniform(0.03, 0.06) * striae * (1 - central))
    raphe = np.exp(-((v / 0.8) ** 2)) * (np.abs(u) < 0.85 * half_len) * (1 - 0.8 * central)
    nodule = np.exp(-(u**2 + v**2) / (2 * 1.6**2))
    od += 0.25 * raphe + 0.35 * nodule
    od = np.maximum(od, rng.uniform(0.6, 0.8) * _band(signed, wall / 2, wall / 2))
    return _tight(od)


RENDERERS: dict[str, Renderer] = {
    "camp": camp,
    "corylus": corylus,
    "dust": dust,
    "grim": grim,
    "qrob": qrob,
    "qsub": qsub,
    "cont": cont,
    NEW_CLASS: diatom,
}
