"""The README's install-and-run command, verbatim, as a new user runs it: a throwaway home with
Debian's default ~/.profile, a login shell's PATH, stdin at its end. Then `dispatch-runner`
resolves by name in a new login shell, and serves as the client manifests start it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def readme_install_command() -> str:
    section = (ROOT / "README.md").read_text().split("## Install and run", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert match is not None
    return match.group(1).strip()


@pytest.fixture
def new_user(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    profile = Path("/etc/skel/.profile")
    if not profile.exists():
        pytest.skip("no /etc/skel/.profile to give the new user a login shell like Debian's")
    shutil.copy(profile, home / ".profile")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISPATCH_RUNNER_", "VIRTUAL_ENV", "PYTHON", "FAKE_AGENT"))
    }
    return {**env, "HOME": str(home), "PATH": LOGIN_PATH}


def test_the_readme_install_command_puts_dispatch_runner_on_path_and_serves(new_user: dict[str, str]) -> None:
    command = readme_install_command()
    installed = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=new_user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "serving MCP server 'runner' over stdio" in installed.stderr
    assert "Traceback" not in installed.stderr
    # a new login shell finds it by name (the ~/.profile adds ~/.local/bin once it exists)
    found = subprocess.run(
        ["bash", "-lc", "command -v dispatch-runner && dispatch-runner --version"],
        env=new_user,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    path, version = found.stdout.split()[0], found.stdout.split("\n")[1]
    assert path == f"{new_user['HOME']}/.local/bin/dispatch-runner"
    assert version.startswith("dispatch-runner ")
    # as the README's `claude mcp add` line and the Codex block start it
    served = subprocess.run(
        ["bash", "-lc", "dispatch-runner serve --home ~/.dispatch-runner"],
        env=new_user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 0 and f"home {new_user['HOME']}/.dispatch-runner" in served.stderr
