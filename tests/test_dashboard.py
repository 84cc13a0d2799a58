"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real `dispatch-runner serve --transport http` whose fake agents are real processes. Work is
dispatched by the CLI in another process, as another session would; the page hears of it by push.

It shows a run appear and end without a reload, kills a run, freezes the queue, answers an
approval, follows a workspace's log live; and it refuses whoever lacks the token, a foreign Host,
another site's action."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import wait_for
from tests.mcp_helpers import home_env, http_server

TOKEN = "dashboard-token"
DEADLINE_MS = 20_000
ASKING = "pools:\n  claude: {sandbox: {default: workspace-write}, ask: on-miss}\n"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium here: apt-get install chromium (.ci/run does)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(DEADLINE_MS)
    yield context.new_page()
    context.close()


class Fleet:
    """A serving runner over HTTP and a CLI beside it on the same home and store."""

    def __init__(self, root: Path, url: str, store: str | None) -> None:
        self.url, self.env = url, home_env(root / "home", store)

    def cli(self, *args: str, parent: str | None = None) -> dict[str, Any]:
        env = self.env | ({"DISPATCH_RUNNER_PARENT": parent} if parent else {})
        done = subprocess.run(
            [sys.executable, "-m", "dispatch_runner.cli", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def dispatch(self, task: str, *more: str, parent: str | None = None) -> str:
        return str(self.cli("dispatch", *more, task, parent=parent)["workspace"])

    def state(self, ws: str) -> str:
        return str(self.cli("status", ws)["state"])


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """On SQLite; on every backend for a test that asks for `backend` too (the page's own
    behaviour does not depend on the store: only how the store's events reach it does)."""
    store = None
    if "backend" in request.fixturenames:
        request.getfixturevalue("backend")
        store = os.environ.get("DISPATCH_RUNNER_STORE")
    extra = getattr(request, "param", "")
    with http_server(tmp_path / "srv", store, token=TOKEN, extra=extra) as url:
        yield Fleet(tmp_path / "srv", url, store)


def signed_in(page: Page, fleet: Fleet) -> Page:
    page.goto(f"{fleet.url}/?token={TOKEN}")
    assert page.url == f"{fleet.url}/"  # the token left the address bar
    expect(page.locator("#live")).to_have_text("live")
    return page


def test_a_dispatched_run_appears_runs_and_ends_without_a_reload(
    backend: str, page: Page, fleet: Fleet
) -> None:
    signed_in(page, fleet)
    page.evaluate("window.sameDocument = true")
    ws = fleet.dispatch("@turns=3 @sleep=1 @cost=0.25 tidy the imports", "--label", "tidy")
    running = page.locator(f"#running tr[data-workspace='{ws}']")
    expect(running).to_be_visible()
    expect(running).to_contain_text("tidy")
    expect(page.locator(f"#timeline rect[data-workspace='{ws}'][data-outcome='running']")).to_have_count(1)
    expect(running.locator("td.last")).to_contain_text("turn")  # its output, while it runs
    ended = page.locator(f"#recent tr[data-workspace='{ws}']")
    expect(ended.locator(".state")).to_have_text("completed")
    expect(ended).to_contain_text("$0.2500")
    expect(running).to_have_count(0)
    expect(page.locator(f"#timeline rect[data-workspace='{ws}'][data-outcome='succeeded']")).to_have_count(1)
    expect(page.locator("[data-pool='claude'] .line").last).to_contain_text("$0.2500")
    assert page.evaluate("window.sameDocument") is True  # pushed, never reloaded


def test_a_run_is_killed_from_the_page(page: Page, fleet: Fleet) -> None:
    signed_in(page, fleet)
    ws = fleet.dispatch("@sleep=60 a long job", "--agent", "agent")
    page.locator(f"#running button.kill[data-workspace='{ws}']").click()
    expect(page.locator(f"#recent tr[data-workspace='{ws}'] .state")).to_have_text("killed")
    assert fleet.state(ws) == "killed"


def test_the_queue_is_frozen_and_unfrozen_from_the_page(page: Page, fleet: Fleet) -> None:
    signed_in(page, fleet)
    page.locator("#freeze").click()
    expect(page.locator("#frozen")).to_be_visible()
    assert fleet.cli("status")["frozen"] is True
    ws = fleet.dispatch("waits for the thaw", "--agent", "agent")
    expect(page.locator(f"#queue tr[data-workspace='{ws}']")).to_be_visible()
    page.locator("#freeze").click()
    expect(page.locator("#frozen")).to_be_hidden()
    expect(page.locator(f"#recent tr[data-workspace='{ws}'] .state")).to_have_text("completed")


@pytest.mark.parametrize("fleet", [ASKING], indirect=True)
def test_an_approval_is_answered_from_the_page(page: Page, fleet: Fleet) -> None:
    signed_in(page, fleet)
    ws = fleet.dispatch("tidy up @ask=Bash")
    request = page.locator(f".approval:has(a[href='/w/{ws}'])")
    expect(request).to_contain_text("Bash")
    expect(request).to_contain_text("echo asked")
    request.locator("button.allow").click()
    expect(page.locator(f"#recent tr[data-workspace='{ws}'] .state")).to_have_text("completed")
    expect(page.locator("#approvals-section")).to_be_hidden()


def test_the_workspace_page_follows_the_log_and_shows_children_and_events(page: Page, fleet: Fleet) -> None:
    parent = fleet.dispatch("@sleep=30 the parent", "--agent", "agent")
    child = fleet.dispatch("@turns=4 @sleep=0.5 the child", parent=parent)
    signed_in(page, fleet)
    page.goto(f"{fleet.url}/w/{child}")
    log = page.locator("#ws-log")
    expect(log).to_contain_text("turn 1")  # while it runs
    expect(page.locator("#ws-log-state")).to_have_text("ended: completed")
    expect(log).to_contain_text("turn 4")
    expect(page.locator("#ws-title")).to_contain_text("completed")
    expect(page.locator("#ws-events")).to_contain_text("AgentCompleted")
    expect(page.locator("#ws-facts")).to_contain_text(parent)
    page.goto(f"{fleet.url}/w/{parent}")
    expect(page.locator("#ws-children")).to_contain_text(child)
    expect(page.locator("#ws-log")).to_contain_text("the parent")
    page.locator("#ws-kill").click()
    expect(page.locator("#ws-log-state")).to_have_text("ended: killed")


def test_without_the_token_nothing_is_shown_or_done(page: Page, fleet: Fleet) -> None:
    ws = fleet.dispatch("@sleep=60 must survive", "--agent", "agent")
    wait_for(lambda: fleet.state(ws) == "running", timeout=20, message="running")
    response = page.goto(f"{fleet.url}/")
    assert response is not None and response.status == 401
    expect(page.locator("input[name=token]")).to_be_visible()
    response = page.goto(f"{fleet.url}/?token=wrong")
    assert response is not None and response.status == 401
    expect(page.locator("#note")).to_contain_text("not this server's")
    port = fleet.url.rsplit(":", 1)[1]
    with httpx2.Client(base_url=fleet.url) as http:
        paths = ("/dashboard/api/board", "/dashboard/api/stream", f"/dashboard/api/workspace/{ws}")
        for path in (*paths, f"/dashboard/api/logs/{ws}"):
            assert http.get(path).status_code == 401
        killed = http.post("/dashboard/api/actions/kill", json={"workspace": ws})
        assert killed.status_code == 401
        raw = {"Cookie": f"dispatch_runner_{port}={TOKEN}"}  # the token itself is no cookie
        assert http.get("/dashboard/api/board", headers=raw).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        foreign = http.get("/dashboard/api/board", headers=auth | {"Host": "evil.example:80"})
        assert foreign.status_code == 421  # DNS rebinding
        cross = http.post(
            "/dashboard/api/actions/kill",
            json={"workspace": ws},
            headers=auth | {"Origin": "http://evil.example"},
        )
        assert cross.status_code == 403
        form = http.post(
            "/dashboard/api/actions/kill",
            content=f"workspace={ws}",
            headers=auth | {"content-type": "text/plain"},
        )
        assert form.status_code == 415
        huge = http.post("/dashboard/sign-in", content=b"token=" + b"x" * 100_000)
        assert huge.status_code == 413  # read no further than a few KB, never parsed
    assert fleet.state(ws) == "running"
    page.goto(f"{fleet.url}/w/{ws}")  # a link to a workspace, opened signed out
    page.fill("input[name=token]", TOKEN)  # the sign-in form
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{fleet.url}/w/{ws}")  # back where the link pointed, the key kept aside
    expect(page.locator("#ws-log")).to_contain_text("must survive")


def test_the_cookie_reads_but_acts_only_with_the_pages_key(page: Page, fleet: Fleet) -> None:
    """A cookie is sent to every port of its host: one that another local service caught reads
    the dashboard, and cannot kill, approve or freeze without the key only the page carries."""
    ws = fleet.dispatch("@sleep=60 must survive", "--agent", "agent")
    signed_in(page, fleet)
    expect(page.locator(f"#running tr[data-workspace='{ws}']")).to_be_visible()
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["value"] != TOKEN
    key = page.evaluate("localStorage.getItem('dispatch-runner-action-key')")
    assert key and key not in page.content()  # the page has it from the sign-in redirect only
    caught = {"Cookie": f"{cookie['name']}={cookie['value']}"}
    with httpx2.Client(base_url=fleet.url, headers=caught) as http:
        assert http.get("/dashboard/api/board").status_code == 200
        assert key not in http.get("/").text and key not in http.get(f"/w/{ws}").text
        for action, args in (("kill", {"workspace": ws}), ("freeze", {})):
            assert http.post(f"/dashboard/api/actions/{action}", json=args).status_code == 403
        cross = {"Origin": "http://127.0.0.1:1", "x-dispatch-runner-action": "guess"}
        assert (
            http.post("/dashboard/api/actions/kill", json={"workspace": ws}, headers=cross).status_code == 403
        )
    assert fleet.state(ws) == "running" and fleet.cli("status")["frozen"] is False
    with httpx2.Client(base_url=fleet.url, headers=caught | {"x-dispatch-runner-action": key}) as http:
        assert (
            http.post("/dashboard/api/actions/kill", json={"workspace": ws}).status_code == 200
        )  # with the key
    wait_for(lambda: fleet.state(ws) == "killed", timeout=20, message="killed")


def test_hostile_labels_and_output_are_shown_as_text(page: Page, fleet: Fleet) -> None:
    signed_in(page, fleet)
    hostile = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"
    ws = fleet.dispatch(f"@sleep=30 {hostile}", "--agent", "agent", "--label", hostile)
    row = page.locator(f"#running tr[data-workspace='{ws}']")
    expect(row).to_contain_text(hostile)  # the label, as text
    expect(row.locator("td.last")).to_contain_text("<script>")  # its output, as text
    page.goto(f"{fleet.url}/w/{ws}")
    expect(page.locator("#ws-log")).to_contain_text(hostile)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#fleet img, #workspace img, #fleet script, #workspace script").count() == 0


def test_a_log_stream_resumes_where_it_left_off(fleet: Fleet) -> None:
    ws = fleet.dispatch("@turns=3 @sleep=0.1 three turns")
    wait_for(lambda: fleet.state(ws) == "completed", timeout=20, message="completed")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def read(headers: dict[str, str]) -> list[tuple[str, str, str]]:
        events, kind, ident = [], "", ""
        with httpx2.Client(base_url=fleet.url, headers=auth | headers, timeout=20) as http:
            with http.stream("GET", f"/dashboard/api/logs/{ws}") as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("id: "):
                        ident = line[4:]
                    elif line.startswith("data: "):
                        events.append((kind, ident, line[6:]))
                        kind = ident = ""
        return events

    whole = read({})
    assert whole[0][0] == "run" and whole[-1][0] == "end"
    first = next(e for e in whole if e[0] == "lines")
    again = read({"Last-Event-ID": first[1]})
    assert first[2] not in [d for _, _, d in again]  # what the browser had is not sent twice
    assert again[-1] == ("end", "", '{"state": "completed"}')


def test_a_tokenless_loopback_bind_answers_loopback_names_only(tmp_path: Path, page: Page) -> None:
    with http_server(tmp_path / "srv", None, token=None) as url:
        page.goto(f"{url}/")
        expect(page.locator("#live")).to_have_text("live")
        with httpx2.Client(base_url=url) as http:
            assert http.get("/dashboard/api/board").status_code == 200
            assert http.get("/", headers={"Host": "evil.example"}).status_code == 421
            bad = http.post("/dashboard/api/actions/kill", json={"workspace": 7})
            assert bad.status_code == 400 and "'workspace' must be a string" in bad.json()["error"]
            unknown = http.post("/dashboard/api/actions/kill", json={"workspace": "ws-nope"})
            assert unknown.status_code == 404
            assert http.post("/dashboard/api/actions/reboot", json={}).status_code == 404
