"""The HTML report in a real browser (headless Chromium through Selenium): every image decodes,
nothing overflows a 1280-pixel window, every in-page link resolves; screenshots are kept as
artifacts of the run (``BNBENCH_ARTIFACTS``, default ``artifacts/browser/``).

``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver`` and sets
``BNBENCH_REQUIRE_BROWSER=1``, so there a missing browser fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_STUDY
from test_probes_contract import MANIFEST, ProbePlugin

from bnbench.registry import load_registry
from bnbench.report import from_manifest
from bnbench.report_html import anchor, render_html
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

ARTIFACTS = Path(os.environ.get("BNBENCH_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts" / "browser"))
WIDTH = 1280
# a training study beside the probe study: tables, claims and a multi-panel figure (other metrics)
TRAINING = TINY_STUDY.format(placement='["all", "none"]', lr="[0.05, 0.1]", seeds="[0, 1]", epochs=3).replace(
    'normalizer = "batchnorm"',
    'normalizer = "batchnorm"\nvalidation_size = 32\nanalyses = ["lr_sweep"]\nmetrics = ["train_loss", '
    '"train_accuracy", "validation_accuracy", "test_loss", "test_accuracy", "weight_geometry"]',
)


def browser():
    """A headless Chromium, or a skip (a failure where ``BNBENCH_REQUIRE_BROWSER`` is set)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("BNBENCH_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WIDTH},900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture
def page(write_manifest, tmp_path):
    pytest.importorskip("matplotlib")
    registry = load_registry(objects=[("probe_plugin", ProbePlugin())])
    manifest = open_session(write_manifest(MANIFEST + TRAINING), registry=registry).manifest
    run_manifest(manifest, registry=registry)
    with Store(manifest.results_path) as store:
        report = from_manifest(manifest, store, registry)
    path = tmp_path / "report.html"
    path.write_text(render_html(report))
    return path, [study.name for study in report.studies]


def test_the_report_page_decodes_every_image_fits_1280_pixels_and_resolves_every_link(page):
    from selenium.webdriver.support.ui import WebDriverWait

    path, studies = page
    driver = browser()
    try:
        driver.get(path.as_uri())
        images = "return Array.from(document.images)"
        loaded = "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        # wait for the page's load event and for every image to finish (an event, not a clock)
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(loaded))
        assert driver.execute_script(f"{images}.length") >= 3
        broken = driver.execute_script(f"{images}.filter(i => i.naturalWidth === 0).map(i => i.alt)")
        assert broken == [], f"images that did not decode: {broken}"
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the {WIDTH} px window"
        targets = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href^=\"#\"]')).map(a => a.getAttribute('href').slice(1))"
        )
        assert {anchor(study) for study in studies} <= set(targets)
        resolves = "return !!document.getElementById(arguments[0])"
        unresolved = [t for t in targets if not driver.execute_script(resolves, t)]
        assert unresolved == [], f"links to nowhere: {unresolved}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report_top.png"))
        widest = driver.execute_script(f"{images}.reduce((a, b) => (a.naturalWidth >= b.naturalWidth ? a : b))")
        driver.execute_script("arguments[0].scrollIntoView()", widest)
        driver.save_screenshot(str(ARTIFACTS / "report_figure.png"))
        # a click shows the figure at its natural size, inside its frame: the page still fits
        widest.click()
        assert "zoomed" in widest.get_attribute("class")
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0
    finally:
        driver.quit()
