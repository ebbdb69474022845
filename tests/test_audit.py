"""Shortcut audit: the session probe, and metric drops under session-grouped splits or another domain."""

import numpy as np
import pandas as pd
import pytest
from sklearn.tree import DecisionTreeClassifier

from icecore_lib.shift.audit import domain_drop, drop_warning, grouped_split_drop, image_stats, session_probe


def _crops(n: int, background: float, seed: int, size: int = 24) -> np.ndarray:
    """Grey crops: a noisy light background with a dark disc of random radius near the centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = background + rng.normal(0, 6, size=(n, size, size))
    for image, radius in zip(images, rng.uniform(3, 7, size=n)):
        centre = size / 2 + rng.uniform(-2, 2, size=2)
        image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] -= 50
    return np.clip(images, 0, 255).astype(np.uint8)


def _sessions(shift: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Three sessions of ``n`` crops each, whose backgrounds differ by ``shift`` grey levels."""
    images = np.concatenate([_crops(n, 100 + k * shift, seed=k) for k in range(3)])
    return images, np.repeat(["s1", "s2", "s3"], n)


def test_image_stats_measure_the_background_and_the_blur():
    flat = np.full((2, 16, 16), 110, dtype=np.uint8)
    flat[:, 6:10, 6:10] = 20
    flat[1] = 110
    stats = image_stats(flat, border=3)
    assert stats["border_mean"].tolist() == [110.0, 110.0]
    assert stats.loc[0, "lap_var"] > 0 and stats.loc[1, "lap_var"] == 0
    with pytest.raises(ValueError, match="shape"):
        image_stats(np.zeros((2, 5, 5), dtype=np.uint8), border=3)


def test_probe_finds_a_planted_background_shift():
    images, sessions = _sessions(shift=8)
    result = session_probe(images, sessions, cv=3)
    assert result.chance == pytest.approx(1 / 3)
    assert result.accuracy > 0.9 and result.background_accuracy > 0.9
    assert "distinguishable" in result.message and not result.confounded


def test_probe_is_near_chance_without_a_shift():
    images, sessions = _sessions(shift=0)
    result = session_probe(images, sessions, cv=3)
    assert abs(result.accuracy - result.chance) < 0.15
    assert "not distinguishable" in result.message


def test_one_session_per_class_is_reported_as_confounded():
    images, sessions = _sessions(shift=8)
    labels = pd.Series(sessions).map({"s1": "camp", "s2": "dust", "s3": "grim"}).to_numpy()
    result = session_probe(images, sessions, labels, cv=3)
    assert result.confounded and result.within_class.empty
    assert "impossible" in result.message
    assert set(result.summary()) >= {"accuracy", "chance", "confounded", "message"}


def test_probe_within_a_class_imaged_in_two_sessions():
    images, sessions = _sessions(shift=8)
    labels = pd.Series(sessions).map({"s1": "dust", "s2": "dust", "s3": "grim"}).to_numpy()
    result = session_probe(images, sessions, labels, cv=3)
    assert not result.confounded
    assert list(result.within_class.index) == ["dust"]
    assert result.within_class.loc["dust", "accuracy"] > 0.9
    assert "Within class 'dust'" in result.message


def test_probe_names_a_session_too_small_for_cv():
    images, sessions = _sessions(shift=0, n=3)
    sessions = sessions.astype(object)
    sessions[-2:] = ["lonely", "s1"]
    with pytest.raises(ValueError, match="lonely"):
        session_probe(images, sessions)


def _shortcut_table(sessions_per_class: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two classes; a 'background' column identifies the session, a 'signal' column weakly tells the class."""
    rng = np.random.default_rng(seed)
    session_ids = rng.permutation(2 * sessions_per_class)
    rows = []
    for k, session in enumerate(session_ids):
        label = "camp" if k < sessions_per_class else "dust"
        for _ in range(30):
            rows.append({"background": session * 10 + rng.normal(0, 1),
                         "signal": (label == "dust") * 0.3 + rng.normal(0, 1),
                         "label": label, "session": f"s{session}"})
    table = pd.DataFrame(rows)
    return table[["background", "signal"]], table["label"].to_numpy(), table["session"].to_numpy()


def test_grouped_split_drop_warns_when_the_model_learned_the_session():
    X, y, groups = _shortcut_table(sessions_per_class=4)
    result = grouped_split_drop(DecisionTreeClassifier(random_state=0), X, y, groups, threshold=0.1)
    assert result.measurable
    assert result.reference > 0.9 and result.drop > 0.2
    assert result.warning is not None and "shortcut" in result.warning


def test_grouped_split_is_reported_impossible_with_one_session_per_class():
    X, y, groups = _shortcut_table(sessions_per_class=1)
    result = grouped_split_drop(DecisionTreeClassifier(random_state=0), X, y, groups)
    assert not result.measurable and np.isnan(result.shifted)
    assert "impossible" in result.message and result.reference > 0.9


def test_drop_warnings_only_beyond_the_threshold():
    assert drop_warning(0.95, 0.93, threshold=0.05) is None
    assert "0.800" in drop_warning(0.95, 0.80, threshold=0.05)
    core = domain_drop(0.95, 0.70, domain="core (known classes)")
    assert core.measurable and core.drop == pytest.approx(0.25) and "core (known classes)" in core.warning
