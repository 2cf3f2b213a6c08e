"""The web console in a real headless Chromium (Debian's, driven by its chromedriver through
Selenium), against ``dicom-anon serve`` and ``dicom-anon console`` as processes, dcmtk storescu as
the clinic PACS and dcmtk storescp as the teaching archive.

An officer tries the rules on an uploaded file, then approves the photos a route held for review
and they arrive at the archive, de-identified; an operator looks at an original (recorded); a
reviewer searches the trail and exports it. Each step's name is in the audit trail.

With CONSOLE_SCREENSHOTS=FOLDER the pages are also saved there as console-*.png (docs/img holds
the ones in docs/console.md).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import yaml
from factories import write
from peers import (
    ROOT,
    TINY_PHI,
    Proc,
    dcmtk,
    dicom_anon,
    events,
    free_port,
    start_storescp,
    storescu,
    tiny_photo,
    wait_until,
)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PASSWORD = "correct horse battery"
EXAMPLES = sorted((ROOT / "examples").glob("*_explicit_le.dcm"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        dcmtk("storescu") is None or dcmtk("storescp") is None, reason="dcmtk is not installed"
    ),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed (./dev.sh installs them)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402


def settings(tmp: Path, scp_port: int, archive_port: int) -> dict:
    return {
        "data_dir": str(tmp / "data"),
        "ingress": {
            "listen": f"127.0.0.1:{scp_port}",
            "allowed_callers": [{"ae_title": "CLINIC", "addresses": ["127.0.0.1"]}],
        },
        "destinations": {"teaching": {"ae_title": "TEACHING", "host": "127.0.0.1", "port": archive_port}},
        # The face replaced with the mouth kept, on the CPU, with a QA limit loose enough that the
        # test does not depend on the pool's people; an intraoral photo has no face and goes on.
        "profiles": {
            "faces": {
                "pixels": {
                    "preserve": ["mouth"],
                    "device": "cpu",
                    "max_identity_similarity": 0.9,
                    "max_candidates": 2,
                    "on_no_face": "forward",
                }
            }
        },
        "routes": [
            {
                "name": "photos",
                "match": {"sop_class": "VLPhotographicImageStorage"},
                "profile": "faces",
                "destinations": "teaching",
                "hold_for_review": True,
            }
        ],
    }


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def browser(tmp_path: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    # The driver is named: Selenium Manager would otherwise look for (and download) one.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.downloads = downloads
    yield driver
    driver.quit()


def shoot(driver, name: str, height: int = 1000, at: str | None = None) -> None:
    """Save the page (from the element with id ``at`` down) when CONSOLE_SCREENSHOTS names a folder."""
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if folder:
        driver.set_window_size(1280, height)
        if at is not None:
            driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, at))
        driver.save_screenshot(str(Path(folder) / f"console-{name}.png"))
        driver.set_window_size(1280, 1000)


def sign_in(driver, base: str, name: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait_until(lambda: "Status" in driver.title, 10, "the status page")


def add_user(config: Path, name: str, role: str) -> None:
    done = subprocess.run(
        [dicom_anon(), "users", "add", name, "--role", role, "--config", str(config)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_officer_reviews_and_releases_reviewer_queries_and_exports(tmp_path: Path, procs, browser) -> None:
    scp_port, archive_port, web_port = free_port(), free_port(), free_port()
    config = tmp_path / "dicom-anon.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, scp_port, archive_port), sort_keys=False))
    data = tmp_path / "data"
    archive = tmp_path / "archive"
    procs.append(start_storescp(tmp_path, archive_port, archive).wait_ready())
    procs.append(
        Proc("service", [dicom_anon(), "serve", "--config", str(config)], tmp_path / "svc.log", scp_port)
    )
    procs[-1].wait_ready(60)
    for name, role in (("olivia", "officer"), ("rita", "reviewer"), ("oscar", "operator")):
        add_user(config, name, role)
    console = Proc(
        "console",
        [dicom_anon(), "console", "--config", str(config), "--listen", f"127.0.0.1:{web_port}"],
        tmp_path / "console.log",
        web_port,
    )
    procs.append(console)
    console.wait_ready(60)
    base = f"http://127.0.0.1:{web_port}"

    burned = write(tiny_photo(9, burned_in="YES"), tmp_path / "burned.dcm")
    sent = storescu(scp_port, [*EXAMPLES, burned])
    assert sent.returncode == 0, sent.stderr
    # The face pipeline on the CPU: models load, then seconds a photo.
    wait_until(lambda: len(events(data, "instance_quarantined")) == len(EXAMPLES) + 1, 240, "held photos")

    # The officer: the rules, tried on a file; then the held photos, approved.
    sign_in(browser, base, "olivia")
    shoot(browser, "status")
    assert "up" in browser.find_element(By.ID, "service").text
    browser.get(f"{base}/rules")
    browser.find_element(By.ID, "dicom").send_keys(str(EXAMPLES[0]))
    browser.find_element(By.ID, "try").click()
    wait_until(lambda: browser.find_elements(By.ID, "trial"), 120, "the rules test")
    trial = browser.find_element(By.ID, "trial").text
    assert "route photos: matches" in trial
    assert "route photos: de-identify (faces: no options; pixels: replace the face" in trial
    assert "-> teaching, held for review" in trial and "frame 1 face 1: new face openpeople-" in trial
    assert "PatientName" in trial and "PatientID" in trial
    assert browser.find_element(By.CSS_SELECTOR, "#trial img.deidentified").get_attribute("naturalWidth")
    shoot(browser, "rules", 2000)
    assert not list(archive.glob("**/*.dcm")), "a rules test sent something"

    # The editor: a mistake is shown on its line and cannot be applied; a good change is written,
    # the service reloads it, and the diff is in the trail under the officer's name.
    original = config.read_text()
    wrong = original.replace("profile: faces", "profile: facse")
    line = next(i for i, text in enumerate(wrong.splitlines(), start=1) if "facse" in text)
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "text"), wrong)
    browser.find_element(By.ID, "apply").click()
    wait_until(lambda: "not applied" in browser.page_source, 20, "the editor's answer")
    problems = browser.find_element(By.ID, "problems").text
    assert f"line {line}: routes.0.profile: unknown profile 'facse'" in problems
    assert config.read_text() == original
    shoot(browser, "rules-editor", 1000, at="problems")
    changed = "# Held for review until the records office approves (docs/console.md).\n" + original
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "text"), changed)
    browser.find_element(By.ID, "apply").click()
    # Not "applied:" in the page: the page before it says "not applied:" (CI caught the race).
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, ".note.ok"), 30, "the editor's answer")
    assert "the service reloaded the settings" in browser.find_element(By.CSS_SELECTOR, ".note.ok").text
    assert config.read_text() == changed
    [change] = events(data, "config_changed")
    assert change["by"] == "olivia" and "+# Held for review" in change["diff"]
    assert events(data, "config_reloaded")[-1]["seq"] > change["seq"]

    browser.get(f"{base}/review")
    shoot(browser, "review", 1500)
    held = browser.find_elements(By.CSS_SELECTOR, ".tile input[type=checkbox]")
    assert len(held) == len(EXAMPLES)
    qa = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".tile .qa")]
    assert any("SFace similarity to the patient" in q for q in qa) and any("no face found" in q for q in qa)
    assert "operators only" in browser.find_element(By.ID, "others").text
    for box in held:
        box.click()
    browser.find_element(By.ID, "approve").click()
    wait_until(
        lambda: browser.page_source.count("approved, sent to teaching") == len(EXAMPLES), 20, "the approvals"
    )
    wait_until(lambda: len(list(archive.glob("**/*.dcm"))) == len(EXAMPLES), 60, "the approved photos")
    for path in archive.glob("**/*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(phi in str(ds) for phi in TINY_PHI) and not str(ds.PatientID).startswith("EX-")
    released = events(data, "quarantine_released")
    assert len(released) == len(EXAMPLES) and {r["by"] for r in released} == {"olivia"}

    # The operator sees the original the profile refused, and that is recorded.
    browser.find_element(By.ID, "sign-out").click()
    wait_until(lambda: "Sign in" in browser.title, 20, "the sign-in page")
    sign_in(browser, base, "oscar")
    browser.get(f"{base}/review")
    browser.find_element(By.CSS_SELECTOR, "a.original").click()
    width = "return document.images.length && document.images[0].naturalWidth"
    wait_until(lambda: browser.execute_script(width) == 4, 20, "the original (4 x 4 pixels)")
    shown = events(data, "original_shown")
    assert [(r["by"], r["shown"]) for r in shown] == [("oscar", True)]

    # The reviewer: who approved what, the chain, an export.
    browser.get(f"{base}/login")
    browser.delete_all_cookies()
    sign_in(browser, base, "rita")
    browser.get(f"{base}/audit")
    browser.find_element(By.ID, "event").send_keys("quarantine_released")
    browser.find_element(By.ID, "search").click()
    wait_until(lambda: browser.find_elements(By.ID, "records"), 20, "the search")
    assert "chain" in browser.find_element(By.ID, "chain").text.lower()
    rows = browser.find_elements(By.CSS_SELECTOR, "#records tr")[1:]
    assert len(rows) == len(EXAMPLES) and all("by olivia" in r.text for r in rows)
    shoot(browser, "audit", 1100)
    browser.find_element(By.ID, "export-csv").click()
    wait_until(lambda: list(browser.downloads.glob("*.csv")), 20, "the CSV export")
    exported = list(csv.DictReader(io.StringIO(next(browser.downloads.glob("*.csv")).read_text())))
    assert [r["event"] for r in exported] == ["quarantine_released"] * len(EXAMPLES)
    reads = [r for r in events(data, "audit_read") if r.get("by") == "rita"]
    exports = [r for r in events(data, "audit_exported") if r.get("by") == "rita"]
    assert reads[-1]["filters"] == {"events": ["quarantine_released"]} and reads[-1]["records"] == len(
        EXAMPLES
    )
    assert exports and exports[-1]["format"] == "csv"
