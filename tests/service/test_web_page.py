"""The web page in a real headless browser (Debian's chromium, driven by Selenium) against a real
`normalcy serve` on loopback: load it, upload images, read each result, keep a screenshot.

Outside CI the test skips when chromium or its driver is absent; with NORMALCY_REQUIRE_BROWSER=1
(set by .ci/run) or CI=true a missing browser is a failure. Nothing here downloads a browser or a
driver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _browser_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    msg = (
        f"{', '.join(missing)} not found: `apt-get install -y chromium chromium-driver` "
        "to run the browser test"
    )
    required = os.environ.get("NORMALCY_REQUIRE_BROWSER") == "1" or os.environ.get(
        "CI", ""
    ).lower() in ("1", "true", "yes")
    if required:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    _browser_or_skip()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout_s: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)


def test_page_scores_uploaded_images_like_the_api(
    browser, start_server, model_dir, digits_test, png, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server = start_server(model_dir)
    normal = digits_test.images[digits_test.labels == 0][0]
    noise = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    files = {"zero.png": png(normal), "noise.png": png(noise)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    browser.get(server.url + "/")
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value("pixelcnn")
    _wait(
        browser,
        lambda d: (
            "nll"
            in [o.get_attribute("value") for o in Select(d.find_element(By.ID, "score")).options]
        ),
    )
    Select(browser.find_element(By.ID, "score")).select_by_value("nll")  # raw likelihood
    browser.find_element(By.ID, "files").send_keys(
        "\n".join(str(tmp_path / name) for name in files)
    )
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result[data-state=done]")) == 2)

    cards = {
        card.get_attribute("data-filename"): card
        for card in browser.find_elements(By.CSS_SELECTOR, ".result")
    }
    assert set(cards) == set(files)
    meta = httpx.get(f"{server.url}/v1/models/pixelcnn").json()
    edges = meta["scores"]["nll"]["reference_histogram"]["edges"]
    units = meta["heatmap_units"]
    for name, data in files.items():
        answer = httpx.post(
            f"{server.url}/v1/models/pixelcnn/score?score=nll&heatmap=true",
            files={"images": (name, data, "image/png")},
        ).json()["results"][0]
        card = cards[name]
        assert float(card.get_attribute("data-score")) == pytest.approx(answer["score"], abs=1e-9)
        assert float(card.get_attribute("data-p-value")) == pytest.approx(answer["p_value"])
        decision = card.find_element(By.CSS_SELECTOR, ".decision").text
        assert decision == ("anomaly" if answer["is_anomaly"] else "normal")
        shown = float(card.find_element(By.CSS_SELECTOR, "dd.p-value").text)
        assert shown == pytest.approx(answer["p_value"], rel=5e-3)  # three significant digits
        assert len(card.find_elements(By.TAG_NAME, "canvas")) == 2  # the image and its heat map
        histogram = card.find_element(By.CSS_SELECTOR, "svg.histogram")
        assert histogram.find_elements(By.CSS_SELECTOR, "rect.bar")
        assert histogram.find_elements(By.CSS_SELECTOR, "line.marker")
        # Robust limits from the server, the threshold drawn and labelled with its value.
        shown_range = [
            float(histogram.find_element(By.CSS_SELECTOR, f"text.axis.{end}").text)
            for end in ("low", "high")
        ]
        assert shown_range == pytest.approx([edges[0], edges[-1]], rel=5e-3, abs=1e-3)
        assert histogram.find_elements(By.CSS_SELECTOR, "line.threshold")
        label = histogram.find_element(By.CSS_SELECTOR, "text.threshold-label").text
        assert float(label.split()[1]) == pytest.approx(answer["threshold"], rel=5e-3)
        # The heat map's colour scale, in the unit of the heat map.
        scale = card.find_element(By.CSS_SELECTOR, ".heat-scale")
        assert scale.get_attribute("data-units") == units
        assert units in scale.text
        assert scale.find_element(By.CSS_SELECTOR, ".low").text == "0"
    assert cards["noise.png"].get_attribute("data-is-anomaly") == "true"  # uniform noise
    assert cards["zero.png"].get_attribute("data-is-anomaly") == "false"  # a normal digit
    # Noise scores far beyond the calibration scores: marked at the edge, the axis not stretched.
    noise_histogram = cards["noise.png"].find_element(By.CSS_SELECTOR, "svg.histogram")
    assert noise_histogram.get_attribute("data-score-outside") == "above"
    assert "this image" in noise_histogram.find_element(By.CSS_SELECTOR, ".outside-marker").text
    status = browser.find_element(By.ID, "status")
    assert "2 image(s) scored, 1 flagged as anomalous" in status.text
    assert (status.get_attribute("data-failed"), status.get_attribute("data-flagged")) == ("0", "1")

    shot = tmp_path / "web_page.png"
    browser.save_screenshot(str(shot))
    keep = os.environ.get("NORMALCY_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    print(f"web page screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_page_shows_the_servers_error_for_a_file_that_is_not_an_image(
    browser, start_server, model_dir, tmp_path, png
):
    from selenium.webdriver.common.by import By

    server = start_server(model_dir)
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not a PNG")
    good = tmp_path / "blank.png"
    good.write_bytes(png(np.zeros((8, 8), np.uint8)))
    browser.get(server.url + "/")
    _wait(browser, lambda d: "input" in d.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "files").send_keys(f"{junk}\n{good}")
    card = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=error]"))
    assert "invalid_image" in card.text
    assert "HTTP 400" in card.text
    # Scored, flagged and failed are counted apart: the refused file is no "scored" image.
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result[data-state=done]"))
    status = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#status[data-failed='1']"))
    _wait(browser, lambda d: "failed" in d.find_element(By.ID, "status").text)
    assert status.get_attribute("data-scored") == "1"
    assert status.text.startswith("1 image(s) scored,")
    assert "1 failed" in status.text


def test_page_asks_a_conditional_model_for_the_class(
    browser, start_server, tmp_path, conditional_pixelcnn_bundle, digits_test, png
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(conditional_pixelcnn_bundle, folder / "digits.onnx")
    server = start_server(folder)
    image = digits_test.images[digits_test.labels == 3][0]
    (tmp_path / "three.png").write_bytes(png(image))

    browser.get(server.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "label-row").is_displayed())
    assert [o.text for o in Select(browser.find_element(By.ID, "label")).options] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    Select(browser.find_element(By.ID, "label")).select_by_value("3")
    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "three.png"))
    card = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=done]"))
    assert card.find_element(By.CSS_SELECTOR, "dd.class").text == "3"
    answer = httpx.post(
        f"{server.url}/v1/models/digits/score?labels=3",
        files={"images": ("three.png", png(image), "image/png")},
    ).json()
    assert float(card.get_attribute("data-score")) == pytest.approx(answer["results"][0]["score"])


def test_the_api_docs_render_from_the_servers_own_files(browser, start_server, model_dir):
    from selenium.webdriver.common.by import By

    server = start_server(model_dir)
    for page, ready in [("/docs", ".swagger-ui .info .title")]:
        browser.get(server.url + page)
        title = _wait(browser, lambda d, css=ready: d.find_elements(By.CSS_SELECTOR, css))
        assert "normalcy" in title[0].text
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded
        assert all(url.startswith(server.url + "/") for url in loaded), loaded
    # The operations are listed, the v2 inference among them.
    assert browser.find_elements(By.CSS_SELECTOR, "[data-path='/v2/models/{name}/infer']")
