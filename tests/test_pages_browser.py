"""The web pages in a real browser (issue 14): Debian's Chromium, driven by Playwright's
Python client against `stageflow serve` on loopback.

One world for the file: the dev server, a control worker, an agent and the API as
processes, and one release whose `staging` and `prod` stages both wait for alice's
approval. alice signs in with her token, finds the approval on the dashboard,
approves staging from the inbox with the keyboard, watches staging go to succeeded
on the release page without a reload, rejects prod there with a comment, and finds
both in the audit trail; victor, a viewer, sees the same pages without a button; a
form posted without the session's CSRF token is refused and kept as refused.

Chromium is Debian's (`make test` installs the `chromium` package when it is missing),
never a download: without /usr/bin/chromium the tests fail saying so; they are never
skipped. Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from activities import record
from activities.record import open_database
from activities.record.identity import grant
from starter.releases import ReleaseRef
from tests.conftest import ROOT, Stack, wait_for
from worker.settings import Settings

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("STAGEFLOW_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "docs" / "screenshots"
# As the machine's own probe runs it: no sandbox as root, nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PIPELINE = """
    name: {name}
    description: the shop, deployed by the pages' test
    stages:
      - name: staging
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks: [{{name: ship, script: "echo staging shipped; sleep 6; echo staging done"}}]
      - name: prod
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks: [{{name: ship, script: "echo prod shipped"}}]
"""


def _need_browser() -> None:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        )


@dataclass
class World:
    stack: Stack
    url: str
    ref: ReleaseRef
    tokens: dict[str, str]
    path: Path

    @property
    def release_path(self) -> str:
        return f"/releases/{self.ref.pipeline}/{self.ref.number}"


@pytest.fixture(scope="module")
async def world(
    client: Client, dev_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    _need_browser()
    stack = Stack(client=client, address=dev_server, root=tmp_path_factory.mktemp("pages"))
    try:
        await stack.start_worker()
        await stack.start_agent("a1")
        url = stack.api()
        tokens = {name: stack.token(name, admin=False) for name in ("alice", "victor", "rhea")}
        path = stack.write_pipeline(PIPELINE.format(name=f"shop-{stack.suffix}"))
        ref, _ = await stack.create(path, user="carol", description="Spring sale")
        settings = Settings.from_env(stack.env())
        db = open_database(settings.record_url)
        try:
            await grant(db, ref.pipeline, None, "user:victor", "viewer", by="test")
            await grant(db, ref.pipeline, None, "user:rhea", "releaser", by="test")

            async def both_wait() -> bool:
                found = await record.release(db, ref.pipeline, ref.number)
                return found is not None and all(
                    view.status.value == "waiting_for_approval" for view in found.stages
                )

            await wait_for(both_wait, timeout=60, what="staging and prod to wait for alice")
        finally:
            await db.close()
        yield World(stack=stack, url=url, ref=ref, tokens=tokens, path=path)
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
async def browser(world: World) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield found
        finally:
            await found.close()


async def signed_in(browser: object, world: World, user: str) -> object:
    """A new browser context (its own cookies) where `user` has signed in with a token."""
    context = await browser.new_context(base_url=world.url, viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    await page.goto("/")
    assert page.url.endswith("/sign-in?next=/"), page.url
    await page.get_by_label("Personal token").fill(world.tokens[user])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{world.url}/")
    assert await page.get_by_test_id("me").inner_text() == user
    return page


async def every_control_is_labelled(page: object) -> list[str]:
    """Controls a person can operate that have no accessible name (a label, an aria
    label, or their own text): there must be none."""
    return await page.evaluate(  # type: ignore[attr-defined,no-any-return]
        """() => [...document.querySelectorAll('input, button, select, textarea')]
            .filter(el => el.type !== 'hidden')
            .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                            || (el.tagName === 'BUTTON' && el.textContent.trim())))
            .map(el => el.outerHTML)"""
    )


async def test_an_approver_approves_from_the_inbox_rejects_on_the_release_page_and_sees_both(
    world: World, browser: object
) -> None:
    from playwright.async_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await signed_in(browser, world, "alice")

    # The dashboard: what waits on alice, and the pipeline's stages × releases.
    waiting = page.get_by_test_id("waiting-on-you")
    await expect(waiting).to_contain_text(f"{world.ref.pipeline} Release-1 → staging")
    await expect(waiting).to_contain_text("→ prod")
    assert await page.get_by_test_id("waiting-count").inner_text() == "2"
    # Status is words and a sign, not colour alone.
    await expect(page.locator("table.matrix")).to_contain_text("? waiting for approval")
    assert await every_control_is_labelled(page) == []
    await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    # The inbox: approve staging with the keyboard alone.
    await page.get_by_role("link", name="Approvals", exact=True).click()
    await page.wait_for_url("**/approvals")
    assert await every_control_is_labelled(page) == []
    await page.screenshot(path=str(SCREENSHOTS / "inbox.png"), full_page=True)
    approve = page.get_by_test_id("approve-staging")
    for _ in range(60):  # Tab through the page until the button has the focus
        if await approve.evaluate("el => el === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached the approve button")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/approvals?done=*")
    await expect(page.get_by_test_id("answer")).to_contain_text("approve of")
    await expect(page.get_by_test_id("answer")).to_contain_text("accepted")

    # The release page: staging goes to succeeded while the page stays open; in a
    # second tab, its task's log follows as it is written.
    await page.goto(world.release_path)
    loads = await page.evaluate("performance.getEntriesByType('navigation').length")
    staging = page.get_by_test_id("status-staging")
    assert await staging.inner_text() != "✓ succeeded"  # its task takes 6 s
    follower = await page.context.new_page()
    await follower.goto(world.release_path)
    log_link = follower.get_by_role("link", name="log").first
    # The link appears once the task runs (the stages refresh without a reload).
    await expect(log_link).to_be_visible(timeout=20_000)
    await log_link.click()
    await expect(follower.get_by_test_id("log-state")).to_contain_text("running")
    await expect(follower.get_by_test_id("log")).to_contain_text("staging shipped")
    await expect(follower.get_by_test_id("log")).to_contain_text("staging done", timeout=30_000)
    await expect(follower.get_by_test_id("log-state")).to_have_text("the task is over")
    await follower.close()
    await expect(staging).to_have_text("✓ succeeded", timeout=60_000)
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == loads

    # Reject prod there, with a comment; the page says what the workflow answered.
    await page.get_by_label("Why reject prod? (required)").fill("not during the sale")
    await page.get_by_test_id("reject-prod").click()
    await page.wait_for_url(re.compile(r".*\?request=.*"))
    await expect(page.get_by_test_id("answer")).to_contain_text("reject of prod: accepted")
    await expect(page.get_by_test_id("status-prod")).to_have_text("✗ rejected", timeout=30_000)

    trail = page.get_by_test_id("trail")
    await expect(trail).to_contain_text("approve")
    rows = await trail.locator("tbody tr").all_inner_texts()
    decided = [r for r in rows if r.split("\t")[1].startswith("alice ")]
    assert any("approve\tstaging\taccepted\tpre-deployment" in r for r in decided), rows
    assert any(
        "reject\tprod\taccepted\tpre-deployment: not during the sale" in r for r in decided
    ), rows
    assert len(decided) == 2 and all("alice (token " in r for r in decided), decided
    assert await every_control_is_labelled(page) == []
    await page.screenshot(path=str(SCREENSHOTS / "release.png"), full_page=True)

    await page.context.close()


async def test_a_viewer_sees_the_pages_without_a_button_and_a_forged_post_is_refused(
    world: World, browser: object
) -> None:
    page = await signed_in(browser, world, "victor")
    await page.goto(world.release_path)
    assert await page.get_by_test_id("status-staging").inner_text() != ""
    assert await page.locator("form.decision").count() == 0
    await page.goto("/approvals")
    assert await page.get_by_test_id("nothing-waiting").is_visible()
    await page.context.close()

    # alice's session, a decision form without its CSRF token (as another site would
    # post it): 403, nothing decided, and the refusal is in the trail.
    alice = await signed_in(browser, world, "alice")
    answer = await alice.request.post(
        f"{world.release_path}/stages/prod/decide",
        form={"action": "approve", "phase": "pre"},
        max_redirects=0,
    )
    assert answer.status == 403
    assert "CSRF" in await answer.text()
    await alice.context.close()
    async with httpx.AsyncClient(base_url=world.url) as http:
        trail = await http.get(
            f"/api/v1{world.release_path}/history",
            headers={"Authorization": f"Bearer {world.tokens['alice']}"},
        )
    refused = [e for e in trail.json() if e["outcome"] == "refused" and e["actor"] == "alice"]
    assert any("CSRF token is missing" in e["detail"] for e in refused), refused


async def test_bulk_approval_a_deferral_a_refusal_and_the_pipeline_page(
    world: World, browser: object
) -> None:
    from playwright.async_api import expect

    # A new revision of the pipeline (prod's approvers change), and two releases of it.
    old = "approvals: {approvers: [alice]}"
    head, tail = world.path.read_text().rsplit(old, 1)  # prod's, the second
    world.path.write_text(head + "approvals: {approvers: [alice, bob]}" + tail)
    second, _ = await world.stack.create(world.path, user="carol")
    third, _ = await world.stack.create(world.path, user="carol")
    page = await signed_in(browser, world, "alice")

    async def waiting_rows() -> int:
        await page.goto("/approvals")
        return await page.locator("input[name=selected]").count()

    await wait_for(lambda: _at_least(waiting_rows, 4), timeout=60, what="both releases waiting")

    # Bulk: select release 2's two approvals and approve them at once.
    for stage in ("staging", "prod"):
        await page.get_by_label(f"select {second} {stage}").check()
    await page.get_by_label("Comment for the selected approvals (optional)").fill("bulk ok")
    await page.get_by_test_id("approve-selected").click()
    await page.wait_for_url("**/approvals?done=*")
    answers = await page.get_by_test_id("answer").all_inner_texts()
    assert len(answers) == 2 and all("accepted" in a for a in answers), answers

    # A deferral: approve release 3's staging to deploy in a year; it waits, deferred,
    # until deploy now.
    row = page.get_by_test_id(f"waiting-{third}/staging")
    await row.get_by_label("Deploy at").fill("2027-12-01T09:30")
    await row.get_by_test_id("approve-staging").click()
    await page.wait_for_url("**/approvals?done=*")
    await expect(page.get_by_test_id("answer")).to_contain_text("deferred until 2027-12-01")
    release = f"/releases/{third.pipeline}/{third.number}"
    await page.goto(release)
    await expect(page.get_by_test_id("changes")).to_have_text("no artifact changed")
    await expect(page.get_by_test_id("status-staging")).to_have_text("◷ deferred", timeout=30_000)
    await page.get_by_test_id("deploy_now-staging").click()
    await expect(page.get_by_test_id("answer")).to_contain_text("deploy now of staging: accepted")
    await expect(page.get_by_test_id("status-staging")).to_have_text("✓ succeeded", timeout=60_000)

    # A refusal shows the workflow's reason: the same approval, sent from a page drawn
    # before another tab decided it.
    stale = await page.context.new_page()
    await stale.goto(release)
    # Its person is writing a comment, so the stale page does not refresh under them
    # (without one it would, within 2 s, and lose the button the test clicks).
    await stale.get_by_label("Comment on prod (optional)").first.fill("from the other tab")
    await page.goto(release)
    await page.get_by_test_id("approve-prod").click()
    await expect(page.get_by_test_id("answer")).to_contain_text("approve of prod: accepted")
    await stale.get_by_test_id("approve-prod").click()
    await expect(stale.get_by_test_id("answer")).to_contain_text("approve of prod: refused — ")
    await stale.close()

    # The pipeline page: its stages' rules, and the two revisions with their diff.
    await page.goto(f"/pipelines/{world.ref.pipeline}")
    rules = page.locator("table.rules")
    await expect(rules).to_contain_text("before: alice, bob (any)")
    await expect(page.locator("table.revisions tbody tr")).to_have_count(2)
    # prod's approvers gained bob: the one line added between the two definitions.
    added = page.locator("pre.diff span.add")
    await expect(added).to_have_count(2)  # the +++ header and the line
    await expect(added.nth(1)).to_have_text(re.compile(r"^\+\s+- bob$"))
    assert await every_control_is_labelled(page) == []
    await page.context.close()

    # A releaser redeploys a stage from its page; an approver has no such button.
    assert await signed_in_page_has(browser, world, "alice", release, "redeploy-staging") is False
    rhea = await signed_in(browser, world, "rhea")
    await rhea.goto(release)
    await rhea.get_by_test_id("redeploy-staging").click()
    await expect(rhea.get_by_test_id("answer")).to_contain_text("redeploy of staging: accepted")
    await expect(rhea.locator("#stage-staging .meta").first).to_contain_text(
        "attempt 2", timeout=30_000
    )
    # Its second attempt waits for alice's approval, as every deployment of staging does.
    await expect(rhea.get_by_test_id("status-staging")).to_have_text(
        "? waiting for approval", timeout=30_000
    )
    await rhea.context.close()


async def signed_in_page_has(
    browser: object, world: World, user: str, path: str, test_id: str
) -> bool:
    page = await signed_in(browser, world, user)
    await page.goto(path)
    found = await page.get_by_test_id(test_id).count() > 0
    await page.context.close()
    return found


async def _at_least(count: object, wanted: int) -> bool:
    return bool(await count() >= wanted)  # type: ignore[operator]
