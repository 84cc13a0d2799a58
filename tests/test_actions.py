"""The dispatch fields are declared once (actions.DispatchRequest): the MCP tool's input schema
and the CLI's options are checked against that declaration, so a new argument is added in one
place and cannot go missing from a surface."""

import argparse
from dataclasses import fields

from dispatch_runner import actions
from dispatch_runner.cli.parser import build_parser
from dispatch_runner.config import load_config
from dispatch_runner.mcp.push import Clients
from dispatch_runner.mcp.tools import build_tools
from dispatch_runner.runner import Runner
from tests.conftest import Home

CLI_ONLY = {
    *("task_file", "wait", "follow", "json", "config", "home", "store", "help", "command"),
    *("items_file", "tasks_file"),  # a fan-out's items or tasks, read from a file
}


def test_the_dispatch_tool_takes_exactly_the_declared_fields(home: Home) -> None:
    runner = Runner(load_config())
    try:
        tools = {t.name: t for t in build_tools(runner, Clients(runner.peer), prefix="")}
    finally:
        runner.close()
    schema = tools["dispatch"].fn_metadata.arg_model.model_json_schema()
    assert tuple(schema["properties"]) == actions.DISPATCH_FIELDS
    assert schema.get("required", []) == []  # task too: a fan-out gives tasks instead


def test_the_dispatch_command_has_an_option_for_each_declared_field() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    dests = {a.dest for a in commands.choices["dispatch"]._actions}
    assert set(actions.DISPATCH_FIELDS) <= dests
    assert dests - set(actions.DISPATCH_FIELDS) <= CLI_ONLY


def test_every_request_is_frozen_and_keyword_only() -> None:
    for cls in (
        actions.DispatchRequest,
        actions.StatusRequest,
        actions.LogsRequest,
        actions.KillRequest,
        actions.WaitRequest,
        actions.GcRequest,
        actions.ScheduleRequest,
    ):
        params = getattr(cls, "__dataclass_params__")  # noqa: B009 - dataclass introspection
        assert params.frozen and all(f.kw_only for f in fields(cls)), cls.__name__
