"""One self-contained HTML page per run: header, metrics, executed notebooks, figures, tables, parameters, versions.

The page is meant to be e-mailed: images are embedded as data URIs and no script is fetched from a CDN. Only the
links to the run's notebooks and per-particle tables point at files; they are relative, so they work while the
page sits beside the run directory's contents.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..files import atomic_write_text

REPORT_NAME = "report.html"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

_STYLE_BLOCK = re.compile(r"<style\b.*?</style\s*>", re.I | re.S)
_EXTERNAL = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*['\"]?\s*(?:https?:)?//[^>]*>.*?</script\s*>"
    r"|<link\b[^>]*\bhref\s*=\s*['\"]?\s*(?:https?:)?//[^>]*>",
    re.I | re.S,
)
_REPORT_CSS = """
.ic-report { max-width: 1180px; margin: 0 auto; padding: 0 16px 48px; }
.ic-report h1, .ic-report h2.ic-section { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.ic-report h2.ic-section { margin-top: 2.5em; }
.ic-report table.ic { border-collapse: collapse; margin: 0.4em 0 1.4em; font-size: 13px; }
.ic-report table.ic th, .ic-report table.ic td {
  border: 1px solid #d0d0d0; padding: 2px 8px; text-align: right; vertical-align: top; white-space: pre-wrap; }
.ic-report table.ic th:first-child, .ic-report table.ic td:first-child { text-align: left; }
.ic-report table.ic thead th { background: #f2f2f2; }
.ic-report .ic-scroll { overflow-x: auto; }
.ic-report figure { margin: 0.8em 0; }
.ic-report figure img { max-width: 100%; }
.ic-report figcaption { font-size: 12px; color: #555; }
.ic-report .ic-note { color: #555; }
"""


@dataclass(frozen=True)
class _Section:
    """One part of the page: its anchor, its heading (also its table-of-contents entry) and its HTML."""

    anchor: str
    title: str
    html: str


@dataclass(frozen=True)
class _Executed:
    """An executed notebook of the run: its file and its content."""

    path: Path
    nb: Any

    @property
    def stem(self) -> str:
        """The notebook's name without ``.ipynb`` (``00_data_overview``)."""
        return self.path.stem

    @property
    def anchor(self) -> str:
        """The id of the notebook's section on the page."""
        return f"nb-{self.stem}"


def write_report(
    run_dir: Path | str, out: Path | str | None = None, *, with_code: bool = False, progress: bool = True
) -> Path:
    """Write the run's one-page HTML report (default ``RUN_DIR/report.html``) atomically and return its path."""
    out = Path(out) if out else Path(run_dir) / REPORT_NAME
    page = build_report(run_dir, with_code=with_code, links_from=out.parent, progress=progress)
    return atomic_write_text(out, page)


def build_report(
    run_dir: Path | str, *, with_code: bool = False, links_from: Path | str | None = None, progress: bool = True
) -> str:
    """The report page as one HTML string; file links are relative to ``links_from`` (default: the run directory)."""
    run_dir = _check_run_dir(run_dir)
    links_from = Path(links_from) if links_from is not None else run_dir
    params = _read_mapping(run_dir / "params.yaml")
    metrics = _read_mapping(run_dir / "metrics.json")
    executed = [_Executed(p, _read_notebook(p)) for p in sorted((run_dir / "notebooks").glob("*.ipynb"))]
    styles, bodies = _export_all(executed, with_code, progress)
    sections = [
        _Section("metrics", "Key metrics", _metrics_html(metrics)),
        *(_notebook_section(e, bodies[e.stem], links_from) for e in executed),
        _Section("tables", "Per-particle tables", _tables_html(run_dir, links_from)),
        _Section("parameters", "Parameters", _parameters_html(run_dir, params)),
        _Section("environment", "Environment", _table_html(_cells_frame(_read_mapping(run_dir / "environment.json")))),
    ]
    sections = [s for s in sections if s.html]
    header = _header_html(run_dir, params, metrics, executed, links_from)
    return _strip_external(_page(f"icecore run {run_dir.name}", styles, header, sections))


def _check_run_dir(run_dir: Path | str) -> Path:
    """The run directory as a Path; a clear error when the folder is not an icecore run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not any((run_dir / name).is_file() for name in ("params.yaml", "metrics.json")):
        raise FileNotFoundError(f"{run_dir} is not an icecore run directory: it holds no params.yaml or metrics.json")
    return run_dir


def metrics_tables(metrics: dict[str, Any], skip: tuple[str, ...] = ("pipeline",)) -> dict[str, pd.DataFrame]:
    """metrics.json as titled tables: models scored alike side by side, lists of records as rows, the rest by name."""
    tables: dict[str, pd.DataFrame] = {}
    for section, value in metrics.items():
        if section not in skip:
            tables.update(_node_tables(section, value if isinstance(value, dict) else {"value": value}))
    return tables


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted names (``params.eta``)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _node_tables(title: str, node: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """One metrics node: a name/value table, a grid per group of similar records, then its nested nodes' tables."""
    records = {key: _flatten(value) for key, value in node.items() if _is_record(value)}
    grids = [group for group in _similar_groups(records) if len(group) > 1]
    in_grid = {key for group in grids for key in group}
    cells: dict[str, Any] = {}
    nested: dict[str, pd.DataFrame] = {}
    for key, value in node.items():
        if key in in_grid:
            continue
        if key in records:
            cells.update({f"{key}.{name}": v for name, v in records[key].items()})
        elif _is_record_list(value):
            nested[f"{title} / {key}"] = pd.DataFrame([_flatten(item) for item in value])
        elif isinstance(value, dict):
            nested.update(_node_tables(f"{title} / {key}", value))
        else:
            cells[key] = value
    tables = {title: _cells_frame(cells)} if cells else {}
    for group in grids:
        name = title if len(group) == len(node) else f"{title} / {', '.join(group)}"
        tables[name] = _grid_frame({key: records[key] for key in group})
    return tables | nested


def _is_cell(value: Any) -> bool:
    """Whether a value fits one table cell: a number, string, bool, None or a flat list of those."""
    if isinstance(value, list):
        return all(_is_cell(v) and not isinstance(v, list) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _is_record(value: Any) -> bool:
    """Whether a value is one table row: a dict of cells, some grouped one level deeper (``params: {eta: ..}``)."""
    if not isinstance(value, dict) or not any(_is_cell(v) for v in value.values()):
        return False
    return all(_is_cell(v) or (isinstance(v, dict) and all(_is_cell(w) for w in v.values())) for v in value.values())


def _is_record_list(value: Any) -> bool:
    """Whether a value is a list of rows (e.g. one threshold per class)."""
    return isinstance(value, list) and bool(value) and all(_is_record(v) for v in value)


def _similar_groups(records: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Group records whose names mostly overlap (models scored with the same metrics), keeping their order."""
    groups: list[list[str]] = []
    for name, record in records.items():
        for group in groups:
            first = set(records[group[0]])
            if len(first & set(record)) >= 0.5 * min(len(first), len(record)):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def _grid_frame(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Records side by side, oriented so the longer dimension runs down the page."""
    frame = pd.DataFrame.from_dict(records, orient="index", dtype=object)
    return frame.T if frame.shape[1] > frame.shape[0] else frame


def _cells_frame(cells: dict[str, Any]) -> pd.DataFrame:
    """A name/value table (nested dicts flattened to dotted names)."""
    flat = _flatten(cells)
    return pd.DataFrame({"value": list(flat.values())}, index=pd.Index(list(flat), name="name"), dtype=object)


def _cell(value: Any) -> str:
    """One value as table text: floats to 4 significant digits, lists comma-separated, missing as a dash."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "—"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table from header texts and cells that are already HTML."""
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    tbody = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = f'<table class="ic"><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table>'
    return f'<div class="ic-scroll">{table}</div>'


def _table_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table of formatted, escaped cells (a plain 0..n-1 index is left out)."""
    if frame.empty:
        return ""
    show_index = not isinstance(frame.index, pd.RangeIndex)
    head = ([frame.index.name or ""] if show_index else []) + [str(c) for c in frame.columns]
    rows = [
        ([escape(str(index))] if show_index else []) + [escape(_cell(v)) for v in values]
        for index, values in zip(frame.index, frame.itertuples(index=False, name=None))
    ]
    return _html_table(head, rows)


def _metrics_html(metrics: dict[str, Any]) -> str:
    """Every metrics table under its title."""
    return "".join(f"<h3>{escape(title)}</h3>{_table_html(frame)}" for title, frame in metrics_tables(metrics).items())


def _read_mapping(path: Path) -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping (empty when the file is absent); a clear error naming a bad file."""
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot be read: {err}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _read_notebook(path: Path) -> Any:
    """An executed notebook; a clear error naming the file when it is not one."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable notebook: {err}") from err


def _exporter(with_code: bool) -> Any:
    """nbconvert's lab HTML exporter: code cells and prompts hidden unless asked for, markdown images embedded."""
    from nbconvert import HTMLExporter

    return HTMLExporter(
        exclude_input=not with_code, exclude_input_prompt=not with_code, exclude_output_prompt=not with_code,
        embed_images=True,
    )


def _export_all(executed: list[_Executed], with_code: bool, progress: bool) -> tuple[str, dict[str, str]]:
    """The exporter's CSS (taken once) and each notebook's rendered cells, keyed by notebook name."""
    exporter = _exporter(with_code)
    styles, bodies = "", {}
    for item in tqdm(executed, desc="report", unit="notebook", disable=not progress):
        page, _ = exporter.from_notebook_node(
            _without_widget_views(item.nb), resources={"metadata": {"name": item.stem, "path": str(item.path.parent)}}
        )
        head, _, body = page.partition("</head>")
        styles = styles or "\n".join(_STYLE_BLOCK.findall(head))
        bodies[item.stem] = body[body.index("<main>") + len("<main>"):body.rindex("</main>")]
    return styles, bodies


def _without_widget_views(nb: Any) -> Any:
    """Drop live-widget outputs (progress bars, explorers) in place: a static page cannot run them."""
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if _WIDGET_VIEW not in o.get("data", {})]
    return nb


def _strip_external(page: str) -> str:
    """Drop every script or stylesheet fetched from another host, so the page works offline and fetches nothing."""
    return _EXTERNAL.sub("", page)


def _href(path: Path, links_from: Path) -> str:
    """A relative, URL-quoted link to ``path`` from the folder the page sits in."""
    return escape(quote(Path(os.path.relpath(path.resolve(), links_from.resolve())).as_posix()))


def _link(path: Path, links_from: Path, text: str | None = None) -> str:
    """An <a> element pointing at a run file."""
    return f'<a href="{_href(path, links_from)}">{escape(text or path.name)}</a>'


def _notebook_section(item: _Executed, body: str, links_from: Path) -> _Section:
    """One executed notebook: a link to the .ipynb, then its rendered cells (figures are inline outputs)."""
    link = f'<p class="ic-note">Executed notebook: {_link(item.path, links_from)}</p>'
    return _Section(item.anchor, item.stem, link + body)


def _tables_html(run_dir: Path, links_from: Path) -> str:
    """A link and the size of every per-particle table under tables/."""
    paths = sorted(p for p in (run_dir / "tables").rglob("*") if p.suffix in (".parquet", ".csv") and p.is_file())
    rows = [[_link(p, links_from, p.relative_to(run_dir).as_posix()), f"{p.stat().st_size / 1024:.1f} KiB"]
            for p in paths]
    return _html_table(["table", "size"], rows) if rows else ""


def _parameters_html(run_dir: Path, params: dict[str, Any]) -> str:
    """params.yaml as a table, then each notebook stage's resolved config (params/*.yaml) in a collapsible block."""
    stages = "".join(
        f"<details><summary>params/{escape(p.name)}</summary>{_table_html(_cells_frame(_read_mapping(p)))}</details>"
        for p in sorted((run_dir / "params").glob("*.yaml"))
    )
    main = f"<h3>params.yaml</h3>{_table_html(_cells_frame(params))}" if params else ""
    return main + (f"<h3>Resolved config per notebook</h3>{stages}" if stages else "")


def _status(nb: Any) -> str:
    """Whether a notebook ran through or stopped on an error."""
    failed = nb.metadata.get("papermill", {}).get("exception") or any(
        o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", [])
    )
    return "failed" if failed else "executed"


def _duration(seconds: float | None) -> str:
    """Seconds as a short human duration (``7.8 s``, ``3 min 05 s``, ``1 h 02 min``)."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _started(executed: list[_Executed], run_dir: Path) -> str:
    """When the run started: papermill's start time of its first notebook, else when its first file was written."""
    stamps = [e.nb.metadata.get("papermill", {}).get("start_time") for e in executed]
    stamp = next((s for s in stamps if s), None)
    if stamp:
        when = _dt.datetime.fromisoformat(stamp)
    else:
        first = min(p.stat().st_mtime for p in (run_dir / "params.yaml", run_dir / "metrics.json") if p.is_file())
        when = _dt.datetime.fromtimestamp(first, _dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _notebook_rows(
    params: dict[str, Any], metrics: dict[str, Any], executed: list[_Executed], links_from: Path
) -> list[list[str]]:
    """One header row per planned or executed notebook: section link, duration, status, .ipynb link."""
    seconds = metrics.get("pipeline", {}).get("notebook_seconds", {})
    by_name = {e.path.name: e for e in executed}
    rows = []
    for name in sorted(set(params.get("notebooks") or []) | set(by_name)):
        item = by_name.get(name)
        if item is None:
            rows.append([escape(Path(name).stem), "—", "not run", "—"])
            continue
        took = seconds.get(item.stem, item.nb.metadata.get("papermill", {}).get("duration"))
        rows.append([
            f'<a href="#{escape(item.anchor)}">{escape(item.stem)}</a>', _duration(took), _status(item.nb),
            _link(item.path, links_from),
        ])
    return rows


def _header_html(
    run_dir: Path, params: dict[str, Any], metrics: dict[str, Any], executed: list[_Executed], links_from: Path
) -> str:
    """The run at a glance: name, dataset, profile, start, total duration, and each notebook's time and status."""
    parameters = params.get("parameters", {})
    pipeline = metrics.get("pipeline", {})
    facts = {
        "dataset": metrics.get("data", {}).get("dataset") or parameters.get("dataset") or "the profile's synthetic set",
        "profile": parameters.get("profile", "—"),
        "started": _started(executed, run_dir),
        "total duration": _duration(pipeline.get("total_seconds")),
    }
    rows = [[escape(k), escape(str(v))] for k, v in facts.items()]
    notebooks = _notebook_rows(params, metrics, executed, links_from)
    return (
        f"<h1>icecore run {escape(run_dir.name)}</h1>{_html_table(['run', ''], rows)}"
        + (_html_table(["notebook", "duration", "status", "file"], notebooks) if notebooks else "")
    )


def _page(title: str, styles: str, header: str, sections: list[_Section]) -> str:
    """The whole page: one head with the exporter's CSS, the header, a table of contents, then every section."""
    toc = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{escape(s.anchor)}"><h2 class="ic-section">{escape(s.title)}</h2>{s.html}</section>'
        for s in sections
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8"/>\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1.0"/>\n<title>{escape(title)}</title>\n'
        f'{styles}\n<style type="text/css">{_REPORT_CSS}</style>\n</head>\n'
        f'<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">\n'
        f'<main class="ic-report">{header}<nav><h2 class="ic-section">Contents</h2><ol>{toc}</ol></nav>{body}</main>\n'
        f"</body>\n</html>\n"
    )
