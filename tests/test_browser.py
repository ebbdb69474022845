"""What a person sees in a browser: a ci run's report.html, and notebook 05's explorer live in JupyterLab.

Headless Chromium (Debian's ``chromium``, which ``bash tasks.sh test-slow`` installs) driven by Playwright. Where
chromium is missing these tests skip, except under CI, where they fail: there the browser is part of the set-up.
``ICECORE_SCREENSHOTS=docs/screenshots`` keeps the screenshots (the README's come from here).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icecore_lib.run.pipeline import run_notebooks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = "icecore-browser-test"
NOTEBOOK = "notebooks/05_outlier_gallery.ipynb"


def _chromium() -> str:
    """The Chromium executable: $CHROMIUM, else chromium on the PATH; missing fails under CI, else skips."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("no chromium executable: `bash tasks.sh test-slow` installs Debian's chromium package")
    pytest.skip("no chromium executable (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chromium)")


def _screenshot(page, name: str, **options) -> None:
    """Keep a screenshot under $ICECORE_SCREENSHOTS when it is set."""
    folder = os.environ.get("ICECORE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), **options)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole ci run (00-05) in a project folder of its own: its manifest beside runs/, as in a lab's checkout."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "data_manifest.yaml", project / "data_manifest.yaml")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # the ci key numbers were measured with one thread, as nbval runs
        run_dir, _ = run_notebooks("ci", runs_root=project / "runs", name="browser", progress=False)
    return run_dir


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium under Playwright."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(ci_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab server on the run directory (its own settings folders), as ``http://host:port``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path_factory.mktemp("jupyter")
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no "get notified?" toast over the page
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ci_run}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start (exit {server.poll()})") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _drawn_pixels(png: bytes) -> int:
    """How many pixels of a screenshot differ from its most common colour (the background)."""
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L")).ravel()
    return int((gray != np.bincount(gray).argmax()).sum())


def test_the_report_shows_every_notebook_and_every_figure_decodes(ci_run: Path, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((ci_run / "report.html").as_uri())
    sections = page.locator("h2.ic-section").all_inner_texts()
    assert [s for s in sections if s[:2].isdigit()] == [
        "00_data_overview", "01_metadata_bdt", "02_cnn_classifier", "03_autoencoder", "04_umap_clustering",
        "05_outlier_gallery"]
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) > 30 and min(widths) > 0, f"{widths.count(0)} of {len(widths)} figures did not decode"
    page.locator("#nb-05_outlier_gallery").scroll_into_view_if_needed()
    _screenshot(page, "report.png")
    page.close()


def test_the_explorer_draws_the_map_in_jupyterlab_and_a_lasso_fills_the_gallery(lab: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{lab}/lab/tree/{NOTEBOOK}?token={TOKEN}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_function("document.body.innerText.includes('| Idle')", timeout=60_000)
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")
    # The explorer's gallery fills once its cell and the scripted review after it have run in the kernel.
    page.wait_for_selector(".widget-gridbox img", state="attached", timeout=300_000)
    page.wait_for_function("document.body.innerText.includes('| Idle')", timeout=120_000)

    canvas = page.locator(".jupyter-widgets canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    box = canvas.bounding_box()
    assert box["width"] >= 400 and box["height"] >= 400, f"the map is squeezed to {box}"
    assert _drawn_pixels(canvas.screenshot()) > 200, "the map canvas is blank: no points were drawn"

    gallery = page.locator(".widget-gridbox").first
    sources = "images => images.map(i => i.src)"
    before = gallery.locator("img").evaluate_all(sources)
    page.click("[title='Activate lasso selection']")
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    corners = [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95), (0.05, 0.07)]
    page.mouse.move(x + corners[0][0] * w, y + corners[0][1] * h)
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        for t in np.linspace(0.1, 1, 10):  # the lasso extends its polygon only between mouse events some ms apart
            page.mouse.move(x + (x0 + (x1 - x0) * t) * w, y + (y0 + (y1 - y0) * t) * h)
            page.wait_for_timeout(30)
    page.mouse.up()
    status = page.locator(".widget-html", has_text=re.compile(r"^\d+ selected")).first
    status.wait_for(timeout=30_000)
    found = re.match(r"(\d+) selected(?:, (\d+) shown)?", status.inner_text())
    selected, shown = int(found[1]), int(found[2] or found[1])
    page.wait_for_function(f"document.querySelector('.widget-gridbox').querySelectorAll('img').length == {shown}",
                           timeout=30_000)
    assert selected >= 60 and 0 < shown <= selected  # most of the ci core's 240 particles
    assert gallery.locator("img").evaluate_all(sources) != before, "the lasso left the gallery as it was"
    assert all(gallery.locator("img").evaluate_all("images => images.map(i => i.naturalWidth > 0)"))
    _screenshot(page, "explorer.png")
    page.close()
