"""The leaders' dashboard in a real browser (Debian's Chromium through Playwright): the leader logs in,
sees the headline figures and the SVG charts drawn, filters by pod, and downloads a CSV."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from tests.controlroom.test_metrics import NOW, build_fleet
from tests.personas import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_the_leader_sees_the_figures_and_the_charts_and_filters_by_pod(live_server, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    build_fleet()
    ARTIFACTS.mkdir(exist_ok=True)
    # the fixture fleet lives in March 2025: the server (a thread of this process) shares this "now"
    with mock.patch("django.utils.timezone.now", return_value=NOW), sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{live_server.url}/login/?next=/dashboard%3Fwindow%3D30d")
            page.fill("input[name=username]", "leo")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/dashboard?window=30d")

            yield_card = page.locator("article.kpi[data-metric=acceptance_yield]")
            expect(yield_card).to_be_visible()
            expect(yield_card.locator(".value")).to_have_text("67.7%")  # 21/31
            expect(page.locator("article.kpi[data-metric=escalation_response]")).to_have_class("kpi small")

            charts = page.locator("svg.chart")
            assert charts.count() >= 13
            for index in range(charts.count()):
                chart = charts.nth(index)
                chart.scroll_into_view_if_needed()
                box = chart.bounding_box()
                assert box and box["width"] > 150 and box["height"] > 60, f"chart {index} is not drawn: {box}"
            # the marks are really painted: bars with height, lines with points
            bars = page.locator("figure[data-chart=throughput] rect")
            assert bars.count() == 8  # one per week
            assert max(bars.nth(i).bounding_box()["height"] for i in range(bars.count())) > 20
            assert page.locator("figure[data-chart=revert_rate] circle").count() >= 4
            assert page.locator("figure[data-chart=pod_yield] line.whisker").count() == 3
            page.locator("h1").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.locator("section[aria-labelledby=headline-title]").screenshot(
                path=str(ARTIFACTS / "dashboard-headline.png")
            )
            page.locator("section[aria-labelledby=pods-title]").screenshot(path=str(ARTIFACTS / "dashboard-pods.png"))

            # hovering a mark tells its value and whether it rests on too few cases
            title = page.locator("figure[data-chart=pod_yield] rect title").first.text_content()
            assert title == "Alpha: 63.6%, n=11 (n = 11 < 20: too few to rely on)"

            page.select_option("select[name=pod]", "alpha")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**pod=alpha**")
            expect(page.locator("article.kpi[data-metric=acceptance_yield] .value")).to_have_text("63.6%")  # 7/11
            expect(page.locator("table[data-table=pods] tbody tr")).to_have_count(1)

            with page.expect_download() as download:
                page.click("a[data-csv=pods]")
            text = Path(download.value.path()).read_text()
            assert text.splitlines()[0].startswith("group,key,label,window_start,window_end,accepted_throughput")
            assert text.splitlines()[1].startswith("pod,alpha,Alpha,")

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{live_server.url}/dashboard?window=30d")
            expect(phone.locator("article.kpi[data-metric=acceptance_yield]")).to_be_visible()
            phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        finally:
            browser.close()
