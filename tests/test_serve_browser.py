"""The page in headless Chromium: upload a real photo, read the ages it shows, compare with the API.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them when
it runs as root, as CI does); skipped, saying so, only where they are missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
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


def _upload(browser: webdriver.Chrome, *photos: Path) -> str:
    """Choose ``photos`` in the page's file input; the page's state once it has answered."""
    body = browser.find_element(By.TAG_NAME, "body")
    browser.execute_script("document.body.dataset.state = ''")
    chooser = browser.find_element(By.ID, "file")
    chooser.clear()  # a "multiple" input adds sent files to those chosen before
    chooser.send_keys("\n".join(str(photo) for photo in photos))
    WebDriverWait(browser, 120).until(lambda _: body.get_attribute("data-state") in ("done", "error"))
    return body.get_attribute("data-state")


def test_page_shows_the_api_ages(browser: webdriver.Chrome, server: LocalServer, two_faces_photo, tmp_path: Path) -> None:
    photo = tmp_path / "pair.jpg"
    two_faces_photo.save(photo, quality=95)
    status, result = post_image(server.url + "/api/predict", photo.read_bytes(), photo.name)
    assert status == 200 and len(result["faces"]) == 2
    expected = [math.floor(face["age"] + 0.5) for face in result["faces"]]  # JavaScript's Math.round

    browser.get(server.url + "/")
    assert _upload(browser, photo) == "done", browser.find_element(By.ID, "status").text

    assert [int(element.text) for element in browser.find_elements(By.CSS_SELECTOR, ".faces .face-age")] == expected
    labels = [element.text for element in browser.find_elements(By.CSS_SELECTOR, ".overlay text")]
    assert labels == [f"#{number}: {age}" for number, age in enumerate(expected, 1)]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".overlay rect.box")) == 2
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


def test_a_failed_upload_leaves_no_earlier_result(browser: webdriver.Chrome, server: LocalServer, utk_crops: list[Path], tmp_path: Path) -> None:
    browser.get(server.url + "/")
    assert _upload(browser, utk_crops[0]) == "done"
    assert browser.find_element(By.CSS_SELECTOR, ".result img").is_displayed()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(utk_crops[0].read_bytes()[:300])
    assert _upload(browser, broken) == "error"
    assert "corrupt or truncated" in browser.find_element(By.ID, "status").text
    assert [element.is_displayed() for element in browser.find_elements(By.CSS_SELECTOR, ".result img, .face-age")] == []
    (section,) = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert section.find_element(By.TAG_NAME, "h2").text == "broken.jpg"


def test_several_photos_and_their_downloads(browser: webdriver.Chrome, server: LocalServer, utk_crops: list[Path], tmp_path: Path) -> None:
    photos = [tmp_path / path.name for path in utk_crops[:2]]
    for source, photo in zip(utk_crops, photos):
        photo.write_bytes(source.read_bytes())
    wall = tmp_path / "wall.png"  # no face in it
    Image.new("RGB", (200, 200), (128, 128, 128)).save(wall)
    expected = [post_image(server.url + "/api/predict", photo.read_bytes(), photo.name)[1] for photo in photos]
    browser.get(server.url + "/")
    assert _upload(browser, *photos, wall) == "done", browser.find_element(By.ID, "status").text
    assert [element.text for element in browser.find_elements(By.CSS_SELECTOR, ".result h2")] == [photo.name for photo in [*photos, wall]]
    assert browser.find_element(By.ID, "downloads").is_displayed()
    fetch = "return fetch(document.getElementById(arguments[0]).href).then(response => response.text())"
    downloaded = json.loads(browser.execute_script(fetch, "download-json"))
    assert [entry["file"] for entry in downloaded] == [photo.name for photo in [*photos, wall]]
    for entry, answer in zip(downloaded, expected):
        assert [face["age"] for face in entry["faces"]] == [face["age"] for face in answer["faces"]]
    rows = list(csv.DictReader(io.StringIO(browser.execute_script(fetch, "download-csv"))))
    assert [row["file"] for row in rows] == [photo.name for photo in [*photos, wall]]
    assert [float(row["age"]) for row in rows[:2]] == [round(answer["faces"][0]["age"], 2) for answer in expected]
    assert (rows[2]["face"], rows[2]["error"]) == ("0", "")  # as glae predict --csv writes a photo without a face


def test_a_new_selection_during_estimation_replaces_the_earlier_one(
    browser: webdriver.Chrome, server: LocalServer, utk_crops: list[Path], tmp_path: Path
) -> None:
    """Three photos chosen, then one more before the three are done: only the last one is shown and downloaded."""
    photos = [tmp_path / path.name for path in utk_crops[:4]]
    for source, photo in zip(utk_crops, photos):
        photo.write_bytes(source.read_bytes())
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys("\n".join(str(photo) for photo in photos[:3]))  # not waited for
    assert _upload(browser, photos[3]) == "done"
    browser.execute_script("return new Promise(resolve => setTimeout(resolve, 1500))")  # the earlier loop's late answers
    assert [element.text for element in browser.find_elements(By.CSS_SELECTOR, ".result h2")] == [photos[3].name]
    fetch = "return fetch(document.getElementById(arguments[0]).href).then(response => response.text())"
    assert [entry["file"] for entry in json.loads(browser.execute_script(fetch, "download-json"))] == [photos[3].name]


def test_a_file_dropped_outside_the_box_does_not_leave_the_page(browser: webdriver.Chrome, server: LocalServer) -> None:
    browser.get(server.url + "/")
    prevented = browser.execute_script(
        "return ['dragover', 'drop'].map(type => {"
        " const event = new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: new DataTransfer()});"
        " document.querySelector('header').dispatchEvent(event); return event.defaultPrevented; })"
    )
    assert prevented == [True, True]  # the browser's own handling (opening the file) is cancelled
    assert browser.current_url == server.url + "/" and browser.find_element(By.ID, "results").text == ""
