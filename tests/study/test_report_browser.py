"""report.html in a real browser: Debian's headless Chromium at 1400 x 900, driven by Selenium
through the system chromedriver (`make test` installs both). The answer and the headline figure
must lie within the first screen, every figure must have loaded with its caption, the table of
contents must reach every section, and every folded `<details>` block must open onto visible
content. A screenshot of the first screen is kept under test-artifacts/."""

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(
    os.environ.get("HUSAI_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
WIDTH, HEIGHT = 1400, 900


@pytest.fixture(scope="module")
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, (
        "Debian's chromium and chromium-driver are needed: apt-get install -y chromium "
        "chromium-driver (make test installs them)"
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    d = webdriver.Chrome(service=Service(driver), options=opts)
    # the viewport itself 1400 x 900 (the window's frame would otherwise take part of it)
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    yield d
    d.quit()


def _box(d, selector: str) -> dict:
    return d.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return null;"
        "const r = e.getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height};",
        selector,
    )


@pytest.mark.slow
def test_the_report_reads_answer_first_in_chromium(finished_study, chromium):
    _, out, _, _ = finished_study
    d = chromium
    d.get((out / "report.html").resolve().as_uri())
    d.execute_script("window.scrollTo(0, 0)")
    view = d.execute_script("return {w: window.innerWidth, h: window.innerHeight}")
    assert view == {"w": WIDTH, "h": HEIGHT}, view
    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "report_first_screen.png"))

    # the answer (its title and every sentence) and the whole headline figure on the first screen
    answer, fig = _box(d, "#answer"), _box(d, "#fig-headline img")
    assert answer and fig, "no answer section or no headline figure"
    assert answer["top"] >= 0 and answer["bottom"] <= view["h"], (answer, view)
    assert fig["top"] >= 0 and fig["bottom"] <= view["h"] and fig["height"] > 200, (fig, view)
    assert fig["right"] <= view["w"]
    items = d.execute_script("return document.querySelectorAll('#answer ol li').length")
    assert 3 <= items <= 6
    assert d.execute_script(
        "return document.querySelector('#answer').textContent.indexOf('[') >= 0"
    )
    # every figure loaded and has a caption; every answer link points at a figure of the page
    figs = d.execute_script(
        "return Array.from(document.querySelectorAll('figure')).map(f => ({id: f.id,"
        " loaded: f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0,"
        " caption: (f.querySelector('figcaption') || {}).textContent || ''}))"
    )
    assert len(figs) >= 5 and all(f["loaded"] for f in figs), figs
    assert all("Look for" in f["caption"] for f in figs), [f["id"] for f in figs]
    ids = {f["id"] for f in figs}
    links = d.execute_script(
        "return Array.from(document.querySelectorAll('#answer a')).map(a => a.getAttribute('href'))"
    )
    assert links and all(h.startswith("#") and h[1:] in ids for h in links), (links, ids)
    # the table of contents names every section and each target exists
    toc = d.execute_script(
        "return Array.from(document.querySelectorAll('nav.toc a[href^=\"#\"]'))"
        ".map(a => !!document.getElementById(a.getAttribute('href').slice(1)))"
    )
    assert len(toc) >= 6 and all(toc)

    # every <details> starts folded (its content not rendered) and opens onto visible content
    n = d.execute_script("return document.querySelectorAll('details').length")
    assert n >= 5  # each cell's reading and the long tables
    opened = d.execute_script(
        "return Array.from(document.querySelectorAll('details')).map(e => {"
        "  const kids = Array.from(e.children).filter(c => c.tagName !== 'SUMMARY');"
        "  const was = e.open, before = kids.some(c => c.checkVisibility());"
        "  e.open = true;"
        "  const after = kids.filter(c => c.checkVisibility())"
        "    .reduce((s, c) => s + c.getBoundingClientRect().height, 0);"
        "  return {summary: e.querySelector('summary').textContent, kids: kids.length,"
        "          was: was, before: before, after: after,"
        "          visible: kids.every(c => c.checkVisibility())}; })"
    )
    for h in opened:
        assert h["kids"] >= 1 and not h["was"] and not h["before"], h
        assert h["visible"] and h["after"] > 0, h
    d.save_screenshot(str(ARTIFACTS / "report_details_open.png"))
