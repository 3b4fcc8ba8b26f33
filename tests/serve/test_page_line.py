"""The line loop on the served page, in headless Chromium (Debian's chromium and chromedriver, which
`make test` installs): upload images, review a defect, confirm good images, update the model, see the
new version serve, then take the audit's flagged training image out and see that version serve. The real CLI server runs on 127.0.0.1 on a port the OS picks, with an
API key, and is stopped by the test."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FAST, good_with_odd

from spadim.cli import main
from spadim.inspect.versions import list_versions, version_id
from spadim.record import RecordStore

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1600",
]
KEY = "line-key"
CLI = "import sys; from spadim.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def browser():
    assert Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), (
        "Debian's chromium and chromium-driver are missing: `make test` installs them (apt-get)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def server(tiny_root, tmp_path):
    model = tmp_path / "nut.pt"
    good = good_with_odd(tiny_root / "nut" / "train" / "good", tmp_path / "train")  # odd.png: audited
    fit = ["fit", str(good), "--method", "spade", "--far", "0.2", "--out", str(model)]
    assert main([*fit, *FAST, "--layers", "1,2,3"]) == 0
    command = [sys.executable, "-u", "-c", CLI, "serve", str(model), "--port", "0", "--api-key", KEY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    for text in process.stdout:
        found = re.search(r"on (http://127\.0\.0\.1:\d+/)", text)
        if found:
            url = found.group(1)
            threading.Thread(target=process.stdout.read, daemon=True).start()
            break
    assert url, "spadim serve did not start"
    yield model, url
    process.terminate()
    process.wait(timeout=30)


def _wait(driver, condition, seconds: float = 120):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d):  # an alert or a page still loading is "not yet", not a failure
        try:
            return condition(d)
        except (AttributeError, WebDriverException):
            return False

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(settled)


def _answer_key_prompt(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    alert.send_keys(KEY)
    alert.accept()


def _cards(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#records .record")


def test_review_update_and_serve_the_new_version(browser, server, tiny_root, tmp_path):
    import shutil

    from selenium.webdriver.common.by import By

    model, url = server
    store = RecordStore(Path(f"{model}.records.sqlite"))
    first_version = version_id(model)
    browser.get(url)
    _wait(
        browser, lambda d: (_answer_key_prompt(d), "version" in d.find_element(By.ID, "model-info").text)[1]
    )
    assert first_version in browser.find_element(By.ID, "model-info").text
    defect_image = tmp_path / "defect.png"  # distinct names: the page sends the file name
    shutil.copyfile(tiny_root / "nut" / "test" / "chip" / "000.png", defect_image)
    good_images = []
    for i, path in enumerate(sorted((tiny_root / "nut" / "test" / "good").glob("*.png"))):
        good_images.append(tmp_path / f"good_{i}.png")
        shutil.copyfile(path, good_images[-1])
    uploads = [defect_image, *good_images]
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in uploads))
    _wait(browser, lambda d: len(_cards(d)) == len(uploads))
    assert store.count() == len(uploads)  # each upload recorded once, on its first run
    rows = {row["image"]: row for row in store.query()}

    def click_verdict(image: Path, verdict: str) -> None:
        card_id = rows[image.name]["id"]
        card = browser.find_element(By.CSS_SELECTOR, f'#records .record[data-id="{card_id}"]')
        card.find_element(By.CSS_SELECTOR, f"button.{verdict}").click()
        _wait(browser, lambda d: store.get(card_id)["verdict"] == verdict)
        _wait(
            browser,
            lambda d: (
                "chosen"
                in d.find_element(
                    By.CSS_SELECTOR, f'#records .record[data-id="{card_id}"] button.{verdict}'
                ).get_attribute("class")
            ),
        )

    click_verdict(defect_image, "defect")
    for image in good_images:
        click_verdict(image, "good")
    browser.find_element(By.CSS_SELECTOR, '#line nav button[data-show="unreviewed"]').click()
    _wait(browser, lambda d: not _cards(d))  # everything is reviewed
    browser.find_element(By.ID, "update").click()
    _wait(browser, lambda d: "updated" in d.find_element(By.ID, "update-result").text)
    second_version = version_id(model)
    assert second_version != first_version
    _wait(browser, lambda d: second_version in d.find_element(By.ID, "model-info").text)
    versions = list_versions(model)
    assert [v["kind"] for v in versions] == ["fit", "update"]
    assert versions[-1]["parent"] == first_version and len(versions[-1]["images_added"]) == len(good_images)
    # the next upload is decided by the new version and recorded under it
    browser.find_element(By.ID, "files").send_keys(str(good_images[0]))
    _wait(browser, lambda d: store.count(model_version=second_version) == 1)
    # the audit: the odd training image is listed with its thumbnail; taking it out refits on the rest
    # (the images the update added come back from the record) and the page serves that version
    odd = str(tmp_path / "train" / "odd.png")
    flagged = f'#audit .audit-item[data-image="{odd}"]'
    _wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, flagged).get_attribute("data-state") == "pending"
    )
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"{flagged} img").get_attribute("naturalWidth") != "0",
    )
    browser.find_element(By.CSS_SELECTOR, f"{flagged} button.take-out").click()
    _wait(browser, lambda d: "took 1 image(s) out" in d.find_element(By.ID, "audit-result").text)
    third_version = version_id(model)
    assert third_version != second_version
    _wait(browser, lambda d: third_version in d.find_element(By.ID, "model-info").text)
    entry = list_versions(model)[-1]
    assert (
        entry["kind"] == "take-out" and entry["parent"] == second_version and entry["images_removed"] == [odd]
    )
    assert entry["n_images"] == 6 + len(good_images)  # the fit's six and the update's, without odd.png
    _wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, flagged).get_attribute("data-state") == "taken out"
    )
    browser.find_element(By.ID, "files").send_keys(str(good_images[1]))
    _wait(browser, lambda d: store.count(model_version=third_version) == 1)


def test_an_image_set_apart_joins_on_the_second_button(browser, server, tmp_path):
    import cv2
    import numpy as np
    from selenium.webdriver.common.by import By

    model, url = server
    store = RecordStore(Path(f"{model}.records.sqlite"))
    noise = tmp_path / "noise.png"  # like no part at all, yet confirmed good by the operator
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    browser.get(url)
    _wait(
        browser, lambda d: (_answer_key_prompt(d), "version" in d.find_element(By.ID, "model-info").text)[1]
    )
    browser.find_element(By.ID, "files").send_keys(str(noise))
    _wait(browser, lambda d: len(_cards(d)) == 1)
    (row,) = store.query()
    browser.find_element(By.CSS_SELECTOR, f'#records .record[data-id="{row["id"]}"] button.good').click()
    _wait(browser, lambda d: store.get(row["id"])["verdict"] == "good")
    first = version_id(model)
    browser.find_element(By.ID, "update").click()
    _wait(browser, lambda d: d.find_element(By.ID, "update-keep-apart").is_displayed())
    assert "stands apart" in browser.find_element(By.ID, "update-result").text
    assert version_id(model) == first  # nothing joined
    browser.find_element(By.ID, "update-keep-apart").click()
    _wait(browser, lambda d: "updated" in d.find_element(By.ID, "update-result").text)
    assert not browser.find_element(By.ID, "update-keep-apart").is_displayed()
    entry = list_versions(model)[-1]
    assert (
        entry["kind"] == "update" and entry["parent"] == first and "added by the operator" in entry["reason"]
    )
    assert [Path(image).name for image in entry["images_added"]] == [f"record-{row['id']}-noise.png"]
