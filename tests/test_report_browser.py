"""The HTML report in a real browser: headless Chromium (Debian's package) opens it, every figure
decodes and the page logs no error. Skipped when Chromium is not installed."""

from __future__ import annotations

import struct

import pytest
from browser import IMAGES_JS, Chromium, example_report, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1200, height=900) as chromium:
        yield chromium


def test_report_figures_decode_and_the_page_logs_no_error(browser, tmp_path):
    report = example_report(tmp_path / "report.html")
    browser.open(report.as_uri())
    images = browser.evaluate(IMAGES_JS)
    assert len(images) == 1 + 4  # the risk-coverage overlay, then one figure row per method
    for image in images:
        assert image["ok"] and image["width"] > 0 and image["height"] > 0, image
    assert browser.errors() == []
    title = browser.evaluate("document.title")
    assert title == "certa calibration report (synthetic example)"
    rows = browser.evaluate("document.querySelectorAll('table tbody tr').length")
    assert rows >= 4  # one metric row per method

    png = browser.screenshot(tmp_path / "report.png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width == 1200 and height > 900  # the whole page, taller than one screen


def test_the_checks_catch_a_broken_image_and_a_script_error(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><title>broken</title>'
                    '<img alt="good" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7">'
                    '<img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA">'
                    '<img alt="missing" src="missing.png">'
                    '<script>console.error("drawn wrong"); undefined_function();</script>')
    browser.open(page.as_uri())
    images = {i["alt"]: i for i in browser.evaluate(IMAGES_JS)}
    assert images["good"]["ok"] and images["good"]["width"] == 1
    assert not images["corrupt"]["ok"] and images["corrupt"]["width"] == 0
    assert not images["missing"]["ok"] and images["missing"]["width"] == 0
    errors = " | ".join(browser.errors())
    assert "console: drawn wrong" in errors
    assert "undefined_function" in errors
    assert "missing.png" in errors  # the failed load is logged by the network layer
