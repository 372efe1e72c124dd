"""The gallery opened in a real browser (headless Chromium) from the file system: every image loads, none is missing.

String checks on the HTML cannot tell whether a URL-quoted path with spaces or unicode resolves on disk; a browser can.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from visattn.export import OverlayItem, write_overlays

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install selenium")

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def driver():
    browser, chromedriver = _find(_BROWSERS), _find(("chromedriver",))
    if browser is None or chromedriver is None:
        pytest.skip("chromium/chromedriver not found; install Debian packages chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--allow-file-access-from-files", "--window-size=1280,900"):
        options.add_argument(flag)  # --no-sandbox: Chromium refuses to start as root in a container without it
    # An explicit driver path keeps Selenium Manager from trying to download one (there may be no network).
    chrome = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    chrome.set_page_load_timeout(10)
    yield chrome
    chrome.quit()


def _item(source: str, seed: int) -> OverlayItem:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    blob = np.exp(-((yy - rng.integers(8, 24)) ** 2 + (xx - rng.integers(8, 24)) ** 2) / 50.0).astype(np.float32)
    return OverlayItem(source, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), {"gradcam": blob},
                       {"layer4.0.se.spatial": blob[::4, ::4].copy()}, label="circle", probability=0.973)


def test_every_gallery_image_loads(tmp_path, driver):
    sources = ["a/cat.jpg", "b/cat.jpg", "photos/my holiday pic ü.png", "ünïcödé/猫 1.jpeg"]
    out = tmp_path / "out dir"  # a space in the page's own path too
    manifest = json.loads(write_overlays(out, [_item(s, i) for i, s in enumerate(sources)],
                                         run_info={"model": "resnet18_cbam", "methods": ["gradcam"]},
                                         errors=[{"source": "broken.jpg", "error": "OSError: truncated"}])
                          .read_text(encoding="utf-8"))
    driver.get((out / "index.html").as_uri())
    # Lazy images load when near the viewport: scroll each into view, then wait until all have finished.
    driver.execute_script("document.querySelectorAll('img').forEach(img => img.scrollIntoView());")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 5).until(
        lambda d: d.execute_script("return Array.from(document.images).every(img => img.complete);"))
    images = driver.execute_script(
        "return Array.from(document.images).map(img => [img.getAttribute('src'), img.complete, img.naturalWidth]);")
    assert len(images) == len(manifest["images"]) == len(sources)
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    text = driver.execute_script("return document.body.innerText;")
    assert "broken.jpg" in text and "OSError: truncated" in text and "resnet18_cbam" in text
