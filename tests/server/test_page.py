"""The page at / in a real headless Chromium (Debian's `chromium` and `chromium-driver`, installed by `make test`)
against the real server with a token: it asks for the token, lists the models, and answers an image, a sound file, a
record and a tensor request; the screenshots are checked for the answer drawn, not only the page's text."""

from __future__ import annotations

import io
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait
from sklearn.datasets import load_digits

from tests.vad_audio import recording, write

RECORD = {"age": 54, "sex": 2, "bmi": 36.1, "bp": 115, "s1": 163, "s2": 98.4, "s3": 43, "s4": 4, "s5": 4.68, "s6": 101}
FACES_PHOTO = Path(sysconfig.get_paths()["purelib"]) / "skimage" / "data" / "astronaut.png"  # make installs it
BAR_BLUE = np.array([31, 111, 235])  # .bar .fill in style.css
BOX_RED = np.array([255, 45, 85])  # the boxes app.js draws
WAIT_S = 30


@pytest.fixture(scope="module")
def guarded(kit: Any, repository: Path) -> Iterator[Any]:
    kit.copy_bundled("faces", repository)  # a detection model: its answer is drawn on the photo
    kit.copy_bundled("silero_vad", repository)  # a sound file in, speech segments out
    running = kit.serve(repository, auth_token="secret")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("Debian's chromium and chromium-driver are missing: `make test` installs them (as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def _wait(browser: WebDriver, condition: Any) -> Any:
    return WebDriverWait(browser, WAIT_S).until(condition)


def _card(browser: WebDriver, model: str) -> WebElement:
    return _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"article[data-model='{model}']"))


def _answer(browser: WebDriver, card: WebElement) -> WebElement:
    card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    answer = card.find_element(By.CSS_SELECTOR, ".answer")
    state = _wait(browser, lambda b: answer.get_attribute("data-state") in ("done", "failed") and answer)
    assert state.get_attribute("data-state") == "done", answer.text
    return answer


def _share(png: bytes, colour: np.ndarray) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)
    return float((np.abs(pixels - colour).sum(axis=-1) < 40).mean())


def test_the_page_asks_for_the_token_then_answers_every_input_kind(
    browser: WebDriver, guarded: Any, tmp_path: Path
) -> None:
    browser.get(f"{guarded.url}/")
    _wait(browser, lambda b: b.find_element(By.ID, "token").is_displayed())
    assert "Cannot list the models" in browser.find_element(By.ID, "problem").text
    browser.find_element(By.ID, "token-value").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "#token button").click()

    digits = _card(browser, "digits_cnn")
    assert "image → classification" in digits.text
    digit = tmp_path / "digit_4.png"  # scikit-learn's digit 1023 (a 4; its pixels run 0-16) as an 8x8 PNG
    Image.fromarray((load_digits().images[1023] * 255 / 16).round().astype(np.uint8), mode="L").save(digit)
    digits.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(digit))
    answer = _answer(browser, digits)
    bars = answer.find_elements(By.CSS_SELECTOR, ".bar")
    assert bars and bars[0].find_element(By.CSS_SELECTOR, ".label").text == "4"
    drawn = answer.screenshot_as_png
    (tmp_path / "digits_answer.png").write_bytes(drawn)
    assert _share(drawn, BAR_BLUE) > 0.02  # the top bar (score ~1) is drawn, not only written

    faces = _card(browser, "faces")
    faces.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(FACES_PHOTO))
    answer = _answer(browser, faces)
    assert "face 0.9" in answer.text
    canvas = _wait(browser, lambda b: answer.find_element(By.TAG_NAME, "canvas"))
    _wait(browser, lambda b: canvas.get_attribute("width") == "512")  # drawn once the photo is decoded
    boxed = canvas.screenshot_as_png
    (tmp_path / "faces_answer.png").write_bytes(boxed)
    assert _share(boxed, BOX_RED) > 0.002  # the box is drawn on the photo

    vad = _card(browser, "silero_vad")
    assert "audio → speech_segments" in vad.text
    speech = write(tmp_path / "speech.wav", recording(3.0, 44100, 2), 44100, "PCM_16")
    vad.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(speech))
    spans = [line.text for line in _answer(browser, vad).find_elements(By.CSS_SELECTOR, ".value")]
    segments = httpx.post(
        f"{guarded.url}/v2/models/silero_vad/predict",
        content=speech.read_bytes(),
        headers={"Authorization": "Bearer secret", "Content-Type": "audio/wav"},
    ).json()["segments"]
    assert len(segments) >= 2 and spans == [f"speech {s['start']:.3f} s to {s['end']:.3f} s" for s in segments]

    diabetes = _card(browser, "diabetes")
    for column, value in RECORD.items():
        diabetes.find_element(By.CSS_SELECTOR, f"input[name='{column}']").send_keys(str(value))
    shown = float(_answer(browser, diabetes).find_element(By.CSS_SELECTOR, ".value").text)
    expected = httpx.post(
        f"{guarded.url}/v2/models/diabetes/predict", json=RECORD, headers={"Authorization": "Bearer secret"}
    ).json()["value"]
    assert shown == pytest.approx(expected, rel=1e-3)

    tensors = _card(browser, "add")  # no preprocessing: a V2 infer request, prefilled with zeros
    assert "y FP32" in _answer(browser, tensors).text

    def answered(b: WebDriver) -> bool:  # the live figures: /metrics polled every 2 s
        count = b.find_element(By.ID, "answered").text.replace(",", "")
        return count.isdigit() and int(count) >= 3

    _wait(browser, answered)
    assert browser.find_element(By.ID, "p50").text.endswith("ms")
    (tmp_path / "page.png").write_bytes(browser.get_screenshot_as_png())


def test_the_docs_page_lists_the_routes(browser: WebDriver, guarded: Any) -> None:
    browser.get(f"{guarded.url}/docs")  # the token from the page above is in this tab's session storage
    _wait(browser, lambda b: "/v2/models/{model}/infer" in b.find_element(By.ID, "paths").text)
    assert "OpenAI-compatible" in browser.find_element(By.ID, "paths").text
