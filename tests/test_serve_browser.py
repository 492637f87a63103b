"""The page in headless Chromium: upload a real photo, read the ages it shows, compare with the API.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them when
it runs as root, as CI does); skipped, saying so, only where they are missing.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from glae.serve.client import LocalServer, post_image

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs chromium and chromedriver: apt-get install chromium chromium-driver",
)
# Headless, offline, and nothing of the user's: no sandbox (root in CI), no GPU, no
# background fetches, a fresh profile per run.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_the_api_ages(browser: webdriver.Chrome, server: LocalServer, two_faces_photo, tmp_path: Path) -> None:
    photo = tmp_path / "pair.jpg"
    two_faces_photo.save(photo, quality=95)
    status, result = post_image(server.url + "/api/predict", photo.read_bytes(), photo.name)
    assert status == 200 and len(result["faces"]) == 2
    expected = [math.floor(face["age"] + 0.5) for face in result["faces"]]  # JavaScript's Math.round

    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(browser, 120).until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", browser.find_element(By.ID, "status").text

    assert [int(element.text) for element in browser.find_elements(By.CSS_SELECTOR, "#faces .face-age")] == expected
    labels = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#overlay text")]
    assert labels == [f"#{number}: {age}" for number, age in enumerate(expected, 1)]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay rect.box")) == 2
    painted = browser.execute_script(
        "return [...document.querySelectorAll('canvas.chart')].map(canvas => {"
        " const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;"
        " return pixels.some((value, index) => index % 4 === 3 && value > 0); })"
    )
    assert painted == [True, True]  # one drawn distribution chart per face

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
