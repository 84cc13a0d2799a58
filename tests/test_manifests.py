"""The client and deployment manifests parse and agree with the package."""

import json
import tomllib
from pathlib import Path

from dispatch_runner.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


def test_example_config_in_manifests_is_the_one_init_writes() -> None:
    packaged = ROOT / "server" / "dispatch_runner" / "example_agents.yaml"
    assert (MANIFESTS / "agents.yaml").read_text() == packaged.read_text()
    config = parse_config(packaged.read_text(), str(packaged), home=Path("/tmp/h"), env={})
    assert config.concurrency["claude"].total == 1


def test_client_manifests_start_the_stdio_server_named_runner() -> None:
    for name in ("claude-code.mcp.json", "claude-desktop.json"):
        server = json.loads((MANIFESTS / name).read_text())["mcpServers"]["runner"]
        assert server["command"] == "dispatch-runner" and server["args"] == ["serve"]
    codex = tomllib.loads((MANIFESTS / "codex-config.toml").read_text())["mcp_servers"]["runner"]
    assert codex["args"] == ["serve"] and codex["tool_timeout_sec"] > 50 and codex["required"] is True


def test_registry_entry_has_the_required_fields() -> None:
    entry = json.loads((MANIFESTS / "server.json").read_text())
    assert entry["name"].count("/") == 1 and len(entry["description"]) <= 100
    [package] = entry["packages"]
    assert package["transport"] == {"type": "stdio"} and package["version"] == entry["version"]


def test_systemd_unit_runs_the_http_peer_without_killing_agents_on_stop() -> None:
    unit = (MANIFESTS / "dispatch-runner.service").read_text()
    assert "serve --transport http --host 127.0.0.1" in unit and "KillMode=process" in unit
