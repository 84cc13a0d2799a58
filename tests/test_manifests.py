"""The client and deployment manifests parse and agree with the package."""

import json
import re
import tomllib
from pathlib import Path

from dispatch_runner.config import parse_config
from dispatch_runner.mcp.push import channel_message
from dispatch_runner.model import Event

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


def test_example_config_in_manifests_is_the_one_init_writes() -> None:
    packaged = ROOT / "server" / "dispatch_runner" / "example_agents.yaml"
    assert (MANIFESTS / "agents.yaml").read_text() == packaged.read_text()
    config = parse_config(packaged.read_text(), str(packaged), home=Path("/tmp/h"), env={})
    assert config.concurrency["claude"].total == 1


SERVE = ["serve", "--home", "~/.dispatch-runner"]


def test_client_manifests_start_the_stdio_server_with_its_home_as_an_argument() -> None:
    for name in ("claude-code.mcp.json", "claude-desktop.json"):
        server = json.loads((MANIFESTS / name).read_text())["mcpServers"]["runner"]
        assert server["command"] == "dispatch-runner" and server["args"] == SERVE
        assert not server.get("env")  # clients with a minimal environment drop it anyway
    codex = tomllib.loads((MANIFESTS / "codex-config.toml").read_text())["mcp_servers"]["runner"]
    assert codex["args"] == SERVE and codex["required"] is True
    assert codex.get("tool_timeout_sec", 300) >= 300  # never below Codex's own default


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_readme_blocks_are_the_manifests_verbatim() -> None:
    readme = _readme()
    codex = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert tomllib.loads(codex) == tomllib.loads((MANIFESTS / "codex-config.toml").read_text())
    assert "claude mcp add runner -s user -- dispatch-runner serve --home ~/.dispatch-runner" in readme
    assert (
        "claude mcp add runner -s user -- dispatch-runner serve --home ~/.dispatch-runner"
        in (MANIFESTS / "claude-code.md").read_text()
    )


def test_the_readme_refers_only_to_files_that_exist_in_the_repository() -> None:
    readme = _readme()
    assert "../" not in readme
    for name in re.findall(r"manifests/([\w.-]+)", readme):
        assert (MANIFESTS / name).exists(), name
    for path in re.findall(r"`((?:bench|tests|manifests|\.ci)/[\w./-]+)`", readme):
        assert (ROOT / path.rstrip("/")).exists(), path


def test_the_readme_channel_example_is_what_the_server_sends() -> None:
    readme = _readme()
    block = readme.split("<channel ", 1)[1].split("</channel>", 1)[0]
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', block.split(">", 1)[0]))
    content = block.split(">", 1)[1]
    summary = content.split("Result:\n", 1)[1].split("\nDetails:", 1)[0]
    label = re.search(r'\("([^"]+)"\)', content)
    assert label is not None
    event = Event(
        type=attrs["event"],
        workspace=attrs["workspace"],
        data={
            "state": attrs["state"],
            "agent": attrs["agent"],
            "exit_code": int(attrs["exit_code"]),
            "duration_s": float(attrs["duration_s"]),
        },
    )
    sent, meta = channel_message(event, {"summary": summary, "label": label.group(1)})
    assert sent == content
    assert meta == {k: v for k, v in attrs.items() if k != "source"}


def test_registry_entry_has_the_required_fields() -> None:
    entry = json.loads((MANIFESTS / "server.json").read_text())
    assert entry["name"].count("/") == 1 and len(entry["description"]) <= 100
    [package] = entry["packages"]
    assert package["transport"] == {"type": "stdio"} and package["version"] == entry["version"]


def test_systemd_unit_runs_the_http_peer_without_killing_agents_on_stop() -> None:
    unit = (MANIFESTS / "dispatch-runner.service").read_text()
    assert "serve --transport http --host 127.0.0.1" in unit and "KillMode=process" in unit
