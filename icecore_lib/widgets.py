"""Interactive explorer of a 2-D map (UMAP) linked to particle crops, with a review log for new classes.

Logic and plumbing are apart, so everything but the browser is testable:

- :class:`ReviewSession` (no widgets): the current selection, the thumbnails shown for it, and the
  decisions appended to ``<run_dir>/review.csv``;
- :class:`Explorer`: jupyter-scatter (WebGL, fluid at 100k+ points; lasso/box selection) and ipywidgets
  around a session. ``Explorer.select(ids)`` and the buttons' ``click()`` drive it from code;
- the review log itself lives in :mod:`icecore_lib.run.review` (``load_review``, ``review_to_labels``:
  decisions back as labels for retraining), where the exports read it too;
- :class:`LabelReview`: notebook 01's doubted reference labels a page at a time (crop, given -> suggested, a
  class to decide), the verdicts appended to ``<run_dir>/label_review.csv``; ``-p relabel=<that file>`` trains
  the next run on them.

In Colab the custom-widget manager jupyter-scatter needs is switched on when the explorer is built.
"""

from __future__ import annotations

import html
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .run.review import (
    ARTEFACT,
    CANDIDATE,
    append_label_review,
    append_review,
    label_review_path,
    load_review,
    review_path,
    review_to_labels,
)
from .schema import LABEL, PARTICLE_ID

MAX_CATEGORIES = 64
NONE = "(none)"
LASSO_TYPES = ("freeform", "rectangle", "brush")


# ---------------------------------------------------------------- selection logic


class ReviewSession:
    """Selection -> thumbnails -> decisions, for particles in ``table`` (row-aligned with ``images``)."""

    def __init__(
        self,
        table: pd.DataFrame,
        images: np.ndarray,
        run_dir: Path | str,
        max_thumbnails: int = 48,
        thumb_px: int = 72,
        seed: int = 0,
    ) -> None:
        if len(images) != len(table):
            raise ValueError(f"ReviewSession: {len(images)} images but {len(table)} table rows")
        if not table.index.is_unique:
            duplicated = list(table.index[table.index.duplicated()][:3])
            raise ValueError(f"ReviewSession: duplicated particle ids, e.g. {duplicated}")
        self.table = table
        self.images = images
        self.run_dir = Path(run_dir)
        self.max_thumbnails = max_thumbnails
        self.thumb_px = thumb_px
        self.seed = seed
        self.selected = pd.Index([], name=PARTICLE_ID)

    def select(self, ids: Sequence[str]) -> pd.Index:
        """Make these particles the selection (table order); names ids the table lacks."""
        ids = pd.Index(ids)
        missing = ids.difference(self.table.index)
        if len(missing):
            raise KeyError(f"{len(missing)} selected particle id(s) not in the table, e.g. {list(missing[:3])}")
        self.selected = self.table.index[self.table.index.isin(ids)]
        return self.selected

    def select_where(self, column: str, value: Any) -> pd.Index:
        """Select every particle whose ``column`` equals ``value`` (e.g. a cluster id)."""
        if column not in self.table.columns:
            raise KeyError(f"the table has no column {column!r}")
        return self.select(self.table.index[(self.table[column] == value).to_numpy()])

    def shown(self) -> pd.Index:
        """The selected particles that get a thumbnail: all, or a seeded sample of ``max_thumbnails``."""
        if len(self.selected) <= self.max_thumbnails:
            return self.selected
        rng = np.random.default_rng(self.seed)
        return self.selected[np.sort(rng.choice(len(self.selected), self.max_thumbnails, replace=False))]

    def thumbnail(self, particle_id: str) -> bytes:
        """A particle's crop as a PNG thumbnail."""
        row = self.table.index.get_loc(particle_id)
        image = Image.fromarray(np.asarray(self.images[row], dtype=np.uint8))
        buffer = io.BytesIO()
        image.resize((self.thumb_px, self.thumb_px), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        return buffer.getvalue()

    def decide(self, decision: str, name: str = "") -> pd.DataFrame:
        """Record a decision for the whole selection in the run's review log; returns the rows written."""
        return append_review(self.run_dir, self.selected, decision, name)


# ---------------------------------------------------------------- widget plumbing


def plot_frame(embedding_2d: pd.DataFrame | np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """Map coordinates ``x``/``y`` and every colourable column (numbers; labels with few values as categories)."""
    if isinstance(embedding_2d, pd.DataFrame):
        missing = table.index.difference(embedding_2d.index)
        if len(missing):
            raise KeyError(f"embedding_2d lacks {len(missing)} particle id(s) of the table, e.g. {list(missing[:3])}")
        xy = embedding_2d.loc[table.index].to_numpy(dtype=np.float32)
    else:
        xy = np.asarray(embedding_2d, dtype=np.float32)
    if xy.shape != (len(table), 2):
        raise ValueError(f"embedding_2d must be ({len(table)}, 2) to match the table, got {xy.shape}")
    frame = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=table.index)
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            if values.nunique(dropna=False) <= MAX_CATEGORIES:
                frame[str(column)] = values.astype("string").fillna("missing").astype("category")
        else:
            frame[str(column)] = values.astype(np.float32)
    return frame


def _enable_colab_widgets() -> None:
    """Switch on Colab's custom-widget manager, which jupyter-scatter needs there."""
    if "google.colab" in sys.modules:
        from google.colab import output

        output.enable_custom_widget_manager()


class Explorer:
    """UMAP scatter (colour by any column; lasso/box or cluster selection) linked to a gallery and a review panel.

    Draw a selection with shift+drag (or the map's lasso tool); the ``select`` buttons switch between a
    freeform lasso, a rectangle (box) and a brush.

    ``embedding_2d``: ``(N, 2)`` map coordinates (a table by particle id, or an array row-aligned with ``table``);
    ``table``: per-particle columns to colour by (class, scores, sample, depth, cluster); ``images``: the crops,
    row-aligned with ``table``. Decisions go to ``<run_dir>/review.csv``. Display with ``explorer.show()`` or
    as a cell's last expression.
    """

    def __init__(
        self,
        embedding_2d: pd.DataFrame | np.ndarray,
        table: pd.DataFrame,
        images: np.ndarray,
        run_dir: Path | str,
        color_by: str | None = None,
        cluster_column: str = "cluster",
        max_thumbnails: int = 48,
        thumb_px: int = 72,
        seed: int = 0,
    ) -> None:
        import ipywidgets as w
        import jscatter

        _enable_colab_widgets()
        self.session = ReviewSession(table, images, run_dir, max_thumbnails, thumb_px, seed)
        self.frame = plot_frame(embedding_2d, table)
        self._syncing = False
        colourable = [c for c in self.frame.columns if c not in ("x", "y")]
        if color_by is not None and color_by not in colourable:
            raise KeyError(f"cannot colour by {color_by!r}; columns: {colourable}")
        # A fixed width: "auto" binds the map to its container, which the gallery beside it squeezes to a strip.
        self.scatter = jscatter.Scatter(x="x", y="y", data=self.frame, height=520, width=560)
        self.lasso_toggle = w.ToggleButtons(options=LASSO_TYPES, description="select", style={"button_width": "80px"})
        self.color_dropdown = w.Dropdown(options=[NONE, *colourable], value=color_by or NONE, description="colour")
        clusters = sorted(table[cluster_column].dropna().unique().tolist()) if cluster_column in table.columns else []
        self.cluster_column = cluster_column
        self.cluster_dropdown = w.Dropdown(options=[NONE, *clusters], description=cluster_column, disabled=not clusters)
        self.name_box = w.Text(placeholder="name of the new class", description="name")
        self.candidate_button = w.Button(description="name as candidate class", button_style="success")
        self.artefact_button = w.Button(description="mark artefact", button_style="warning")
        self.status = w.HTML()
        self.gallery = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat(auto-fill, {thumb_px + 16}px)"))
        self._wire()
        self._apply_colour(self.color_dropdown.value)
        self._refresh_gallery()
        review = w.VBox([self.name_box, w.HBox([self.candidate_button, self.artefact_button]), self.status])
        controls = w.VBox([w.HBox([self.color_dropdown, self.cluster_dropdown]), self.lasso_toggle])
        side = w.VBox([controls, self.gallery, review])
        self.layout = w.HBox([self.scatter.show(), side])

    def _wire(self) -> None:
        """Connect scatter selection, dropdowns and buttons to the session."""
        self.scatter.widget.observe(self._on_lasso, names=["selection"])
        self.color_dropdown.observe(lambda change: self._apply_colour(change["new"]), names=["value"])
        self.lasso_toggle.observe(lambda change: self.scatter.lasso(type=change["new"]), names=["value"])
        self.cluster_dropdown.observe(self._on_cluster, names=["value"])
        self.candidate_button.on_click(lambda _: self.decide(CANDIDATE))
        self.artefact_button.on_click(lambda _: self.decide(ARTEFACT))

    def select(self, ids: Sequence[str]) -> pd.Index:
        """Select particles by id: highlights them on the map and shows their crops."""
        selected = self.session.select(ids)
        self._syncing = True
        try:
            self.scatter.selection(self.session.table.index.get_indexer(selected))
        finally:
            self._syncing = False
        self._refresh_gallery()
        return selected

    def decide(self, decision: str) -> pd.DataFrame | None:
        """Record the decision for the selection, reporting success or the reason it was refused."""
        try:
            rows = self.session.decide(decision, self.name_box.value)
        except ValueError as error:
            self.status.value = f"<span style='color:#c62828'>{html.escape(str(error))}</span>"
            return None
        label = rows["name"].iloc[0] or decision
        where = review_path(self.session.run_dir)
        self.status.value = f"{len(rows)} particle(s) recorded as {decision} <b>{html.escape(label)}</b> in {where}"
        return rows

    def _on_lasso(self, change: dict[str, Any]) -> None:
        """A lasso/box selection drawn on the map (row positions) becomes the session's selection."""
        if self._syncing:
            return
        rows = np.asarray(change["new"] if change["new"] is not None else [], dtype=np.int64)
        self.session.select(self.session.table.index[rows])
        self._refresh_gallery()

    def _on_cluster(self, change: dict[str, Any]) -> None:
        """Picking a cluster in the dropdown selects its particles."""
        if change["new"] != NONE:
            self.select(self.session.select_where(self.cluster_column, change["new"]))

    def _apply_colour(self, column: str) -> None:
        """Colour the points by a column, or uniformly for :data:`NONE`."""
        self.scatter.color(by=None if column == NONE else column)

    def _refresh_gallery(self) -> None:
        """Thumbnails (capped) of the selected particles, each captioned with its id."""
        import ipywidgets as w

        shown = self.session.shown()
        px = self.session.thumb_px
        self.gallery.children = [
            w.VBox([w.Image(value=self.session.thumbnail(p), format="png", width=px, height=px), w.HTML(_caption(p))])
            for p in shown
        ]
        n = len(self.session.selected)
        self.status.value = f"{n} selected" + (f", {len(shown)} shown" if len(shown) < n else "")

    def show(self) -> Any:
        """The explorer's widget, for ``display()``."""
        return self.layout

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Render as the explorer widget when it is a cell's last expression."""
        return self.layout._repr_mimebundle_(**kwargs)


class LabelReview:
    """The reference set's doubted labels, a page at a time: each crop with its given and suggested class and a
    class to decide (the given one preselected: nothing changes unless a person changes it).

    ``issues``: cleanlab's ranking (``given``, ``suggested`` by particle id, most doubtful first); ``table`` and
    ``images``: the labelled particles, row-aligned. ``record()`` (the button) appends the page's verdicts to
    ``<run_dir>/label_review.csv`` and turns to the next page.
    """

    def __init__(self, issues: pd.DataFrame, table: pd.DataFrame, images: np.ndarray, classes: Sequence[str],
                 run_dir: Path | str, per_page: int = 12, thumb_px: int = 72) -> None:
        import ipywidgets as w

        self.session = ReviewSession(table, images, run_dir, max_thumbnails=per_page, thumb_px=thumb_px)
        self.issues = issues
        self.classes = list(classes)
        self.per_page = per_page
        self.page = 0
        self.choices: dict[str, Any] = {}
        self.grid = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat(auto-fill, {thumb_px + 96}px)"))
        self.suggest_button = w.Button(description="take every suggestion")
        self.record_button = w.Button(description="record this page", button_style="success")
        self.status = w.HTML()
        self.suggest_button.on_click(lambda _: self.take_suggestions())
        self.record_button.on_click(lambda _: self.record())
        self.layout = w.VBox([self.grid, w.HBox([self.suggest_button, self.record_button]), self.status])
        self._show_page()

    def page_ids(self) -> list[str]:
        """The particle ids of the current page."""
        start = self.page * self.per_page
        return list(self.issues.index[start:start + self.per_page])

    def take_suggestions(self) -> None:
        """Set every choice on the page to cleanlab's suggested class."""
        for pid, choice in self.choices.items():
            choice.value = str(self.issues.loc[pid, "suggested"])

    def record(self) -> pd.DataFrame | None:
        """Append the page's verdicts to the run's label review and turn the page; None when refused (status says)."""
        verdicts = pd.Series({pid: choice.value for pid, choice in self.choices.items()}, dtype="string")
        try:
            rows = append_label_review(self.session.run_dir, verdicts, self.session.table[LABEL], self.classes)
        except ValueError as error:
            self.status.value = f"<span style='color:#c62828'>{html.escape(str(error))}</span>"
            return None
        changed = int((rows["label"] != rows["given"]).sum())
        where = label_review_path(self.session.run_dir)
        self.page += 1
        self._show_page()
        self.status.value = (f"{len(rows)} verdict(s) recorded ({changed} relabelled) in {where}; "
                             f"retrain on them with <code>-p relabel={html.escape(str(where))}</code>")
        return rows

    def _show_page(self) -> None:
        """The current page's crops, captions and class choices."""
        import ipywidgets as w

        px = self.session.thumb_px
        self.choices = {pid: w.Dropdown(options=self.classes, value=str(self.issues.loc[pid, "given"]),
                                        layout=w.Layout(width=f"{px + 88}px")) for pid in self.page_ids()}
        self.grid.children = [
            w.VBox([w.Image(value=self.session.thumbnail(pid), format="png", width=px, height=px),
                    w.HTML(_caption(pid) + f"<div style='font-size:10px'>{html.escape(str(self.issues.loc[pid, 'given']))}"
                           f" &rarr; {html.escape(str(self.issues.loc[pid, 'suggested']))}</div>"), choice])
            for pid, choice in self.choices.items()
        ]
        pages = -(-len(self.issues) // self.per_page)
        self.status.value = f"page {min(self.page + 1, pages)} of {pages}" if self.choices else "every page reviewed"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Render as the review widget when it is a cell's last expression."""
        return self.layout._repr_mimebundle_(**kwargs)


def _caption(particle_id: str) -> str:
    """A thumbnail's caption: the particle's file name, small, the full id on hover."""
    name = html.escape(str(particle_id).rsplit("/", 1)[-1])
    style = "font-size:9px;width:100%;overflow:hidden;white-space:nowrap"
    return f"<div style='{style}' title='{html.escape(str(particle_id))}'>{name}</div>"


__all__ = [
    "ARTEFACT",
    "CANDIDATE",
    "Explorer",
    "LabelReview",
    "ReviewSession",
    "append_review",
    "load_review",
    "plot_frame",
    "review_path",
    "review_to_labels",
]
