"""Acquisition sessions: the instrument settings a run of crops shares, and taking one crop in a session.

As in the reference labs, each particle type was run in its own session (named like ``camp_11nov``), so each
class carries its session's signature (background level, vignetting, focus, noise): mild, but learnable, which
is the shortcut a session audit looks for. Runs on the same day share most settings (the two oaks both ran on
17 Nov, as in the study). The core was run weeks later in sessions of its own: a darker background, softer
focus and more noise, the mild domain shift a classifier meets in the field; ``SynthConfig.shift_severity``
scales it (0 = none, 1 = the demo's, 2 = twice as far).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# The reference set's sessions: one per class, the date in the name.
TRAIN_SESSIONS: dict[str, str] = {
    "camp": "camp_11nov",
    "corylus": "corylus_4nov",
    "dust": "dust_2nov",
    "grim": "grim_13nov",
    "qrob": "qrob_17nov",
    "qsub": "qsub_17nov",
    "cont": "cont_20nov",
}
CORE_SESSION_PREFIX = "qcy"
# Camera frame (px): crops come from anywhere in it, so vignetting shows as a gradient across a crop.
FRAME = (960, 1280)
_SESSION_STREAM = 7


@dataclass(frozen=True)
class Session:
    """One acquisition run of the instrument: the settings every crop it took shares (its signature)."""

    name: str
    background: float  # mean background gray level
    vignetting: float  # relative darkening at the frame's corners
    blur: float  # focus blur sigma (px)
    noise: float  # sensor noise sigma (gray levels)
    cut_rate: float = 0.07  # share of particles touching the crop's border


@dataclass(frozen=True)
class _Settings:
    """Ranges the settings of a group of sessions are drawn from."""

    background: tuple[float, float]
    vignetting: tuple[float, float]
    blur: tuple[float, float]
    noise: tuple[float, float]


_LAB = _Settings(background=(116.0, 134.0), vignetting=(0.0, 0.14), blur=(0.6, 1.0), noise=(1.2, 2.2))
_CORE = _Settings(background=(104.0, 116.0), vignetting=(0.06, 0.2), blur=(1.0, 1.4), noise=(2.0, 3.0))


def _draw(rng: np.random.Generator, name: str, settings: _Settings) -> Session:
    """A session with settings drawn uniformly from ``settings``."""
    return Session(
        name=name,
        background=float(rng.uniform(*settings.background)),
        vignetting=float(rng.uniform(*settings.vignetting)),
        blur=float(rng.uniform(*settings.blur)),
        noise=float(rng.uniform(*settings.noise)),
    )


def _run_of(day: Session, name: str, rng: np.random.Generator) -> Session:
    """Another run on the same day: the day's settings with small run-to-run changes."""
    return Session(
        name=name,
        background=day.background + float(rng.normal(0, 1.0)),
        vignetting=max(day.vignetting + float(rng.normal(0, 0.01)), 0.0),
        blur=day.blur * float(rng.uniform(0.95, 1.05)),
        noise=day.noise * float(rng.uniform(0.95, 1.05)),
    )


def train_sessions(seed: int) -> dict[str, Session]:
    """The reference set's sessions, one per class, drawn from the seed (same-day runs share settings)."""
    rng = np.random.default_rng([seed, _SESSION_STREAM, 0])
    days: dict[str, Session] = {}
    sessions = {}
    for label, name in TRAIN_SESSIONS.items():
        day = name.split("_")[1]
        if day not in days:
            days[day] = _draw(rng, name, _LAB)
        sessions[label] = _run_of(days[day], name, rng)
    return sessions


def core_settings(severity: float) -> _Settings:
    """The ranges the core's sessions are drawn from: the lab's moved ``severity`` times the demo's lab -> core step.

    Each range end moves by ``severity * (core end - lab end)``: 0 gives the lab's ranges (no shift), 1 the demo's
    core exactly, 2 twice as dark, soft and noisy a step; a range that would narrow past zero width (the background,
    beyond severity 3) stays a point on its moving centre; vignetting, blur and noise stay non-negative.
    """
    if severity == 1.0:
        return _CORE

    def moved(lab: tuple[float, float], core: tuple[float, float]) -> tuple[float, float]:
        low, high = (a + severity * (b - a) for a, b in zip(lab, core))
        if low > high:
            low = high = (low + high) / 2
        return max(low, 0.0), max(high, 0.0)

    return _Settings(background=moved(_LAB.background, _CORE.background), vignetting=moved(_LAB.vignetting, _CORE.vignetting),
                     blur=moved(_LAB.blur, _CORE.blur), noise=moved(_LAB.noise, _CORE.noise))


def core_sessions(seed: int, n: int, severity: float = 1.0) -> list[Session]:
    """The core's ``n`` sessions on consecutive days, ``severity`` times as far from the lab's as the demo's core."""
    rng = np.random.default_rng([seed, _SESSION_STREAM, 1])
    settings = core_settings(severity)
    return [_draw(rng, f"{CORE_SESSION_PREFIX}_{5 + k:02d}feb", settings) for k in range(n)]


def _margins(rng: np.random.Generator, shape: tuple[int, int], cut_rate: float) -> np.ndarray:
    """Crop margins (top, bottom, left, right) in px; a negative one cuts the particle at that border."""
    extent = max(shape)
    margins = rng.integers(2, 6, size=4) + np.rint(rng.uniform(0.03, 0.14, size=4) * extent).astype(int)
    if rng.random() < cut_rate:
        side = int(rng.integers(4))
        margins[side] = -int(rng.uniform(0.08, 0.3) * shape[side // 2])
    return margins


def _place(od: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """The particle map framed by the margins (padding with clear background, or cutting where negative)."""
    top, bottom, left, right = (int(m) for m in margins)
    padded = np.pad(od, ((max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
    h, w = padded.shape
    return padded[max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]


def _background(rng: np.random.Generator, session: Session, shape: tuple[int, int]) -> np.ndarray:
    """The lit background behind a crop: the session's level, vignetted at the crop's place in the frame."""
    h, w = shape
    y0 = rng.uniform(0, max(FRAME[0] - h, 1))
    x0 = rng.uniform(0, max(FRAME[1] - w, 1))
    fy = (y0 + np.arange(h, dtype=np.float32) - FRAME[0] / 2) / (FRAME[1] / 2)
    fx = (x0 + np.arange(w, dtype=np.float32) - FRAME[1] / 2) / (FRAME[1] / 2)
    level = session.background + rng.normal(0, 1.5)
    return level * (1 - session.vignetting * (fy[:, None] ** 2 + fx[None, :] ** 2))


def acquire(od: np.ndarray, session: Session, rng: np.random.Generator) -> np.ndarray:
    """Image a particle in a session: frame it with margins, light it, blur to the focus, add noise (uint8)."""
    framed = _place(od, _margins(rng, od.shape, session.cut_rate))
    sigma = session.blur * float(np.exp(rng.normal(0, 0.2)))
    optical = ndi.gaussian_filter(framed, sigma, mode="nearest")
    light = _background(rng, session, optical.shape) * (1 - optical)
    noisy = light + rng.normal(0, session.noise, optical.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
