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


def _loaded(driver):
    """``[src, complete, naturalWidth]`` of every image the page shows (lazy images load once displayed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.querySelectorAll('img').forEach(img => img.scrollIntoView());")
    shown = "Array.from(document.images).filter(img => img.offsetParent !== null)"
    WebDriverWait(driver, 5).until(lambda d: d.execute_script(f"return {shown}.every(img => img.complete);"))
    return driver.execute_script(f"return {shown}.map(img => [img.getAttribute('src'), img.complete, "
                                 f"img.naturalWidth]);")


def test_every_gallery_image_loads_in_every_view(tmp_path, driver):
    sources = ["a/cat.jpg", "b/cat.jpg", "photos/my holiday pic ü.png", "ünïcödé/猫 1.jpeg"]
    out = tmp_path / "out dir"  # a space in the page's own path too
    manifest = json.loads(write_overlays(out, [_item(s, i) for i, s in enumerate(sources)],
                                         run_info={"model": "resnet18_cbam", "methods": ["gradcam"]},
                                         errors=[{"source": "broken.jpg", "error": "OSError: truncated"}])
                          .read_text(encoding="utf-8"))
    driver.get((out / "index.html").as_uri())
    from selenium.webdriver.common.by import By

    labels = driver.find_elements(By.CSS_SELECTOR, ".switch label")
    assert [label.text for label in labels] == ["grid", "gradcam", "layer4.0.se.spatial"]
    for label in labels:  # the view switch works without scripts: one picture per card in each view
        label.click()
        images = _loaded(driver)
        assert len(images) == len(manifest["images"]) == len(sources)
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"{label.text}: images that did not load: {broken}"
        assert all(f"thumbs/{label.text}" in src for src, _, _ in images)
    text = driver.execute_script("return document.body.innerText;")
    assert "broken.jpg" in text and "OSError: truncated" in text and "resnet18_cbam" in text
    # What a person sees: the screenshot decodes and holds the overlays' colours, not a blank page.
    from io import BytesIO

    from PIL import Image

    shot = np.asarray(Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    saturated = (shot.max(axis=2).astype(int) - shot.min(axis=2)) > 100  # jet colours; the page itself is grey
    assert saturated.mean() > 0.01


@pytest.mark.slow
def test_a_thousand_images_open_quickly_page_by_page(tmp_path, driver):
    import time

    out = tmp_path / "big"
    write_overlays(out, (_item(f"img{i:04d}.png", i) for i in range(1000)), page_size=100)
    assert len(list(out.glob("*.html"))) == 10
    for page in ("index.html", "page-10.html"):
        start = time.perf_counter()
        driver.get((out / page).as_uri())
        images = _loaded(driver)
        assert time.perf_counter() - start < 5
        assert len(images) == 100 and all(width > 0 for _, _, width in images)  # only this page's grid thumbnails
    from selenium.webdriver.common.by import By

    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "nav.pages a")]
    assert len(set(links)) == 9 and any(link.endswith("index.html") for link in links)  # nav above and below
