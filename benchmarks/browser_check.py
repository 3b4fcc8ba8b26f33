"""Drive the `spadim serve` page in headless Chromium, as a user would, and save docs/serve.png.

    .venv/bin/pip install selenium            # Selenium from PyPI; the browser is Debian's, never downloaded
    apt-get install -y chromium chromium-driver
    .venv/bin/python -m benchmarks.browser_check [--model M.pt] [--random]

Starts the real CLI server (`spadim serve MODEL --port 0`, the OS picks the port) on 127.0.0.1, opens
the page, uploads a defective and a good image, waits for the verdict and the overlay, drags the
region-level slider to both ends (the verdict must follow the region score), returns to the
calibrated level and takes the screenshot. Exit 0 only if every check held.

The model: --model if given; else PatchCore (layers 2,3) fitted on ../shared hazelnut with the real resnet50_caffe
ImageNet weights when they are there (about 2 minutes once, then reused from runs/browser-check/);
else, or with --random, a tiny model with RANDOM UNTRAINED weights on the generated toy data, whose
scores mean nothing (the page says so in its warning banner).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPADIM = [sys.executable, "-c", "import sys; from spadim.cli import main; sys.exit(main())"]
SHARED = ROOT.parent / "shared"
HAZELNUT = SHARED / "data" / "mvtec_ad_subset" / "hazelnut"
WEIGHTS = SHARED / "weights"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Offline and quiet: no sign-in, sync, component or safe-browsing traffic, no QUIC.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,980",
    "--hide-scrollbars",
]


def say(message: str) -> None:
    print(f"browser-check: {message}", flush=True)


def run_spadim(*args) -> None:
    subprocess.run([*SPADIM, *map(str, args)], check=True, cwd=ROOT)


def real_weights_found() -> bool:
    found = subprocess.run(
        [*SPADIM, "weights", "--first", "resnet50_caffe", "--weights", str(WEIGHTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return found.returncode == 0 and HAZELNUT.is_dir()


def prepare(args, scratch: Path) -> tuple[Path, list[Path], list[str]]:
    """(model file, images to upload: a defective one first, extra serve flags)."""
    if args.model:
        images = [HAZELNUT / "test" / "crack" / "000.png", HAZELNUT / "test" / "good" / "000.png"]
        return args.model, args.images or images, ["--weights", str(WEIGHTS)] if WEIGHTS.is_dir() else []
    if not args.random and real_weights_found():
        model = ROOT / "runs" / "browser-check" / "hazelnut.pt"
        if not model.is_file():
            say("fitting PatchCore on hazelnut with ImageNet resnet50_caffe weights (about a minute, once)")
            run_spadim(
                "fit",
                HAZELNUT,
                "--method",
                "patchcore",
                "--layers",
                "2,3",
                "--arch",
                "resnet50_caffe",
                "--weights",
                WEIGHTS,
                "--out",
                model,
            )
        images = [HAZELNUT / "test" / "crack" / "000.png", HAZELNUT / "test" / "good" / "000.png"]
        return model, args.images or images, ["--weights", str(WEIGHTS)]
    say("RANDOM UNTRAINED weights on generated toy data: this checks the page, not detection quality")
    run_spadim("make-data", scratch / "toy")
    model = scratch / "nut.pt"
    run_spadim(
        "fit",
        scratch / "toy" / "nut",
        "--out",
        model,
        "--arch",
        "resnet18",
        "--weights",
        "random",
        "--resize",
        "146",
        "--crop",
        "128",
    )
    test = scratch / "toy" / "nut" / "test"
    images = [test / "chip" / "000.png", test / "good" / "000.png"]
    return model, args.images or images, []


def named_by_folder(images: list[Path], folder: Path) -> list[Path]:
    """Copies named crack_000.png, good_000.png, ...: MVTec names repeat across folders, and the
    browser uploads only the file name."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for image in images:
        copies.append(folder / f"{image.resolve().parent.name}_{image.name}")
        shutil.copyfile(image, copies[-1])
    return copies


def start_server(model: Path, flags: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    """`spadim serve` on an OS-picked port; its URL is read from the line it prints when ready."""
    server = subprocess.Popen(
        [*SPADIM, "serve", str(model), "--host", "127.0.0.1", "--port", "0", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    found = threading.Event()

    def read():
        for line in server.stdout:
            log.append(line.rstrip())
            if "serving" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 300
    while not found.is_set():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start:\n" + "\n".join(log))
        time.sleep(0.2)
    url = re.search(r"http://[\d.]+:\d+/", next(line for line in log if "serving" in line)).group(0)
    return server, url, log


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, checked at the end
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def drive(driver, url: str, images: list[Path], screenshot: Path) -> list[str]:
    """The user's path through the page; returns what it saw, raises on the first broken promise."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120, poll_frequency=0.2)
    text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
    seen = []
    driver.get(url)
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#model option") and "loading" not in text("model-info"),
        "the model list never loaded",
    )
    seen.append(f"model: {text('model-info')}")

    started = time.perf_counter()
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p.resolve()) for p in images))
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#list .badge.wait")) == 0
            and len(d.find_elements(By.CSS_SELECTOR, "#list .badge")) == len(images)
        ),
        "the uploads were not all judged",
    )
    seen.append(f"{len(images)} image(s) judged in {time.perf_counter() - started:.2f} s (page round trips)")
    errors = driver.find_elements(By.CSS_SELECTOR, "#list .badge.error")
    assert not errors, f"an upload was refused: {text('error')}"

    def verdict() -> tuple[str, float, float, float]:
        overlay = driver.find_element(By.ID, "overlay")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,"), "no overlay picture"
        width = "return arguments[0].naturalWidth"
        assert driver.execute_script(width, overlay) > 0, "the overlay does not decode"
        mask = driver.find_element(By.ID, "mask")
        assert driver.execute_script(width, mask) > 0, "the mask does not decode"
        return (
            text("decision"),
            float(text("region-score")),
            float(text("score")),
            float(text("threshold-value")),
        )

    decision, score, image_score, threshold = verdict()
    assert decision in ("OK", "DEFECT"), f"decision text {decision!r}"
    assert decision == ("DEFECT" if score > threshold else "OK"), (decision, score, threshold)
    seen.append(
        f"{images[0].name}: {decision}, region score {score:g}, image score {image_score:g}, "
        f"region level {threshold:g}"
    )

    slider = driver.find_element(By.ID, "threshold")
    for key, expected in ((Keys.END, "OK"), (Keys.HOME, "DEFECT")):
        before = driver.find_element(By.ID, "overlay").get_attribute("src")
        slider.send_keys(key)  # a real key press: the page gets its input and change events
        wait.until(
            lambda d: text("decision") == expected and not d.find_elements(By.CSS_SELECTOR, ".busy"),
            f"the decision did not become {expected} after the slider moved",
        )
        moved = verdict()
        assert moved[0] == ("DEFECT" if moved[1] > moved[3] else "OK"), moved
        assert abs(moved[1] - score) <= 1e-3 * abs(score), "the score changed with the threshold"
        assert driver.find_element(By.ID, "reset").is_enabled(), "reset should offer the calibrated one"
        changed = driver.find_element(By.ID, "overlay").get_attribute("src") != before
        seen.append(
            f"slider {'end' if key == Keys.END else 'home'}: {moved[0]} at threshold {moved[3]:g}"
            f" (overlay redrawn: {changed})"
        )

    driver.find_element(By.ID, "reset").click()
    wait.until(
        lambda d: (
            not d.find_element(By.ID, "reset").is_enabled() and not d.find_elements(By.CSS_SELECTOR, ".busy")
        ),
        "reset did not return to the calibration",
    )
    back = verdict()
    assert back[0] == decision, (back, decision)
    assert abs(back[3] - threshold) <= 1e-3 * abs(threshold), (back, threshold)
    seen.append(f"reset: {back[0]} at the calibrated threshold {back[3]:g}")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    seen.append(f"screenshot: {screenshot}")
    review = screenshot.with_name(screenshot.stem + "-review.png")
    driver.execute_script("document.getElementById('line').scrollIntoView()")
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#line img"), "the record shows no overlay"
    )
    driver.save_screenshot(str(review))
    seen.append(f"screenshot of the record: {review}")
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="serve this model file instead of fitting one")
    ap.add_argument("--random", action="store_true", help="tiny random-weights model on toy data (fast)")
    ap.add_argument("--images", type=Path, nargs="+", default=None, help="images to upload (defective first)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = ap.parse_args()
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).exists():
            say(f"{tool} is missing: apt-get install -y chromium chromium-driver")
            return 2
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or driver
    with tempfile.TemporaryDirectory(prefix="spadim-browser-") as scratch:
        scratch = Path(scratch)
        model, images, flags = prepare(args, scratch)
        images = named_by_folder(images, scratch / "uploads")
        # a fresh record each run: the page's record and watch show this run's decisions only
        server, url, log = start_server(model, [*flags, "--record", str(scratch / "record.sqlite")])
        driver = None
        try:
            say(f"server at {url}")
            driver = browser(scratch / "profile")
            for line in drive(driver, url, images, args.out):
                say(line)
            console = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not console, f"errors in the page's console: {console}"
        except Exception as exc:  # one line per failure, the server's log for context
            say(f"FAILED: {type(exc).__name__}: {exc}")
            say("server log:\n" + "\n".join(log[-20:]))
            if driver is not None:
                failure = ROOT / "runs" / "browser-check" / "failure.png"
                failure.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(failure))
                say(f"what the browser showed: {failure}")
            return 1
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(30)
    server_errors = [line for line in log if " 500 " in line or "Traceback" in line]
    if server_errors:
        say("FAILED: server errors:\n" + "\n".join(server_errors))
        return 1
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
