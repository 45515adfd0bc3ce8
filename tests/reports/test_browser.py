"""Open the reports in headless Chromium (Debian's package) through Selenium and the system driver.

Skipped, with the reason, when ``/usr/bin/chromium``, ``/usr/bin/chromedriver`` or selenium is
missing. Screenshots are saved under the pytest tmp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)", allow_module_level=True
    )
if not CHROMEDRIVER.exists():
    pytest.skip(
        f"{CHROMEDRIVER} is absent (apt-get install chromium-driver)", allow_module_level=True
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium never looks for (or downloads) a driver
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, page: Path) -> None:
    driver.get_log("browser")  # drop messages from earlier pages
    driver.get(page.resolve().as_uri())
    driver.execute_script(
        "return Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
    )


def _check_page(driver, page: Path, sections: list[str], shot: Path) -> None:
    _open(driver, page)
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images, f"{page.name}: no images"
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"{page.name}: images did not load: {broken}"
    for sec in sections:
        assert driver.find_elements("css selector", f"section#{sec}"), f"{page.name}: no #{sec}"
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"{page.name}: console errors: {errors}"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


def test_subject_report_in_browser(browser, built, tmp_path):
    from pipeline.reports.subject import SECTIONS

    _check_page(browser, built.subject, SECTIONS, tmp_path / "subject.png")
    box = browser.find_element("id", "reg-flicker")
    subject_img = box.find_element("css selector", "img.flicker-subject")
    template_img = box.find_element("css selector", "img.flicker-template")
    assert box.get_attribute("data-show") == "subject"
    assert subject_img.is_displayed() and not template_img.is_displayed()
    button = browser.find_element("id", "reg-flicker-toggle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    assert box.get_attribute("data-show") == "template"
    assert template_img.is_displayed() and not subject_img.is_displayed()
    assert "template" in browser.find_element("id", "reg-flicker-label").text
    button.click()
    assert box.get_attribute("data-show") == "subject" and subject_img.is_displayed()
    browser.save_screenshot(str(tmp_path / "subject_after_toggle.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def test_group_report_in_browser(browser, built, tmp_path):
    from pipeline.reports.group import SECTIONS

    _check_page(browser, built.group, SECTIONS, tmp_path / "group.png")

    def first_column() -> list[str]:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#participants-table tbody tr'))"
            ".map(r => r.cells[0].textContent.trim())"
        )

    assert first_column() == ["sub-01", "sub-02", "sub-03", "sub-04"]
    header = browser.find_element("css selector", "#participants-table th")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert first_column() == ["sub-04", "sub-03", "sub-02", "sub-01"]
