"""The diff page of a 5,000-line change in a real browser (Chromium via Playwright): the page
opens with the file list and the first small files; the other files load one by one as they
are scrolled into view."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.personas import PASSWORD
from tests.reviews.test_review_decisions import git, make_session

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

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BIG_FILES = 10
BIG_LINES = 499


def _big_change() -> dict[str, str]:
    files = {
        "a_config.py": "DEBUG = False\nRETRIES = 3\nNAME = 'shop'\nTIMEOUT_S = 5\nREGION = 'eu'\n",
        "b_notes.md": "# Notes\n\n- one\n- two\n- three\n",
    }
    for i in range(BIG_FILES):
        body = [f'"""Generated module {i}."""', ""]
        body += [
            f"def function_{i}_{n}(value: int) -> int:\n    return value * {n}  # step {n}"
            for n in range((BIG_LINES - 2) // 2)
        ]
        text = "\n".join(body) + "\n"
        lines = text.count("\n")
        text += "".join(f"CONSTANT_{i}_{k} = {k}\n" for k in range(BIG_LINES - lines))
        files[f"pkg/module_{i:02d}.py"] = text
    return files


def _login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def test_a_five_thousand_line_diff_opens_without_loading_every_file_and_loads_them_on_scroll(
    live_server, fleet, worktrees_dir
):
    from playwright.sync_api import sync_playwright

    files = _big_change()
    assert sum(text.count("\n") for text in files.values()) == 5000
    fleet.alpha.review_wip_limit = 3
    fleet.alpha.save()
    session = make_session(fleet, name="Generate the pricing modules", files=files)
    make_session(
        fleet,
        name="Touch the CI workflow",
        files={".github/workflows/ci.yml": "on: push\n"},
        hours_ago=9,
        sto=fleet.member,
    )
    url = f"{live_server.url}/reviews/{session.pk}/"
    ARTIFACTS.mkdir(exist_ok=True)
    file_requests: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            _login(page, live_server.url, "sam")

            raw = page.request.get(url).text()  # the HTML as served, before any script ran
            assert raw.count('data-loaded="true"') == 2 and raw.count('data-loaded="false"') == BIG_FILES
            assert "function_0_1" not in raw and "function_9_1" not in raw
            assert len(raw) < 200_000

            page.on("request", lambda r: file_requests.append(r.url) if "/file?" in r.url else None)
            page.goto(url)
            page.wait_for_load_state("networkidle")
            loaded = page.locator('section.file[data-loaded="true"]').count()
            assert 2 <= loaded < 2 + BIG_FILES, f"{loaded} files loaded at once"
            assert len(file_requests) < BIG_FILES
            page.screenshot(path=str(ARTIFACTS / "diff.png"))

            for i in range(BIG_FILES):
                selector = f'section.file[data-path="pkg/module_{i:02d}.py"]'
                loaded = selector + '[data-loaded="true"]'
                if not page.locator(loaded).count():
                    try:
                        page.locator(selector).first.scroll_into_view_if_needed(timeout=10000)
                    except PlaywrightError:
                        pass  # htmx swapped the placeholder for the loaded file while we scrolled to it
                page.wait_for_selector(loaded, timeout=15000)
            assert page.locator('section.file[data-loaded="true"]').count() == 2 + BIG_FILES
            assert len(set(file_requests)) == BIG_FILES
            last = page.locator('section.file[data-path="pkg/module_09.py"]')
            assert last.locator("tr.add").count() == BIG_LINES
            assert last.locator("span.k", has_text="def").count() > 0  # coloured by Pygments
            last.locator("tr.add").nth(10).scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "diff-scrolled.png"))

            page.goto(f"{live_server.url}/reviews/")
            page.wait_for_load_state("networkidle")
            assert page.locator("table.queue tbody tr").count() == 2
            page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)

            # a conflict: approving answers with the conflicting files, nothing merged
            (Path(fleet.repo.path) / "a_config.py").write_text("DEBUG = True\n")
            git(fleet.repo.path, "add", "a_config.py")
            git(fleet.repo.path, "-c", "user.name=H", "-c", "user.email=h@example.com", "commit", "-qm", "human config")
            page.goto(url)
            page.click("button.approve")
            page.wait_for_selector("ul.conflicts")
            assert page.locator("ul.conflicts li").all_inner_texts() == ["a_config.py"]
            page.screenshot(path=str(ARTIFACTS / "review-conflict.png"))
        finally:
            browser.close()
