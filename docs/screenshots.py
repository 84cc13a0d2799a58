"""Regenerate the README's pictures: the dashboard and `dispatch-runner top`, over a realistic fleet.

    .venv/bin/pip install -e '.[test]'   # playwright and textual
    .venv/bin/python docs/screenshots.py [--chromium /usr/bin/chromium] [--seconds 150]

It starts `dispatch-runner serve --transport http` on a private home with the repository's fake
agents (tests/fakes: real processes that print what Claude Code, Codex and a plain CLI print),
dispatches a morning's worth of work into three pools — long and short runs, a failure, a rate
limit, a killed run, priorities, a queue that waits — lets it run for a while, then photographs
the dashboard in headless Chromium and `top` with textual's own screenshot, both as PNG.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
OUT = ROOT / "docs"
TOKEN = "screenshot-token"
PY = sys.executable
CONFIG = """\
version: 1
dispatch:
  default_agent: claude
  default_template: none
  allowed_roots: [{root}]
agents:
  claude:
    command: [{py}, {fakes}/fake_claude.py, -p, --model, "{{model}}", --output-format, stream-json, --verbose]
    output: claude-stream-json
    stdin: prompt
  codex:
    command: [{py}, {fakes}/fake_codex.py, exec, --json, -m, "{{model}}", "-"]
    output: codex-json
    stdin: prompt
  reviewer:
    command: [{py}, {fakes}/fake_agent.py, "{{prompt}}"]
concurrency:
  claude: 4
  codex: 3
  reviewer: 2
rates:
  claude: {{min_delay: 2, daily_limit: 400}}
pools:
  codex: {{adaptive: {{floor: 1, clean_streak: 3}}}}
"""
TASKS = [
    ("claude", "fix the flaky retry test in auth", "@turns=6 @sleep=4 @cost=0.41"),
    ("claude", "migrate settings to pydantic v2", "@turns=9 @sleep=5 @cost=0.87"),
    ("codex:gpt-5.4", "add pagination to /v1/runs", "@sleep=18"),
    ("reviewer", "review PR #482", "@sleep=12"),
    ("claude", "write docs for the CLI flags", "@turns=4 @sleep=3 @cost=0.22"),
    ("codex:gpt-5.4", "port the exporter to OTLP", "@sleep=25"),
    ("claude", "triage yesterday's CI failures", "@turns=3 @sleep=2 @cost=0.12 @exit=1"),
    ("codex", "bump dependencies", "@ratelimit"),
    ("reviewer", "review PR #483", "@sleep=9"),
    ("claude", "split the queue module", "@turns=8 @sleep=5 @cost=0.66"),
    ("codex:gpt-5.4", "property tests for the cron parser", "@sleep=30"),
    ("claude", "dedupe the status views", "@turns=5 @sleep=4 @cost=0.35"),
    ("reviewer", "review PR #484", "@sleep=14"),
    ("claude", "explain the backoff policy", "@turns=2 @sleep=3 @cost=0.09"),
    ("codex", "fix mypy errors in store/", "@sleep=16"),
    ("claude", "benchmark the claim path", "@turns=12 @sleep=6 @cost=1.12"),
    ("claude", "update the changelog", "@turns=2 @sleep=2 @cost=0.05"),
    ("reviewer", "review PR #485", "@sleep=40"),
    ("codex:gpt-5.4", "rewrite the log pager", "@sleep=45"),
    ("claude", "investigate the memory regression", "@turns=20 @sleep=6 @cost=1.90"),
    ("claude", "add a --json flag to top", "@turns=6 @sleep=6 @cost=0.50"),
    ("claude", "draft the release notes", "@turns=30 @sleep=6 @cost=0.70"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [PY, "-m", "dispatch_runner.cli", *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def wait_listening(port: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a port with a deadline: nothing to wait on
    raise SystemExit(f"the server did not listen on {port}")


def make_repo(path: Path) -> Path:
    """A small git repository for the claude tasks to change (their diffs show on the page)."""
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=docs", "-c", "user.email=docs@example.com"]
    (path / "README.md").write_text("# demo\n")
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    return path


def fleet(env: dict[str, str], seconds: float, repo: Path) -> None:
    """Dispatch the tasks over `seconds`, a few at a time, kill a running one, let the rest run."""
    rng = random.Random(7)
    started = time.monotonic()
    for i, (agent, text, directives) in enumerate(TASKS):
        priority = "high" if i % 7 == 3 else "low" if i % 5 == 4 else "medium"
        where = ["--repo", str(repo)] if agent == "claude" else []
        change = f" @commit=change-{i}.md" if agent == "claude" else ""
        args = ["--agent", agent, "--label", text, "--priority", priority, *where]
        cli(env, "dispatch", "--json", *args, f"{text} {directives}{change}")
        time.sleep(rng.uniform(0.5, 3.5) * seconds / 120)  # spreading the dispatches: a schedule
    running = json.loads(cli(env, "status", "--json", "--state", "running"))["workspaces"]
    if running:
        cli(env, "kill", running[-1]["workspace"])  # a person changed their mind
    rest = seconds - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)  # the fleet runs for the time asked: a schedule, not a wait for a condition


def shoot_dashboard(url: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="light")
        page.goto(f"{url}/?token={TOKEN}")
        page.wait_for_selector("#running tbody tr[data-workspace]")
        page.click("input[name=window][value='300']")
        page.wait_for_timeout(500)
        page.screenshot(path=str(OUT / "dashboard.png"), full_page=True)
        browser.close()


async def shoot_top(env: dict[str, str], chromium: str) -> None:
    os.environ.update(env)
    from playwright.async_api import async_playwright

    from dispatch_runner.cli.top import Top
    from dispatch_runner.config import load_config
    from dispatch_runner.runner import Runner

    runner = Runner(load_config())
    app = Top(runner, interval=1.0)
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.pause(1.5)
        svg = app.export_screenshot()
    runner.close()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1500, "height": 900})
        await page.set_content(f"<body style='margin:0;background:#0c0c0c'>{svg}</body>")
        await page.locator("svg").first.screenshot(path=str(OUT / "top.png"))
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the fleet runs first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dr-shots-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "agents.yaml").write_text(CONFIG.format(root=tmp, py=PY, fakes=FAKES))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_RUNNER_")}
        env |= {"DISPATCH_RUNNER_HOME": str(home)}
        port = free_port()
        serve = [PY, "-m", "dispatch_runner.cli", "serve", "--transport", "http", "--port", str(port)]
        with open(Path(tmp) / "server.log", "w") as log:
            server = subprocess.Popen(
                [*serve, "--token", TOKEN], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            try:
                wait_listening(port)
                fleet(env, args.seconds, make_repo(Path(tmp) / "repo"))
                shoot_dashboard(f"http://127.0.0.1:{port}", args.chromium)
                asyncio.run(shoot_top(env, args.chromium))
            finally:
                server.terminate()
                server.wait(timeout=20)
                cli(env, "kill", "--all")
    print(f"wrote {OUT / 'dashboard.png'} and {OUT / 'top.png'}")


if __name__ == "__main__":
    main()
