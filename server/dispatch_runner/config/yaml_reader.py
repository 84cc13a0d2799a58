"""YAML read strictly, with line numbers: every value is checked as it is read, and a wrong one
is a ConfigError naming the file, the line and the field."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


class YamlReader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, fieldname: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(self.path, line, fieldname, message)

    def mapping(self, node: yaml.Node, fieldname: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, fieldname, "expected a mapping (key: value lines)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, fieldname, "keys must be plain names")
            if key.value in out:
                raise self.fail(key, f"{fieldname}.{key.value}", "duplicate key")
            out[str(key.value)] = (key, value)
        return out

    def only(
        self, items: Mapping[str, tuple[yaml.Node, yaml.Node]], allowed: tuple[str, ...], fieldname: str
    ) -> None:
        for name, (key, _) in items.items():
            if name not in allowed:
                raise self.fail(
                    key, f"{fieldname}.{name}".lstrip("."), f"unknown key; allowed here: {', '.join(allowed)}"
                )

    def scalar(self, node: yaml.Node, fieldname: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, fieldname, "expected a single value")
        return yaml.safe_load(yaml.serialize(node))

    def string(self, node: yaml.Node, fieldname: str) -> str:
        value = self.scalar(node, fieldname)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, fieldname, "expected a non-empty string")
        return value

    def number(
        self, node: yaml.Node, fieldname: str, *, integer: bool = False, minimum: float | None = None
    ) -> float:
        value = self.scalar(node, fieldname)
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            raise self.fail(node, fieldname, "expected an integer" if integer else "expected a number")
        if minimum is not None and value < minimum:
            raise self.fail(node, fieldname, f"must be >= {minimum:g}")
        return float(value)

    def strings(self, node: yaml.Node, fieldname: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, fieldname, "expected a list, e.g. [a, b]")
        return tuple(self.string(item, fieldname) for item in node.value)

    def dir_path(self, node: yaml.Node, fieldname: str) -> Path:
        # a bare ~ is YAML's null; in a path field it can only mean the home directory
        if isinstance(node, yaml.ScalarNode) and node.value == "~" and node.style is None:
            return Path.home()
        return Path(self.string(node, fieldname)).expanduser()

    def dir_paths(self, node: yaml.Node, fieldname: str) -> tuple[Path, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, fieldname, "expected a list, e.g. [~/src, /srv/repos]")
        return tuple(self.dir_path(item, fieldname) for item in node.value)
