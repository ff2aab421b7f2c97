"""The real thing: `harness dashboard` served on loopback and loaded in headless Chromium."""

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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.data import curves, data_url, load_results, thumbnail
from harness.results.stats import leaderboard
from support.results_fixture import CURVE_STEPS, METHODS, SUITES, add_curve_runs, build_results_dir

CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_chromium() -> None:
    if CHROMEDRIVER.exists() and shutil.which("chromium"):
        return
    if os.environ.get("CI"):
        pytest.fail("chromium + chromium-driver missing on CI: .ci/install-browser.sh should have installed them")
    pytest.skip("Debian's chromium + chromium-driver are not installed (run .ci/install-browser.sh)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"`harness dashboard` exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer on {url} within {timeout:.0f} s")


# The data grid draws on a canvas; its cells are mirrored in an accessible table (role=gridcell),
# which is what a screen reader, and these tests, read.
READ_GRID = (
    "const grid = document.querySelectorAll(\"[data-testid='stDataFrame']\")[arguments[0]];"
    "return grid ? Array.from(grid.querySelectorAll('[role=gridcell]'), c => c.textContent) : [];"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """`harness dashboard` on the results fixture, and headless Chromium on it; on teardown, the server
    must stop with `harness dashboard` (SIGTERM passed on): nothing may keep serving the port."""
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp_path = tmp_path_factory.mktemp("browser")
    results = add_curve_runs(build_results_dir(tmp_path / "results"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    harness = Path(sys.executable).with_name("harness")
    log = open(tmp_path / "dashboard.log", "w")
    server = subprocess.Popen(
        [str(harness), "dashboard", "--out", str(results), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1800",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or ""
    driver = None
    try:
        _wait_for_http(url, server, timeout=60)
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.get(url)
        yield driver, results
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the Streamlit server outlived `harness dashboard`"


def _wait(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"dashboard-{what}.png"))


def _open_page(driver, page: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//*[@data-testid='stSidebar']//label[.//p[normalize-space()='{page}']]").click()
    _wait(
        driver,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "[data-testid='stMain'] h2").text.startswith(page)
            and not d.find_elements(By.CSS_SELECTOR, "[data-testid='stSkeleton']")
        ),
        page.lower().replace(" ", "-"),
    )


# Vega draws the page's chart as SVG; each mark carries an aria-label naming its fields and values.
READ_MARKS = (
    "const chart = document.querySelector(\"[data-testid='stVegaLiteChart'] svg\");"
    "return chart ? Array.from(chart.querySelectorAll(arguments[0]), m => m.getAttribute(arguments[1])) : [];"
)


def _marks(driver, selector: str, attribute: str) -> list[str]:
    return [value for value in driver.execute_script(READ_MARKS, selector, attribute) if value]


def _chart_screenshot(driver) -> Image.Image:
    from selenium.webdriver.common.by import By

    chart = driver.find_element(By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']")
    return Image.open(io.BytesIO(chart.screenshot_as_png)).convert("RGB")


def _shows_colour(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 12) -> bool:
    pixels = np.asarray(image, dtype=int)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).any())


def test_dashboard_shows_the_leaderboard_in_chromium(browser) -> None:
    from selenium.webdriver.common.by import By

    driver, _ = browser

    def leaderboard_with_every_method(d) -> list[str] | None:
        cells = d.execute_script(READ_GRID, 0)
        return cells if set(METHODS) <= set(cells) else None

    cells = _wait(driver, leaderboard_with_every_method, "leaderboard")
    assert "Leaderboard" in driver.find_element(By.CSS_SELECTOR, "[data-testid='stMain'] h2").text
    # The first column is the method; every stored method is a row, each once.
    assert sorted(c for c in cells if c in METHODS) == sorted(METHODS)
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def test_categories_page_in_chromium(browser) -> None:
    from selenium.webdriver.common.by import By

    driver, results = browser
    _open_page(driver, "Categories")
    # A row per category and method, with the category's prompt count.
    expected = {"shapes", "animals", *METHODS}
    cells = _wait(
        driver, lambda d: (lambda c: c if expected <= set(c) else None)(d.execute_script(READ_GRID, 0)), "categories"
    )
    assert cells.count("shapes") == cells.count("animals") == len(METHODS)
    # The Δ chart: a point per category and trained method, at the statistics' Δ, with the CI's verdict.
    points = _wait(
        driver,
        lambda d: [m for m in _marks(d, "[aria-label]", "aria-label") if "verdict: " in m] or None,
        "categories-chart",
    )
    scores = load_results(results).scores
    scores = scores[(scores["suite"] == "toy-seen") & (scores["metric"] == "aesthetic")]
    expected_points = set()
    for row in leaderboard(scores, by=["category"]):
        if row["method"] != "base":
            expected_points.add((f"{row['category']} (2 prompts)", row["method"], f"{row['delta_vs_base']:+.4g}"))
    drawn = {
        (re.search(r"; y: ([^;]+)", p)[1], re.search(r"facet: ([^;]+)", p)[1], re.search(r"Δ: ([^;]+)", p)[1])
        for p in points
    }
    assert drawn == expected_points
    assert all("verdict: better than base" in p for p in points)
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def test_image_grid_page_in_chromium(browser) -> None:
    from selenium.webdriver.common.by import By

    driver, results = browser
    _open_page(driver, "Image grid")
    # The first suite's prompts × the methods, image 0 of each: the stored images, as thumbnails.
    images = load_results(results).images
    shown = images[(images["suite"] == "toy-seen") & (images["image_index"] == 0)]
    thumbnails = sorted(data_url(thumbnail(results / path, 128)) for path in shown["path"])
    assert len(thumbnails) == len(METHODS) * len(SUITES["toy-seen"][1])
    hrefs = _wait(
        driver, lambda d: (lambda h: h if len(h) == len(thumbnails) else None)(_marks(d, "image", "href")), "image-grid"
    )
    assert sorted(hrefs) == thumbnails
    # ... and drawn: each fixture image is one plain colour, and every one of them is on the screen.
    colours = {Image.open(results / path).getpixel((0, 0)) for path in shown["path"]}
    _wait(driver, lambda d: all(_shows_colour(_chart_screenshot(d), c) for c in colours), "image-grid-drawn")
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def test_the_toolbar_is_in_viewer_mode_without_a_deploy_button(browser) -> None:
    """A read-only local tool: Streamlit's toolbar shows no developer items, "Deploy" among them."""
    from selenium.webdriver.common.by import By

    driver, _ = browser
    # The viewer's menu stays: once it is drawn, the toolbar is.
    _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stToolbar'] [data-testid='stMainMenu']"),
        "toolbar",
    )
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stAppDeployButton']")
    assert not driver.find_elements(By.XPATH, "//button[normalize-space()='Deploy']")


def test_curves_page_in_chromium(browser) -> None:
    """A point per evaluated step at its mean, the last one dpo's leaderboard mean."""
    from selenium.webdriver.common.by import By

    driver, results = browser
    _open_page(driver, "Curves")
    # The points' labels (the CI bands' carry no mean).
    points = _wait(
        driver,
        lambda d: [m for m in _marks(d, "[aria-label]", "aria-label") if "step: " in m and "mean: " in m] or None,
        "curves",
    )
    loaded = load_results(results)
    expected = curves(loaded)
    expected = expected[(expected["metric"] == "aesthetic") & (expected["suite"] == "toy-seen")]
    drawn = dict(
        sorted((int(re.search(r"step: (\d+)", p)[1]), float(re.search(r"mean: ([^;]+)", p)[1])) for p in points)
    )
    assert list(drawn) == sorted(CURVE_STEPS) == expected["step"].tolist()
    assert list(drawn.values()) == pytest.approx(expected["mean"].tolist(), rel=1e-9)
    final = leaderboard(loaded.scores)
    dpo = next(r for r in final if (r["method"], r["suite"], r["metric"]) == ("dpo", "toy-seen", "aesthetic"))
    assert expected["mean"].iloc[-1] == dpo["mean"]
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def test_run_details_in_chromium_show_a_missing_figure_as_a_dash(browser) -> None:
    """Each run's own figures; what a run lacks (here CPU- and GPU-hours, peak memory) reads '–', never 'None'."""
    driver, _ = browser
    _open_page(driver, "Run details")
    cells = _wait(
        driver,
        lambda d: (lambda c: c if set(METHODS) <= set(c) else None)(d.execute_script(READ_GRID, 0)),
        "run-details",
    )
    rows = {row[1]: row for row in (cells[i : i + 11] for i in range(0, len(cells), 11))}
    assert set(rows) == set(METHODS) | {f"dpo@{step}" for step in CURVE_STEPS}  # --eval-every's runs are runs too
    for method in METHODS:  # run, method, status, started, ended, wall, CPU-h, GPU-h, UNet evals, peak memory, data
        assert rows[method][5:] == ["12.5", "–", "–", "4", "–", "–"]
    assert rows["dpo@1"][5:] == ["–"] * 6  # the fixture records no compute (nor data summary) for these
