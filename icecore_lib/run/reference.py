"""Each notebook's key numbers on the synthetic twin, with tolerances: its last cell holds the run to them.

The profile's own synthetic set is seeded, so a run repeats its numbers on one machine and moves little across
machines; each key number must land in its range, else the notebook fails naming the number, its value and its
range (under nbval in CI, a regression in any notebook fails the build). The demo ranges are the conclusions the
demo exists to show (images beat metadata, calibrated probabilities, the planted diatoms found); the ci ranges
bracket the tiny profile's measured numbers. On any other dataset nothing is checked: there is no reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from .artifacts import Run

Range = tuple[float, float]

# profile -> metrics.json section -> dotted key inside the section -> (lowest, highest) accepted value.
REFERENCE: dict[str, dict[str, dict[str, Range]]] = {}


class KeyNumberOutOfRange(AssertionError):
    """A key number of a run of the synthetic twin left its reference range."""


def reference_for(profile: str, dataset: str, section: str) -> dict[str, Range]:
    """The reference ranges of one notebook section: only for the profile's own synthetic set."""
    if dataset and dataset != f"synthetic-{profile}":
        return {}
    return REFERENCE.get(profile, {}).get(section, {})


def lookup(metrics: Mapping[str, Any], key: str) -> float:
    """A dotted key's value in a metrics section (``tests.image.accuracy``)."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyNumberOutOfRange(f"metrics.json has no {key!r}: the notebook no longer reports it")
        value = value[part]
    return float(value)


def check_key_numbers(run: Run, section: str, profile: str, dataset: str = "") -> pd.DataFrame | str:
    """Compare a finished notebook's key numbers with the reference; a table of them, or why none is checked.

    Raises :class:`KeyNumberOutOfRange` naming every number outside its range.
    """
    ranges = reference_for(profile, dataset, section)
    if not ranges:
        return f"no reference numbers for {dataset or 'this dataset'} under the {profile} profile: nothing to check"
    metrics = run.section(section)
    table = pd.DataFrame([{"number": key, "value": lookup(metrics, key), "low": low, "high": high}
                          for key, (low, high) in ranges.items()]).set_index("number")
    table["ok"] = table["value"].between(table["low"], table["high"])
    bad = table[~table["ok"]]
    if len(bad):
        lines = [f"{key} = {row.value:.4f}, expected {row.low} to {row.high}" for key, row in bad.iterrows()]
        raise KeyNumberOutOfRange(f"{section}: key numbers of the {profile} synthetic twin out of range:\n  "
                                  + "\n  ".join(lines))
    return table
